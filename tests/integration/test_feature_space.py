"""cluster.feature_space: the synthesis loop guided by gradient or by sentence-embedding diversity.

Embedding vectors live in ``gradients`` under their own spec (kind ``embedding`` in ``projection_specs``), so
clustering, the sparse-cluster filter and nearest-centroid assignment reuse the gradient code paths; the pool's
G-Vendi stays gradient-based in both spaces.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from synth_helpers import scripted_generator, seed_pool, tiny_overrides, topics_pool

from prismatic.cluster import assign
from prismatic.config import load_config
from prismatic.embeddings import EMBEDDING_KIND, EmbeddingSpec, embed_samples, embedding_spec, make_embed_fn
from prismatic.errors import SpecMismatchError
from prismatic.ingest import ingest
from prismatic.stages.base import Context
from prismatic.stages.cluster import cluster_task
from prismatic.stages.embed import embed_pool
from prismatic.synth.loop import _gvendi, synthesize
from prismatic.tables import open_store

EMB = ["cluster.feature_space=embedding"]


# ---- the spec and the two ways of computing vectors (no Spark) ------------------------------------------------


def test_embedding_spec_identity_and_row():
    spec = embedding_spec("builtin:minilm")
    assert spec.kind == EMBEDDING_KIND and spec.d == 384 and spec.max_tokens == 256
    assert spec.model_id == "builtin:minilm" and len(spec.weights_sha256) == 64
    assert embedding_spec("builtin:minilm") == spec  # stable
    other = embedding_spec("builtin:minilm", max_tokens=128)
    assert other.spec_id != spec.spec_id  # truncation is part of the identity
    row = spec.to_row()
    assert row["kind"] == "embedding" and row["d"] == 384 and row["seed"] is None
    assert EmbeddingSpec.from_row(row) == spec
    with pytest.raises(SpecMismatchError):
        EmbeddingSpec.from_row({**row, "spec_id": "0" * 16})
    with pytest.raises(ValueError, match="kind"):
        EmbeddingSpec(**{**json.loads(row["spec_json"]), "kind": "dense"})


def test_driver_and_spark_functions_agree():
    import pandas as pd

    prompts = ["What is 2 plus 5?", "word " * 300, "Premise: a\nHypothesis: b\n"]
    completions = ["2 + 5 = 7. \\boxed{7}", "x", None]
    vecs, n_tok, trunc = embed_samples(prompts, completions)
    assert vecs.shape == (3, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert trunc.tolist() == [False, True, False] and n_tok[1] == 256 and 0 < n_tok[0] < 256
    pdf = pd.DataFrame({"sample_id": ["a", "b", "c"], "prompt": prompts, "completion": completions})
    out = pd.concat(list(make_embed_fn("sid")(iter([pdf, pdf.iloc[:0]]))))
    assert out["sample_id"].tolist() == ["a", "b", "c"] and set(out["spec_id"]) == {"sid"}
    assert out["loss"].isna().all() and out["truncated"].tolist() == [False, True, False]
    np.testing.assert_allclose(np.stack(out["vector"].tolist()), vecs, atol=1e-5)


# ---- the loop in embedding space, then gradient space, in one data root ---------------------------------------


def _round_params(settings):
    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return {r.info.run_name: r for r in runs if r.info.run_name.startswith("round-")}


@pytest.mark.spark
def test_embedding_loop_then_gradient_round_never_mix(tmp_path, spark, tiny_model):
    base = tiny_overrides(tmp_path / "lake", tiny_model)
    s_emb, s_grad = load_config(overrides=base + EMB), load_config(overrides=base)
    store = open_store(s_emb, spark)
    ingest(store, [str(topics_pool(tmp_path))], "seed", "math", s_emb)

    # round 1 guided by embeddings
    (rep1,) = synthesize(store, s_emb, rounds=1, generator=scripted_generator())
    specs = {r["spec_id"]: r for r in store.read_arrow("projection_specs").to_pylist()}
    emb_id = embedding_spec().spec_id
    grad_id = Context(s_grad, store).spec().spec_id
    assert specs[emb_id]["kind"] == "embedding" and specs[emb_id]["d"] == 384
    assert specs[grad_id]["kind"] == "kronecker" and specs[grad_id]["d"] == 64
    assert (rep1.feature_space, rep1.cluster_spec_id, rep1.spec_id) == ("embedding", emb_id, grad_id)
    clusters1 = [c for c in store.read_arrow("clusters").to_pylist() if c["round"] == 1]
    assert clusters1 and {c["spec_id"] for c in clusters1} == {emb_id}
    assert {len(c["centroid"]) for c in clusters1} == {384}
    centroids = np.asarray([c["centroid"] for c in sorted(clusters1, key=lambda c: c["cluster_id"])])
    sparse = {c["cluster_id"] for c in clusters1 if c["sparse"]}

    samples = store.read_arrow("samples").to_pylist()
    synth = [s for s in samples if s["origin"] == "synthetic"]
    assert synth and len(synth) == rep1.accepted_samples
    grads = store.read_arrow("gradients").to_pylist()
    by_spec = {sid: {g["sample_id"]: g for g in grads if g["spec_id"] == sid} for sid in (emb_id, grad_id)}
    assert {g["spec_id"] for g in grads} == {emb_id, grad_id}
    # the whole pool was embedded for clustering; accepted samples carry both an embedding and a gradient vector
    assert {s["sample_id"] for s in samples} == set(by_spec[emb_id]) == set(by_spec[grad_id])
    for g in by_spec[emb_id].values():
        assert len(g["vector"]) == 384 and g["loss"] is None and g["n_tokens"] > 0
        assert np.linalg.norm(g["vector"]) == pytest.approx(1.0, abs=1e-4)
    assert {len(g["vector"]) for g in by_spec[grad_id].values()} == {64}

    # candidates were assigned to their nearest centroid in embedding space
    cands = [c for c in store.read_arrow("synth_candidates").to_pylist() if c["round"] == 1]
    accepted = [c for c in cands if c["status"] == "accepted"]
    dense = [c for c in cands if c["reason"] == "dense_cluster"]
    assert accepted and rep1.accepted_candidates == len(accepted)
    for c in accepted:
        assert c["cluster_id"] in sparse
    for c in dense:
        assert c["cluster_id"] not in sparse
    by_text = {(s["prompt"], s["completion"]): s["sample_id"] for s in synth}
    emb_vecs = np.stack([by_spec[emb_id][by_text[c["prompt"], c["completion"]]]["vector"] for c in accepted])
    labels, _ = assign(emb_vecs, centroids)
    assert labels.tolist() == [c["cluster_id"] for c in accepted]
    if dense:
        vecs, _, _ = embed_samples([c["prompt"] for c in dense], [c["completion"] for c in dense])
        assert assign(vecs, centroids)[0].tolist() == [c["cluster_id"] for c in dense]

    # G-Vendi stays gradient-based; MLflow says which space guided the round
    rounds = {r["round"]: r for r in store.read_arrow("rounds").to_pylist()}
    assert rounds[1]["gvendi_before"] == pytest.approx(_gvendi(store, grad_id, 0)[0])
    assert rounds[1]["gvendi_after"] == pytest.approx(_gvendi(store, grad_id, 1)[0])
    run1 = _round_params(s_emb)["round-1-math"]
    assert run1.data.params["feature_space"] == "embedding"
    assert run1.data.params["cluster_spec_id"] == emb_id and run1.data.params["spec_id"] == grad_id
    assert run1.data.metrics["gvendi_after"] == pytest.approx(rounds[1]["gvendi_after"])

    # idempotent: nothing left to embed, round 1 reused
    assert embed_pool(Context(s_emb, store)).todo == 0
    again = cluster_task(Context(s_emb, store), round=1)
    assert again.reused and again.spec_id == emb_id and again.feature_space == "embedding"
    # the same round in the other space is an error, never a mix
    with pytest.raises(SpecMismatchError, match="round 1 was clustered under spec"):
        cluster_task(Context(s_grad, store), round=1)

    # round 2 guided by gradients, same data root
    n_emb = len(by_spec[emb_id])
    (rep2,) = synthesize(store, s_grad, rounds=2, generator=scripted_generator())
    assert (rep2.round, rep2.feature_space, rep2.cluster_spec_id) == (2, "gradient", grad_id)
    clusters = store.read_arrow("clusters").to_pylist()
    per_round = {}
    for c in clusters:
        per_round.setdefault(c["round"], set()).add(c["spec_id"])
    assert per_round == {1: {emb_id}, 2: {grad_id}}
    grads = store.read_arrow("gradients").to_pylist()
    assert sum(g["spec_id"] == emb_id for g in grads) == n_emb  # the gradient round embeds nothing
    run2 = _round_params(s_grad)["round-2-math"]
    assert run2.data.params["feature_space"] == "gradient" and run2.data.params["cluster_spec_id"] == grad_id
    # switching back embeds only what is missing: the samples round 2 accepted
    assert embed_pool(Context(s_emb, store)).todo == rep2.accepted_samples


@pytest.mark.spark
def test_cli_synthesize_with_embedding_feature_space(tmp_path, spark, tiny_model, capsys):
    from prismatic.cli import main

    sets = [a for o in tiny_overrides(tmp_path / "lake", tiny_model) + EMB for a in ("--set", o)]
    seed = seed_pool(tmp_path, n=24)
    assert main([*sets, "ingest", str(seed), "--source", "seed", "--task", "math"]) == 0
    # the fake back end without a script answers with text no problem parser accepts: every candidate is rejected
    fake = ["--set", "synth.generator.backend=fake", "--set", "synth.calls_per_round=2"]
    assert main([*sets, *fake, "synthesize", "--rounds", "1"]) == 0
    assert "round 1 (math): 2 candidates -> 0 accepted" in capsys.readouterr().out
    assert main([*sets, "cluster", "--round", "1"]) == 0
    assert "already clustered 24 embedding vectors" in capsys.readouterr().out
    settings = load_config(overrides=tiny_overrides(tmp_path / "lake", tiny_model) + EMB)
    store = open_store(settings, spark)
    assert {c["spec_id"] for c in store.read_arrow("clusters").to_pylist()} == {embedding_spec().spec_id}
    cands = store.read_arrow("synth_candidates").to_pylist()
    assert cands and {c["reason"] for c in cands} == {"unparseable"}
