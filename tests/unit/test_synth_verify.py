"""τ-of-n vote and boxed-answer parsing (prismatic.synth.verify)."""

from __future__ import annotations

import threading

import pytest

from prismatic.synth.types import Reason
from prismatic.synth.verify import (
    extract_answer_phrase,
    extract_boxed,
    group_equivalent,
    normalize_label,
    parse_answer,
    tau_of_n,
    vote_labels,
    vote_math,
)


def sol(answer: str) -> str:
    return f"We compute step by step. So the result is \\boxed{{{answer}}}."


# ---------------------------------------------------------------- boxed extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"first \boxed{1} then corrected \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"\boxed {x+1}", "x+1"),
        (r"answer is \boxed 5 apples", "5"),
        ("no box here, the answer is 3", None),
        ("", None),
        (r"cut off \boxed{\frac{1}{", None),
        (r"good \boxed{3} then cut \boxed{\frac{1", "3"),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_parse_answer_reasons():
    ok = parse_answer(sol(r"\frac{1}{2}"))
    assert ok.valid and ok.raw == r"\frac{1}{2}" and ok.parsed
    missing = parse_answer("The answer is 4.", fallback=False)
    assert missing.reason == Reason.UNPARSEABLE and missing.parsed is None and missing.raw is None
    assert parse_answer("I am not sure what to do here.").reason == Reason.UNPARSEABLE
    long = parse_answer(sol("1" * 301), max_answer_chars=300)
    assert long.reason == Reason.TOO_LONG and long.raw == "1" * 301
    assert parse_answer(sol("1" * 300), max_answer_chars=300).valid
    assert parse_answer(r"\boxed{}").reason == Reason.UNPARSEABLE


# phrasings seen from SmolLM2-135M-Instruct, which rarely boxes its answer
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("It climbs 1 foot per day.\n\nFinal Answer: 18 days.", "18 days"),
        ("The snail will reach the top on the 18th day. The answer is 18 days.", "18 days"),
        ("Final Answer: The area is 28 cm².\n\nSo, the final answer is: 28 cm²", "28 cm²"),
        ("The final answer is 15 * n + 8, which is the cost of 8 cups of coffee.", "15 * n + 8"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("The answer is **$\\frac{3}{4}$**.", "\\frac{3}{4}"),
        ("The answer is: 2.5 km/h", "2.5 km/h"),
        ("We need to answer the question carefully", None),
        ("", None),
    ],
)
def test_extract_answer_phrase(text, expected):
    assert extract_answer_phrase(text) == expected


def test_phrase_fallback_only_without_a_box():
    a = parse_answer("The answer is 18 days.")
    assert a.valid and a.source == "phrase" and a.raw == "18 days"
    b = parse_answer(r"The answer is 7, i.e. \boxed{18}")
    assert b.source == "boxed" and b.raw == "18"
    v = vote_math(["So the answer is 18 days.", r"\boxed{18}", "Final Answer: 17"], tau=2)
    assert v.accepted and v.indices == (0, 1)
    # units are dropped from a stated number, formulas stay formulas
    assert parse_answer("The answer is 1,000 apples.").raw == "1,000 apples"
    assert vote_math(["The answer is 1,000 apples.", r"\boxed{1000}"], tau=2).accepted
    assert not vote_math(["The final answer is 15 * n + 8.", "The answer is n = 8."], tau=2).accepted
    v = vote_math(["So the answer is 18 days.", r"\boxed{18}", "Final Answer: 17"], tau=2, fallback=False)
    assert not v.accepted and v.group_sizes == (1,)


# ---------------------------------------------------------------- vote rule


def test_two_of_three_agree_keeps_the_agreeing_solutions():
    sols = [sol("12"), sol("13"), sol("12")]
    v = vote_math(sols, tau=2)
    assert v.accepted and v.reason is None
    assert v.answer == "12"
    assert v.indices == (0, 2)
    assert v.group_sizes == (2, 1)


def test_three_different_answers_do_not_pass():
    v = vote_math([sol("1"), sol("2"), sol("3")], tau=2)
    assert not v.accepted
    assert v.reason == Reason.NO_CONSENSUS
    assert v.indices == ()
    assert v.group_sizes == (1, 1, 1)


def test_equivalent_forms_agree():
    v = vote_math([sol("0.5"), sol(r"\frac{1}{2}"), sol("7")], tau=2)
    assert v.accepted and v.indices == (0, 1) and v.answer == "0.5"
    v = vote_math([sol(r"\dfrac{3}{4}"), sol("0.75"), sol("3/4")], tau=3)
    assert v.accepted and v.indices == (0, 1, 2)


def test_none_answers_never_count():
    # two unparseable + one answer: the missing answers do not agree with each other
    v = vote_math(["no box", "still no box", sol("5")], tau=2)
    assert not v.accepted and v.reason == Reason.NO_CONSENSUS and v.group_sizes == (1,)
    # all missing
    v = vote_math(["no box", "nothing", ""], tau=2)
    assert not v.accepted and v.reason == Reason.UNPARSEABLE and v.answer is None and v.group_sizes == ()
    # a too-long answer is dropped, so the remaining two must agree on their own
    v = vote_math([sol("9" * 400), sol("4"), sol("4")], tau=2, max_answer_chars=300)
    assert v.accepted and v.indices == (1, 2)
    assert v.answers[0].reason == Reason.TOO_LONG
    v = vote_math([sol("9" * 400), sol("8" * 400), "x"], tau=2, max_answer_chars=300)
    assert v.reason == Reason.TOO_LONG


def test_ties_first_group_wins_or_reject():
    sols = [sol("1"), sol("2"), sol("2"), sol("1")]
    v = vote_math(sols, tau=2, tie_break="first")
    assert v.accepted and v.answer == "1" and v.indices == (0, 3)
    v = vote_math(sols, tau=2, tie_break="reject")
    assert not v.accepted and v.reason == Reason.NO_CONSENSUS
    # a larger group beats earlier smaller ones
    v = vote_math([sol("1"), sol("2"), sol("2"), sol("2"), sol("1")], tau=2, tie_break="reject")
    assert v.accepted and v.answer == "2" and v.indices == (1, 2, 3)


def test_tau_of_n_rule_directly():
    assert tau_of_n([[0], [1, 2]], tau=2) == [1, 2]
    assert tau_of_n([[0], [1]], tau=2) is None
    assert tau_of_n([], tau=1) is None
    assert tau_of_n([[0], [1]], tau=1) == [0]
    assert tau_of_n([[0], [1]], tau=1, tie_break="reject") is None
    with pytest.raises(ValueError, match="tau"):
        tau_of_n([[0]], tau=0)
    with pytest.raises(ValueError, match="tie_break"):
        tau_of_n([[0]], tau=1, tie_break="random")


def test_group_equivalent_compares_with_first_member():
    groups = group_equivalent([1, None, 2, 1, 3, 2], lambda a, b: a == b)
    assert groups == [[0, 3], [2, 5], [4]]


def test_vote_works_off_the_main_thread():
    # math-verify's timeout uses SIGALRM, which only the main thread may set
    out = {}

    def run():
        out["v"] = vote_math([sol("0.5"), sol(r"\frac12"), sol("2")], tau=2)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out["v"].accepted and out["v"].indices == (0, 1)


# ---------------------------------------------------------------- NLI labels


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (r"The premise says so. \boxed{entailment}", "entailment"),
        (r"\boxed{\text{Contradiction}}", "contradiction"),
        ("Reasoning... it could be either.\nAnswer: neutral", "neutral"),
        ("The premise clearly entails the hypothesis.", "entailment"),
        ("At first I thought entailment, but it contradicts it. Final answer: contradiction", "contradiction"),
        ("It is neither entailed nor contradicted.\nLabel: Neutral.", "neutral"),
        ("I do not know", None),
        ("", None),
    ],
)
def test_normalize_label(text, label):
    assert normalize_label(text) == label


def test_normalize_label_custom_label_set():
    labels = ("entailment", "non-entailment")
    assert normalize_label(r"\boxed{non-entailment}", labels) == "non-entailment"
    assert normalize_label("Answer: entailment", labels) == "entailment"


def test_vote_labels():
    v = vote_labels([r"\boxed{neutral}", "Answer: Neutral", r"\boxed{entailment}"], tau=2)
    assert v.accepted and v.answer == "neutral" and v.indices == (0, 1)
    v = vote_labels([r"\boxed{neutral}", "no idea", r"\boxed{entailment}"], tau=2)
    assert not v.accepted and v.reason == Reason.NO_CONSENSUS
    v = vote_labels(["no idea", "hmm", "?"], tau=2)
    assert v.reason == Reason.UNPARSEABLE
