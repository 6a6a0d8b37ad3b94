"""The notebooks/ run as plain Python (what `python notebooks/<name>.py` does) on a local lakehouse.

On the demo lakehouse of test_sql_files.py (plus MLflow runs logged the way the rounds and the study log them) each
notebook prints its tables and saves its plots; on an empty lakehouse each one says what is missing and completes.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from test_sql_files import STUDY, SUBSETS, build_demo_lakehouse

from prismatic.config import load_config

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
EXPECTED = {"01_explore_pool.py", "02_sparse_clusters.py", "03_compare_rounds.py"}
# MLflow runs (name, g_vendi, ood_accuracy): OOD accuracy grows with G-Vendi, Spearman rho = 1
RUNS = [("round-1", 10.0, 0.41), ("round-2", 14.0, 0.47), ("study-subset-s3", 30.0, 0.52)]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory, spark) -> Path:
    import mlflow

    from prismatic import tracking

    root = tmp_path_factory.mktemp("notebooks") / "lake"
    build_demo_lakehouse(root, spark)
    settings = load_config(overrides=[f"data_root={root}"])
    for name, g_vendi, ood in RUNS:
        with tracking.run(settings, name):
            mlflow.log_metrics({"g_vendi": g_vendi, "ood_accuracy": ood, "id_accuracy": 0.8})
    return root


def run_notebook(name: str, root: Path, figures: Path, monkeypatch, capsys) -> str:
    monkeypatch.setenv("PRISM_DATA_ROOT", str(root))
    monkeypatch.setenv("PRISM_NB_FIGURES", str(figures))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(REPO / "notebooks" / name), run_name="__main__")
    return capsys.readouterr().out


def test_notebooks_are_databricks_source_files():
    assert {p.name for p in NOTEBOOKS} == EXPECTED
    for p in NOTEBOOKS:
        text = p.read_text()
        assert text.startswith("# Databricks notebook source\n"), p.name
        assert text.count("# COMMAND ----------") >= 4, p.name
        assert "Notebook(globals())" in text, f"{p.name}: parameters are widgets on Databricks (prismatic.notebook)"
        assert "from prismatic." in text, f"{p.name}: the logic comes from the package"


def test_explore_pool(demo_root, tmp_path, monkeypatch, capsys):
    out = run_notebook("01_explore_pool.py", demo_root, tmp_path, monkeypatch, capsys)
    settings = load_config(overrides=[f"data_root={demo_root}"])
    from prismatic.tables import open_store

    pool = open_store(settings).pool().count()
    assert f"pool: {pool} samples from 2 sources" in out
    assert "seed_math" in out and "messy" in out
    assert "12.5" in out  # the latest G-Vendi of seed_math, round 0
    assert (tmp_path / "pool_by_source_round.png").stat().st_size > 1000
    assert (tmp_path / "gvendi_by_source_round.png").stat().st_size > 1000


def test_sparse_clusters(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRISM_NB_CLUSTERS", "2")
    out = run_notebook("02_sparse_clusters.py", demo_root, tmp_path, monkeypatch, capsys)
    assert "round 1: 4 clusters, 2 sparse, sizes 2..30" in out
    assert "cluster 0 (2 samples)" in out and "cluster 1 (4 samples)" in out
    assert "cluster 2 (" not in out  # only the 2 sparsest were asked for
    assert out.count("  #1 cos=") == 2 and out.count("  #3 cos=") == 1  # cluster 0 has only two members
    assert (tmp_path / "cluster_sizes.png").stat().st_size > 1000


def test_compare_rounds(demo_root, tmp_path, monkeypatch, capsys):
    out = run_notebook("03_compare_rounds.py", demo_root, tmp_path, monkeypatch, capsys)
    assert f"{len(RUNS)} runs; metrics logged: g_vendi, id_accuracy, ood_accuracy" in out
    assert f"{len(RUNS)} runs with both metrics; Spearman rho = 1.000" in out
    assert f"study {STUDY}: {len(SUBSETS)} subsets, Spearman rho(g_vendi, ood_accuracy) = 1.000" in out
    assert "asdiv" in out and "gsm_symbolic" in out  # eval_results pivoted by benchmark
    assert (tmp_path / "mlflow_diversity_vs_accuracy.png").stat().st_size > 1000
    assert (tmp_path / "study_diversity_vs_accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_empty_lakehouse_gives_a_clear_message(name, spark, tmp_path, monkeypatch, capsys):
    out = run_notebook(name, tmp_path / "empty", tmp_path / "figures", monkeypatch, capsys)
    assert "yet" in out and "Traceback" not in out
    assert not (tmp_path / "figures").exists()  # nothing to plot
