"""Probe student: fit against scikit-learn, safetensors round trip, embedding cache, NLI prompt parsing."""

from __future__ import annotations

import numpy as np
import pytest

from prismatic.config import IngestConfig
from prismatic.train.data import EmbeddingCache, pair_features, parse_nli_prompt, template_regex
from prismatic.train.probe import META_FILE, WEIGHTS_FILE, ProbeStudent

LABELS3 = ["contradiction", "entailment", "neutral"]


def synthetic(n=90, dim=8, seed=0):
    """Premise / hypothesis embeddings whose label is encoded in the hypothesis direction (learnable)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.array([LABELS3[i % 3] for i in range(n)], dtype=object)
    centers = {lab: rng.normal(size=dim) * 3 for lab in LABELS3}
    v = np.stack([centers[lab] + 0.3 * rng.normal(size=dim) for lab in y]).astype(np.float32)
    return u, v, y


def test_pair_features_layout():
    u = np.array([[1.0, 2.0]], np.float32)
    v = np.array([[3.0, -1.0]], np.float32)
    np.testing.assert_array_equal(pair_features(u, v), [[1, 2, 3, -1, 2, 3, 3, -2]])
    with pytest.raises(ValueError):
        pair_features(u, np.zeros((2, 2)))


def test_fit_matches_sklearn_and_round_trips(tmp_path):
    from sklearn.linear_model import LogisticRegression

    u, v, y = synthetic()
    probe = ProbeStudent.fit(u, v, y, c=1.0, max_iter=2000)
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(pair_features(u, v), y)
    X = pair_features(*synthetic(seed=1)[:2])
    assert probe.predict_features(X) == list(ref.predict(X))
    assert probe.train_accuracy == pytest.approx(float(np.mean(ref.predict(pair_features(u, v)) == y)))
    assert probe.train_accuracy > 0.95
    folder = probe.save(tmp_path / "p")
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, META_FILE])  # no pickle anywhere
    back = ProbeStudent.load(folder)
    np.testing.assert_array_equal(back.coef, probe.coef)
    np.testing.assert_array_equal(back.intercept, probe.intercept)
    assert back.labels == probe.labels == LABELS3
    assert back.predict_features(X) == probe.predict_features(X)


def test_binary_fit_is_stored_as_two_rows(tmp_path):
    from sklearn.linear_model import LogisticRegression

    u, v, y = synthetic(n=60)
    y2 = np.where(y == "entailment", "entailment", "non-entailment")
    probe = ProbeStudent.fit(u, v, y2)
    assert probe.coef.shape[0] == 2 and probe.labels == ["entailment", "non-entailment"]
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(pair_features(u, v), y2)
    X = pair_features(*synthetic(seed=3)[:2])
    assert ProbeStudent.load(probe.save(tmp_path / "b")).predict_features(X) == list(ref.predict(X))


def test_single_label_gives_a_constant_classifier():
    u, v, _ = synthetic(n=12)
    probe = ProbeStudent.fit(u, v, ["neutral"] * 12)
    assert probe.predict_embeddings(u, v) == ["neutral"] * 12


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a probe"):
        ProbeStudent.load(tmp_path)


def test_embedding_cache_embeds_each_text_once(tmp_path):
    calls: list[list[str]] = []

    def fake_embed(texts):
        calls.append(list(texts))
        return np.stack([np.full(4, float(len(t)), np.float32) for t in texts])

    cache = EmbeddingCache(tmp_path / "c", fake_embed)
    out = cache.get(["aa", "b", "aa"])
    np.testing.assert_array_equal(out[:, 0], [2, 1, 2])
    assert calls == [["aa", "b"]]
    cache.get(["b", "ccc"])
    assert calls[-1] == ["ccc"]
    again = EmbeddingCache(tmp_path / "c", fake_embed)  # persisted on disk, as safetensors shards
    assert len(again) == 3 and list((tmp_path / "c").glob("*.safetensors"))
    np.testing.assert_array_equal(again.get(["ccc", "aa"])[:, 0], [3, 2])
    assert len(calls) == 2


def test_nli_prompt_parsing_round_trips_and_rejects_ambiguity():
    template = IngestConfig().nli_prompt_template
    pats = (template_regex(template), template_regex(template, greedy=True))
    prompt = template.format(premise="A man {sings}.", hypothesis="Someone: makes sound.")
    assert parse_nli_prompt(prompt, template, pats) == ("A man {sings}.", "Someone: makes sound.")
    assert parse_nli_prompt("Premise: only a premise", template, pats) is None
    other = "P={premise} | H={hypothesis}"
    assert parse_nli_prompt("P=a | b | H=c", other) == ("a | b", "c")
    assert parse_nli_prompt("P=a H=c", other) is None
    # a premise holding the separator splits two ways: refused (the bronze payload decides instead)
    assert parse_nli_prompt(other.format(premise="x | H=y", hypothesis="z"), other) is None
    with pytest.raises(ValueError):
        template_regex("no fields here")
