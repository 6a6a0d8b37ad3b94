"""n-gram decontamination against eval sets (prismatic.synth.decontam)."""

from __future__ import annotations

import pickle

import pytest

from prismatic.synth.decontam import DecontamIndex, Hit, hits_detail, normalize_words

EVAL = {
    "asdiv": [
        "Mary had 5 apples. She gave 2 apples to her brother and ate one. How many apples does Mary have now?",
        "A farmer has 12 cows and buys 8 more cows at the market on Sunday. How many cows does he have?",
    ],
    "champ": ["Find all real x such that x squared plus one equals zero in the complex plane."],
    "short": ["What is seven times eight plus one?", "Too short."],
}


@pytest.fixture(scope="module")
def index() -> DecontamIndex:
    return DecontamIndex.build(EVAL, n=10, min_words=6)


def test_normalization():
    assert normalize_words("  Mary HAD 5 apples!  She's—here. ") == ["mary", "had", "5", "apples", "she", "s", "here"]
    assert normalize_words("ｆｕｌｌ width") == ["full", "width"]


def test_clean_candidate_passes(index):
    assert index.contaminated("A baker makes 30 loaves and sells 18 of them before noon. How many are left?") == (
        False,
        [],
    )


def test_copied_span_with_other_case_and_punctuation_is_caught(index):
    cand = "New problem: MARY had 5 apples; she gave 2 apples to her brother... and then she went home."
    bad, hits = index.contaminated(cand)
    assert bad
    assert hits == [
        Hit("asdiv", "mary had 5 apples she gave 2 apples to her"),
        Hit("asdiv", "had 5 apples she gave 2 apples to her brother"),
        Hit("asdiv", "5 apples she gave 2 apples to her brother and"),
    ]


def test_nine_shared_words_are_not_a_hit(index):
    # exactly 9 consecutive words in common with the first asdiv text
    assert not index.contaminated("Mary had 5 apples. She gave 2 apples to a friend today.")[0]


def test_short_eval_texts_indexed_whole(index):
    bad, hits = index.contaminated("Quick one: what is seven times eight plus one? Show work.")
    assert bad and hits == [Hit("short", "what is seven times eight plus one")]
    # eval texts under min_words are ignored, so common short phrases do not flag everything
    assert not index.contaminated("This answer is too short.")[0]


def test_hit_limit_report_and_detail(index):
    cand = EVAL["asdiv"][0] + " " + EVAL["champ"][0]
    all_hits = index.hits(cand)
    assert {h.eval_set for h in all_hits} == {"asdiv", "champ"}
    assert len(all_hits) == len({(h.eval_set, h.ngram) for h in all_hits})  # each gram once
    bad, limited = index.contaminated(cand, max_hits=2)
    assert bad and len(limited) == 2
    assert index.report([cand, "clean text here for sure", EVAL["asdiv"][1]]) == {"asdiv": 2, "champ": 1}
    detail = hits_detail(all_hits, max_chars=60)
    assert detail.startswith('asdiv: "') and len(detail) <= 60
    assert index.texts_indexed == {"asdiv": 2, "champ": 1, "short": 1}


def test_index_pickles_for_spark_broadcast(index):
    clone = pickle.loads(pickle.dumps(index))
    assert clone.contaminated(EVAL["champ"][0])[0]
    assert len(clone) == len(index) > 0


def test_same_gram_in_two_sets_reports_both():
    idx = DecontamIndex.build({"a": ["one two three four five"], "b": ["x one two three four five y"]}, n=5)
    assert idx.hits("one two three four five") == [
        Hit("a", "one two three four five"),
        Hit("b", "one two three four five"),
    ]


def test_bad_parameters():
    with pytest.raises(ValueError, match="n and min_words"):
        DecontamIndex(n=0)
