"""The steps of a synthesis round over ``list[Candidate]`` without Spark: generate -> solve and vote -> screen.

A scripted generator answers each exemplar group with known problems and each problem with known solutions, so
the outcome (and reason) of every candidate follows from the script's rules, written out in the test.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from prismatic.config import load_config
from prismatic.stages.base import Context
from prismatic.synth.decontam import DecontamIndex
from prismatic.synth.generators import FakeGenerator
from prismatic.synth.loop import RoundWork, _task_object, generate_candidates, screen, solve_and_vote
from prismatic.synth.rounds import RoundReport
from prismatic.synth.types import Reason, Status

# exemplar group i -> what the generation call for it returns (group 2 fails: a generator error)
PROBLEMS = {
    0: "Problem 1: What is 2 plus 5?\nProblem 2: What is 4 plus 1?",
    1: "Sorry.",
    3: "Problem 1: What is 3 plus 4?\nProblem 2: What is 2 plus 5?",
    4: "Problem 1: What is 7 plus 8?\nProblem 2: What is 10 plus 1?",
}
SOLVE_RE = re.compile(r"What is (\d+) plus (\d+)\?")
GROUP_RE = re.compile(r"seed problem number (\d+)", re.I)


def script(prompt: str, j: int, seed: int) -> str:
    """Generation prompts (they quote the exemplars) -> PROBLEMS; solver prompts -> a boxed sum, three different
    ones when a is a multiple of 3 (no consensus)."""
    group = GROUP_RE.search(prompt)
    if group:
        return PROBLEMS[int(group[1])]
    a, b = map(int, SOLVE_RE.search(prompt).groups())
    return f"The sum is \\boxed{{{a + b + (j if a % 3 == 0 else 0)}}}"


@pytest.fixture
def work(tmp_path):
    settings = load_config(overrides=[f"data_root={tmp_path}", "synth.problems_per_call=2", "synth.n_solutions=3"])
    gen = FakeGenerator(script, fail=lambda p: "Seed problem number 2" in p, skip_bad_requests=True)
    decontam = DecontamIndex.build({"evalset": ["What is 7 plus 8?"]}, n=10, min_words=4)
    return RoundWork(
        Context(settings, None), 1, "math", _task_object(settings, "math"), gen, decontam, RoundReport(1, "math")
    )


def _hid(*parts) -> str:  # the candidate id recipe, written out: ids of stored rows must not change
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


def test_generate_solve_screen_mark_each_candidate_with_its_reason(work):
    groups = [[{"sample_id": f"s{i}", "problem": f"Seed problem number {i}: what is {i} plus {i}?"}] for i in range(5)]
    cands = generate_candidates(work, groups)
    assert [c.prompt for c in cands] == [
        "What is 2 plus 5?", "What is 4 plus 1?", "Sorry.", "",
        "What is 3 plus 4?", "What is 2 plus 5?", "What is 7 plus 8?", "What is 10 plus 1?",
    ]  # fmt: skip
    assert [c.exemplar_ids for c in cands] == [["s0"], ["s0"], ["s1"], ["s2"], ["s3"], ["s3"], ["s4"], ["s4"]]
    assert (cands[2].reason, cands[3].reason) == (Reason.UNPARSEABLE, Reason.GENERATOR_ERROR)
    assert cands[3].candidate_id == _hid(1, "math", 2, "generator_error")
    assert cands[2].candidate_id == _hid(1, "math", 1, "unparseable")
    assert cands[0].candidate_id == _hid(1, "math", 0, 0, "What is 2 plus 5?")
    # a call's tokens are split over the rows it produced (remainder to the first): the shares add up to the call
    call0 = len(PROBLEMS[0].split())
    assert (cands[0].tokens, cands[1].tokens) == (call0 - call0 // 2, call0 // 2) and cands[2].tokens == 1
    assert sum(c.tokens for c in cands[:2]) == call0

    assert solve_and_vote(work, cands) is cands
    assert cands[4].reason == Reason.NO_CONSENSUS and cands[4].answers == ["7", "8", "9"]
    assert [c.status for c in cands if c.reason is None] == [Status.PENDING] * 5
    assert cands[0].samples and cands[0].samples[0]["completion"].endswith("\\boxed{7}")

    pool = [{"prompt": "What is 4 plus 1?", "completion": "The sum is \\boxed{5}"}]
    assert screen(work, cands, pool) is cands
    assert [c.reason for c in cands] == [
        None, Reason.DUPLICATE, Reason.UNPARSEABLE, Reason.GENERATOR_ERROR,
        Reason.NO_CONSENSUS, Reason.DUPLICATE, Reason.CONTAMINATED, None,
    ]  # fmt: skip
    assert "pool sample" in cands[1].detail and "another candidate" in cands[5].detail
    assert "evalset" in cands[6].detail and work.report.contamination_hits == 1
    assert [c.status for c in cands].count(Status.REJECTED) == 6
    assert work.report.tokens == sum(c.tokens for c in cands)


def test_a_candidate_takes_only_known_reasons():
    from prismatic.synth.loop import Candidate

    c = Candidate("id", "p", [])
    assert c.pending and c.reason is None
    c.reject("duplicate", "x" * 600)  # a stored code is read back as the enum
    assert c.reason is Reason.DUPLICATE and c.status is Status.REJECTED and len(c.detail) == 500
    with pytest.raises(ValueError):
        c.reject("not_a_reason")
    c.accept()
    assert (c.status, c.reason) == (Status.ACCEPTED, Reason.ACCEPTED) and not c.pending


def test_round_summary_names_reasons_as_plain_words():
    from collections import Counter

    from prismatic.synth.types import Reason

    rep = RoundReport(1, "math", generated=4, reasons=Counter({Reason.NO_CONSENSUS: 3, Reason.DENSE_CLUSTER: 1}))
    text = rep.summary()
    assert "reasons {dense_cluster: 1, no_consensus: 3}" in text and "Reason." not in text
