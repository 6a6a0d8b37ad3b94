"""Normalization and content hashes (prismatic.normalize)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa
import pytest

from prismatic.config import NormalizeConfig
from prismatic.normalize import (
    normalize_many,
    normalize_text,
    sample_id,
    sample_ids,
    text_hash,
    text_hash_digests,
    text_hashes,
)

DEFAULT = NormalizeConfig()
RAW = NormalizeConfig(nfkc=False, lowercase=False, collapse_whitespace=False, strip_punctuation=False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ＡＢＣ１２３", "abc123"),  # fullwidth letters and digits -> ASCII (NFKC), then lower
        ("ｈｅｌｌｏ\u3000ｗｏｒｌｄ", "hello world"),  # ideographic space is whitespace after NFKC
        ("ﬁnal x²", "final x2"),  # ligature and superscript
        ("Straße", "strasse"),  # casefold, not just lower
        ("  a \t\n b\r\n\nc  ", "a b c"),  # collapse runs, strip ends
        ("a\u00a0b\u2009c", "a b c"),  # no-break space and thin space
        ("x\x1fy", "x y"),  # the sample_id field separator is whitespace to str.split
        ("", ""),
        ("   ", ""),
    ],
)
def test_normalize_default(text, expected):
    assert normalize_text(text, DEFAULT) == expected


def test_each_switch_alone():
    text = " Ｈｉ,  Thére!\n"
    assert normalize_text(text, RAW) == text
    assert normalize_text(text, RAW.model_copy(update={"nfkc": True})) == " Hi,  Thére!\n"
    assert normalize_text(text, RAW.model_copy(update={"lowercase": True})) == " ｈｉ,  thére!\n"
    assert normalize_text(text, RAW.model_copy(update={"collapse_whitespace": True})) == "Ｈｉ, Thére!"
    assert normalize_text(text, RAW.model_copy(update={"strip_punctuation": True})) == " Ｈｉ  Thére\n"


def test_strip_punctuation_unicode():
    cfg = NormalizeConfig(strip_punctuation=True)
    assert normalize_text("Don't — stop! «ok» 3.5, (x)", cfg) == "dont stop ok 35 x"
    assert normalize_text("数学：问题。", cfg) == "数学问题"
    assert normalize_text("a + b = c", cfg) == "a + b = c"  # math symbols are not punctuation (category S)


def test_nfkc_decomposed_equals_composed():
    assert normalize_text("e\u0301", DEFAULT) == normalize_text("\u00e9", DEFAULT) == "\u00e9"


def test_type_errors():
    with pytest.raises(TypeError, match="expects str"):
        normalize_text(None, DEFAULT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompt must be str"):
        sample_id("math", 3, "x", DEFAULT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="element 1"):
        normalize_many(["a", None], DEFAULT)


def test_sample_id_known_value():
    # independent reference: the documented rule spelled out with hashlib on literal, already-normalized text
    expected = hashlib.sha256(b"math\x1fwhat is 2 + 2?\x1f4").hexdigest()
    assert sample_id("Math", "  What is 2 + 2?\n", "４", DEFAULT) == expected
    assert expected == "84e6f282ab9bfb3b41d835177107173e1d21f89fce8759336bb7c3191ad9e0d7"
    assert sample_id("Math", "What is 2 + 2?", "4", RAW) == hashlib.sha256(b"Math\x1fWhat is 2 + 2?\x1f4").hexdigest()


def test_sample_id_stable_literal():
    # a frozen value: changing the rule changes every sample_id in every table, so it must be deliberate
    assert sample_id("math", "1+1", "2", DEFAULT) == hashlib.sha256(b"math\x1f1+1\x1f2").hexdigest()
    assert sample_id("math", "1+1", "2", DEFAULT) == "a00a624f3ecbe915fb2f9567233e9f96e5cedbbc01473aaed6c5e64a44fbe0e3"


def test_sample_id_fields_do_not_run_together():
    assert sample_id("t", "ab", "c", DEFAULT) != sample_id("t", "a", "bc", DEFAULT)
    assert sample_id("t", "a", "b", DEFAULT) != sample_id("t", "b", "a", DEFAULT)
    assert sample_id("math", "a", "b", DEFAULT) != sample_id("nli", "a", "b", DEFAULT)


def test_text_hash_rule():
    assert text_hash("Q:  1+1 ", "Ａ: 2", DEFAULT) == hashlib.sha256(b"q: 1+1 a: 2").hexdigest()
    # prompt/completion boundary is whitespace, so a different split of the same words is the same text
    assert text_hash("a b", "c", DEFAULT) == text_hash("a", "b c", DEFAULT)
    assert text_hash("a b", "c", RAW) != text_hash("a", "b c", RAW)


def test_batch_versions_match_scalar():
    prompts = ["Ｑ１", " x  y ", "Straße", ""]
    comps = ["A", "z", "\tß", ""]
    tasks = ["math", "nli", "math", "generic"]
    for container in (list, pd.Series, pa.array):
        p, c, t = container(prompts), container(comps), container(tasks)
        assert normalize_many(p, DEFAULT) == [normalize_text(x, DEFAULT) for x in prompts]
        assert sample_ids(t, p, c, DEFAULT) == [
            sample_id(*r, DEFAULT) for r in zip(tasks, prompts, comps, strict=True)
        ]
        assert text_hashes(p, c, DEFAULT) == [text_hash(a, b, DEFAULT) for a, b in zip(prompts, comps, strict=True)]
        assert [d.hex() for d in text_hash_digests(p, c, DEFAULT)] == text_hashes(p, c, DEFAULT)
    with pytest.raises(ValueError, match="lengths differ"):
        sample_ids(["a"], ["b", "c"], ["d"], DEFAULT)
