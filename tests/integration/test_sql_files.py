"""Every sql/*.sql runs over a small demo lakehouse (real Delta tables, local Spark) and returns what the data says.

The demo lakehouse: the shipped seed data ingested for real (``prismatic.ingest``), plus a few hand-made rows MERGEd
straight into the tables that later stages write (diversity, clusters, assignments, synth_candidates, study,
eval_results, duplicates), with values chosen so that each query's answer is known. test_notebooks.py reuses it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from prismatic.config import load_config
from prismatic.ingest import ingest
from prismatic.sqlrun import run_sql
from prismatic.tables import TableStore, open_store

REPO = Path(__file__).resolve().parents[2]
SQL_DIR = REPO / "sql"
SQL_FILES = sorted(SQL_DIR.glob("*.sql"))
EXPECTED_SQL = {
    "contamination_hits.sql",
    "pool_by_source_round.sql",
    "quarantine_reasons.sql",
    "sparse_clusters.sql",
    "study_correlations.sql",
    "synth_reasons.sql",
}
SPEC = "spec-demo-0001"
STUDY = "study-demo"
# per study subset: (g_vendi, emb_vendi, ood_accuracy) -- g_vendi ranks the subsets exactly as OOD accuracy does,
# emb_vendi in the opposite order: Spearman rho +1 and -1
SUBSETS = {
    "s1": (10.0, 9.0, 0.40),
    "s2": (20.0, 7.0, 0.45),
    "s3": (30.0, 6.0, 0.52),
    "s4": (40.0, 3.0, 0.60),
    "s5": (50.0, 1.0, 0.61),
}
CLUSTER_SIZES = {0: 2, 1: 4, 2: 9, 3: 30}  # round 1; clusters 0 and 1 are sparse (below the median)


def _ts(n: int) -> list[datetime]:
    return [datetime(2025, 1, 1, tzinfo=UTC)] * n


def build_demo_lakehouse(root: Path, spark) -> TableStore:
    """Fill ``root`` with the demo tables and return the store (delta-rs engine on the given Spark session)."""
    settings = load_config(overrides=[f"data_root={root}"])
    store = open_store(settings, spark)
    ingest(store, [str(REPO / "data" / "seed" / "math_seed.jsonl")], "seed_math", "math", settings)
    ingest(store, [str(REPO / "data" / "seed" / "messy.jsonl")], "messy", "generic", settings)
    rows = store.read_arrow("samples", columns=["sample_id", "source"]).to_pylist()
    seed = sorted(r["sample_id"] for r in rows if r["source"] == "seed_math")
    assert len(seed) > 60, "the seed data should give the demo enough samples"

    store.merge(
        "duplicates",
        pa.table(
            {
                "sample_id": [seed[1]],
                "kept_id": [seed[0]],
                "kind": ["near"],
                "similarity": [0.91],
                "task": ["math"],
                "created_at": _ts(1),
            }
        ),
    )
    # G-Vendi of seed_math/0 measured twice: the later samples version (12.5) is the one to report
    div_rows = [
        ("source,round", "seed_math/0", "g_vendi", 1, 11.0, len(seed)),
        ("source,round", "seed_math/0", "g_vendi", 2, 12.5, len(seed) - 1),
        ("source,round", "seed_math/0", "emb_vendi", 2, 7.25, len(seed) - 1),
        ("all", "all", "g_vendi", 2, 13.0, len(seed) + 1),
    ]
    store.merge(
        "diversity",
        pa.table(
            {
                "scope": [r[0] for r in div_rows],
                "group_key": [r[1] for r in div_rows],
                "metric": [r[2] for r in div_rows],
                "spec_id": [SPEC] * len(div_rows),
                "samples_version": [r[3] for r in div_rows],
                "value": [r[4] for r in div_rows],
                "n": [r[5] for r in div_rows],
                "created_at": _ts(len(div_rows)),
            }
        ),
    )
    store.merge(
        "clusters",
        pa.table(
            {
                "round": [1] * 4,
                "task": ["math"] * 4,
                "cluster_id": list(CLUSTER_SIZES),
                "spec_id": [SPEC] * 4,
                "centroid": [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],
                "size": list(CLUSTER_SIZES.values()),
                "sparse": [True, True, False, False],
                "created_at": _ts(4),
            }
        ),
    )
    cluster_of = [cid for cid, size in CLUSTER_SIZES.items() for _ in range(size)]
    members = [(cid, seed[2 + i]) for i, cid in enumerate(cluster_of)]  # seed[0], seed[1]: the duplicate pair
    store.merge(
        "assignments",
        pa.table(
            {
                "round": [1] * len(members),
                "task": ["math"] * len(members),
                "sample_id": [m[1] for m in members],
                "cluster_id": [m[0] for m in members],
                "cosine": [round(0.99 - 0.01 * i, 4) for i in range(len(members))],
                "created_at": _ts(len(members)),
            }
        ),
    )
    cands = [  # (round, id, status, reason, detail, tokens)
        (1, "c1", "accepted", "accepted", "", 100),
        (1, "c2", "accepted", "accepted", "", 120),
        (1, "c3", "rejected", "no_consensus", "answers 3 / 4 / 5", 90),
        (1, "c4", "rejected", "contaminated", "gsm_symbolic: 'has 74 shells and gets 17 more how many'", 80),
        (2, "c5", "accepted", "accepted", "", 110),
        (2, "c6", "rejected", "duplicate", f"near duplicate of {seed[0][:12]}", 70),
        (2, "c7", "rejected", "dense_cluster", "nearest cluster 3 is not sparse", 60),
    ]
    store.merge(
        "synth_candidates",
        pa.table(
            {
                "round": [c[0] for c in cands],
                "candidate_id": [c[1] for c in cands],
                "task": ["math"] * len(cands),
                "prompt": [f"Synthetic problem {c[1]}: what is {i} + {i}?" for i, c in enumerate(cands)],
                "completion": ["\\boxed{0}"] * len(cands),
                "generator": ["fake"] * len(cands),
                "exemplar_ids": [[seed[2], seed[3]]] * len(cands),
                "answers": [["0", "0", "1"]] * len(cands),
                "status": [c[2] for c in cands],
                "reason": [c[3] for c in cands],
                "detail": [c[4] for c in cands],
                "cluster_id": [0] * len(cands),
                "tokens": [c[5] for c in cands],
                "created_at": _ts(len(cands)),
            }
        ),
    )
    study = [
        (STUDY, sub, m, v)
        for sub, vals in SUBSETS.items()
        for m, v in zip(("g_vendi", "emb_vendi", "ood_accuracy"), vals, strict=True)
    ]
    study += [(STUDY, sub, "id_accuracy", 0.8) for sub in SUBSETS]
    store.merge(
        "study",
        pa.table(
            {
                "study_id": [r[0] for r in study],
                "subset_id": [r[1] for r in study],
                "metric": [r[2] for r in study],
                "value": [r[3] for r in study],
                "created_at": _ts(len(study)),
            }
        ),
    )
    evals = [("run-a", "gsm_symbolic", "id", 0.7), ("run-a", "asdiv", "ood", 0.5), ("run-b", "asdiv", "ood", 0.55)]
    store.merge(
        "eval_results",
        pa.table(
            {
                "run_id": [e[0] for e in evals],
                "benchmark": [e[1] for e in evals],
                "model": ["student-lm"] * len(evals),
                "split": [e[2] for e in evals],
                "accuracy": [e[3] for e in evals],
                "eval_method": ["generate"] * len(evals),
                "n": [100] * len(evals),
                "created_at": _ts(len(evals)),
            }
        ),
    )
    return store


@pytest.fixture(scope="module")
def demo(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("sqlfiles") / "lake"
    return build_demo_lakehouse(root, spark)


def run_file(store: TableStore, name: str) -> list[list[dict]]:
    """Rows of each statement of sql/<name>; every statement must return rows on the demo tables."""
    results = list(run_sql(store, (SQL_DIR / name).read_text(), limit=10_000))
    assert results, f"{name} holds no statement"
    for head, rows in results:
        assert rows, f"{name}: statement {head!r} returned no rows on the demo tables"
    return [rows for _, rows in results]


def test_the_sql_files_are_the_announced_ones():
    """Each file has its own test below: a new file must be added here (and get a test)."""
    assert {f.name for f in SQL_FILES} == EXPECTED_SQL
    for f in SQL_FILES:
        head = f.read_text().splitlines()[:12]
        assert any("USE CATALOG" in line for line in head), f"{f.name}: header must say how to run it on Databricks"
        assert any("prism sql -f sql/" in line for line in head), f"{f.name}: header must say how to run it locally"


@pytest.mark.spark
def test_pool_by_source_round(demo):
    by_group, by_version = run_file(demo, "pool_by_source_round.sql")
    rows = {(r["source"], r["round"]): r for r in by_group}
    n_seed = demo.read("samples").where("source = 'seed_math'").count()
    assert rows[("seed_math", 0)]["pool_size"] == n_seed - 1  # one sample is a recorded duplicate
    assert rows[("seed_math", 0)]["g_vendi"] == pytest.approx(12.5)  # the latest samples version, not 11.0
    assert rows[("seed_math", 0)]["samples_version"] == 2
    assert rows[("messy", 0)]["pool_size"] == 2 and rows[("messy", 0)]["g_vendi"] is None
    assert [(r["samples_version"], r["g_vendi"]) for r in by_version] == [(2, 13.0)]


@pytest.mark.spark
def test_synth_reasons(demo):
    per_round, per_reason = run_file(demo, "synth_reasons.sql")
    assert [(r["round"], r["candidates"], r["accepted"], r["tokens"]) for r in per_round] == [
        (1, 4, 2, 390),
        (2, 3, 1, 240),
    ]
    assert per_round[0]["acceptance_rate"] == pytest.approx(0.5)
    got = {(r["round"], r["reason"]): (r["candidates"], r["share_of_round"]) for r in per_reason}
    assert got[(1, "accepted")] == (2, pytest.approx(0.5))
    assert got[(1, "contaminated")] == (1, pytest.approx(0.25))
    assert set(got) == {
        (1, "accepted"),
        (1, "no_consensus"),
        (1, "contaminated"),
        (2, "accepted"),
        (2, "duplicate"),
        (2, "dense_cluster"),
    }


@pytest.mark.spark
def test_sparse_clusters(demo):
    (rows,) = run_file(demo, "sparse_clusters.sql")
    assert [r["cluster_id"] for r in rows][:2] == [0, 0]  # smallest cluster first, with its two members
    per_cluster: dict[int, list[dict]] = {}
    for r in rows:
        per_cluster.setdefault(r["cluster_id"], []).append(r)
    assert set(per_cluster) == set(CLUSTER_SIZES)
    for cid, examples in per_cluster.items():
        assert len(examples) == min(3, CLUSTER_SIZES[cid])
        assert [e["example"] for e in examples] == list(range(1, len(examples) + 1))
        cosines = [e["cosine"] for e in examples]
        assert cosines == sorted(cosines, reverse=True)  # closest to the centroid first
        assert all(e["prompt"] and e["source"] == "seed_math" for e in examples)
    assert [r["sparse"] for r in rows if r["example"] == 1] == [True, True, False, False]
    assert {r["task"] for r in rows} == {"math"}  # clusters are per (round, task)


@pytest.mark.spark
def test_contamination_hits(demo):
    per_round, hits = run_file(demo, "contamination_hits.sql")
    assert {r["round"]: r["hits"] for r in per_round} == {1: 1, 2: 0}
    assert [(r["round"], r["candidate_id"]) for r in hits] == [(1, "c4")]
    assert hits[0]["matched"].startswith("gsm_symbolic")


@pytest.mark.spark
def test_study_correlations(demo):
    (rows,) = run_file(demo, "study_correlations.sql")
    got = {r["metric"]: r for r in rows}
    assert set(got) == {"g_vendi", "emb_vendi"}  # accuracies are targets, not predictors
    assert got["g_vendi"]["subsets"] == len(SUBSETS)
    assert got["g_vendi"]["spearman_rho"] == pytest.approx(1.0)
    assert got["emb_vendi"]["spearman_rho"] == pytest.approx(-1.0)
    assert rows[0]["metric"] == "g_vendi"  # ranked by rho


@pytest.mark.spark
def test_quarantine_reasons(demo):
    (rows,) = run_file(demo, "quarantine_reasons.sql")
    got = {(r["stage"], r["source"], r["reason"]): r["n_rows"] for r in rows}
    expected = {
        r["reason"]: r["n"]
        for r in demo.spark.sql(
            "SELECT reason, count(*) AS n FROM quarantine WHERE source = 'messy' GROUP BY reason"
        ).collect()
    }
    assert len(expected) >= 5  # the messy seed file exercises most reason codes
    assert {k[2]: v for k, v in got.items() if k[1] == "messy"} == expected
    assert sum(got.values()) == demo.count("quarantine")
    assert all(r["example"] for r in rows)


@pytest.mark.spark
def test_prism_sql_runs_a_file(demo, capsys):
    """The documented way, `prism sql -f sql/<file>.sql`, gives the same rows as run_sql (which it calls)."""
    import csv
    import io

    from prismatic.cli import main

    rc = main(
        [
            "--set",
            f"data_root={demo.settings.data_root}",
            "sql",
            "-f",
            str(SQL_DIR / "sparse_clusters.sql"),
            "--format",
            "csv",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    (expected,) = run_file(demo, "sparse_clusters.sql")
    got = list(csv.DictReader(io.StringIO(out)))
    assert [(r["cluster_id"], r["example"], r["prompt"]) for r in got] == [
        (str(e["cluster_id"]), str(e["example"]), e["prompt"]) for e in expected
    ]
