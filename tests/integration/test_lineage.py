"""Lineage and bookkeeping of a run (issue 14, item 5), on one tiny `prism run` with real Spark, Delta and MLflow
(those tests are ``slow``; the default suite checks the tags, the experiment kind and the sql/ grouping on the
smaller `prism run` of test_cli.py).

* Every MLflow run (the pipeline, the synthesize stage, the round's child, train, eval) carries the ``git_commit``
  and ``prismatic.stage`` tags; the experiment is a classic ML experiment (``mlflow.experimentKind``).
* ``rounds.versions_read`` is the map of the versions the round read; tokens are counted once per generation call
  (candidates, ``rounds`` and the MLflow metric agree with what the generator returned).
* `prism run` writes G-Vendi grouped by ``source,round``, the grouping sql/pool_by_source_round.sql reads.
* The round figures plot the stored data (sparse flags, integer rounds) and keep their labels inside the figure.
* conf/databricks.yaml trains on the task it synthesizes and its default benchmarks load offline.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import write_jsonl
from synth_helpers import math_benchmarks, mixed_script, seed_pool

from prismatic.config import load_config
from prismatic.synth.generators import FakeGenerator

REPO = Path(__file__).resolve().parents[2]


class CountingGenerator(FakeGenerator):
    """The scripted generator, adding up the completion tokens of everything it returned (the reference)."""

    def __init__(self):
        super().__init__(mixed_script, model="counting-script")
        self.completion_tokens = 0

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        out = super()._generate(prompts, n, temperature, top_p, max_tokens, seed)
        self.completion_tokens += sum(g.completion_tokens for row in out for g in row)
        return out


def _answers(prompts: list[str], **_) -> list[str]:
    """A fake lm student's answers (generation is not what is tested here): the right sum for even a."""
    out = []
    for p in prompts:
        m = re.search(r"What is (\d+) plus (\d+)\?", p)
        out.append(f"\\boxed{{{int(m[1]) + int(m[2])}}}" if m and int(m[1]) % 2 == 0 else "\\boxed{-1}")
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, spark, tiny_model):
    """One `prism run`: ingest, dedup, score, diversity, one synthesis round, train the lm student, eval."""
    from prismatic.cli import main
    from prismatic.train.lm import LMStudent

    tmp = tmp_path_factory.mktemp("lineage")
    id_bench, ood_bench = math_benchmarks(tmp)
    config = {
        "data_root": str(tmp / "lake"),
        "scoring": {"model": {"path": str(tiny_model)}, "d": 64, "block": 2, "max_tokens": 64, "chat_template": False},
        "dedup": {"near": True},
        "cluster": {"k_min": 3, "k_fraction": 0.1, "iterations": 5},
        "synth": {"task": "math", "calls_per_round": 6},
        "train": {"student": "lm", "task": "math", "model": {"path": str(tiny_model)}, "max_steps": 2,
                  "batch_size": 8, "max_tokens": 64, "benchmarks": [str(id_bench), str(ood_bench)]},
        "tracking": {"experiment": "lineage"},
        "demo": {"inputs": [{"path": str(seed_pool(tmp)), "source": "seed", "task": "math"}], "synth_rounds": 1,
                 "train": True, "student": "lm", "benchmarks": [str(id_bench), str(ood_bench)]},
    }  # fmt: skip
    (tmp / "run.yaml").write_text(yaml.safe_dump(config))
    gen = CountingGenerator()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("prismatic.synth.generators.make_generator", lambda *a, **k: gen)
        mp.setattr(LMStudent, "generate", lambda self, prompts, **kw: _answers(prompts))
        assert main(["--config", str(tmp / "run.yaml"), "run"]) == 0
    return load_config(tmp / "run.yaml"), gen


def _runs(settings):
    import mlflow

    from prismatic import tracking

    exp_id = tracking.setup(settings)
    return mlflow.get_experiment(exp_id), mlflow.search_runs(experiment_ids=[exp_id], output_format="list")


@pytest.mark.spark
@pytest.mark.slow  # one tiny `prism run` with a round, train and eval: 10 min on 2 loaded cores
def test_every_run_has_the_commit_and_stage_tags(pipeline):
    from prismatic import tracking

    settings, _ = pipeline
    exp, runs = _runs(settings)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's classic ML view
    by_id = {r.info.run_id: r for r in runs}
    stages = Counter(r.data.tags.get("prismatic.stage") for r in runs)
    assert set(stages) == {"pipeline", "synthesize", "synthesize.round", "train-lm", "eval"}, stages
    assert stages["pipeline"] == 1
    commit = tracking.git_commit() or tracking.UNKNOWN_COMMIT
    (parent,) = [r for r in runs if r.data.tags["prismatic.stage"] == "pipeline"]
    for r in runs:
        assert r.data.tags["git_commit"] == commit, r.info.run_name
        root = r  # every run hangs under the pipeline run
        while "mlflow.parentRunId" in root.data.tags:
            root = by_id[root.data.tags["mlflow.parentRunId"]]
        assert root.info.run_id == parent.info.run_id, r.info.run_name


@pytest.mark.spark
@pytest.mark.slow  # one tiny `prism run` with a round, train and eval: 10 min on 2 loaded cores
def test_rounds_versions_read_tokens_and_mlflow_agree(pipeline, spark):
    from prismatic.synth.rounds import ROUND_READS
    from prismatic.tables import open_store

    settings, gen = pipeline
    store = open_store(settings, spark)
    (row,) = store.read_arrow("rounds").to_pylist()
    _, runs = _runs(settings)
    (child,) = [r for r in runs if r.data.tags["prismatic.stage"] == "synthesize.round"]
    assert child.info.run_id == row["mlflow_run_id"]
    # versions_read: the versions of the tables the round read, as the child run's tags; samples = the version the
    # diversity stage (just before the round) measured
    read = json.loads(row["versions_read"])
    assert set(read) == set(ROUND_READS)
    div_versions = {r["samples_version"] for r in store.read_arrow("diversity").to_pylist()}
    assert read["samples"] == max(div_versions)
    assert read["gradients"] is not None and read["clusters"] is None  # the round's own clustering comes after
    for table, version in read.items():
        if version is not None:
            assert child.data.tags[f"versions_read.{table}"] == str(version)
    # tokens: each generation (problems and solutions) counted once, everywhere
    cands = store.read_arrow("synth_candidates").to_pylist()
    assert gen.completion_tokens > 0
    assert sum(c["tokens"] for c in cands) == row["tokens"] == gen.completion_tokens
    assert child.data.metrics["tokens_generated"] == row["tokens"]
    assert json.loads(row["counts"])["tokens"] == row["tokens"]


@pytest.mark.spark
@pytest.mark.slow  # one tiny `prism run` with a round, train and eval: 10 min on 2 loaded cores
def test_prism_run_writes_the_grouping_sql_reads(pipeline, spark):
    from prismatic.sqlrun import run_sql
    from prismatic.tables import open_store
    from prismatic.vendi import g_vendi

    settings, _ = pipeline
    store = open_store(settings, spark)
    scopes = {r["scope"] for r in store.read_arrow("diversity").to_pylist()}
    assert scopes == {"all", "source,round"}
    (by_group, _by_version) = [rows for _, rows in run_sql(store, (REPO / "sql/pool_by_source_round.sql").read_text())]
    rows = {(r["source"], r["round"]): r for r in by_group}
    seed = rows[("seed", 0)]
    # reference: numpy G-Vendi of the seed pool's vectors (round 1 adds rows of round 1 only)
    dups = {d["sample_id"] for d in store.read_arrow("duplicates").to_pylist()}
    pool = {
        s["sample_id"] for s in store.read_arrow("samples").to_pylist() if (s["source"], s["round"]) == ("seed", 0)
    }
    grads = store.read_arrow("gradients").to_pylist()
    vecs = [g["vector"] for g in grads if g["sample_id"] in pool - dups and g["spec_id"] == seed["spec_id"]]
    assert seed["n_scored"] == seed["pool_size"] == len(vecs)
    assert seed["g_vendi"] == pytest.approx(g_vendi(np.asarray(vecs, dtype=np.float64)), abs=1e-4)
    _, runs = _runs(settings)
    (parent,) = [r for r in runs if r.data.tags["prismatic.stage"] == "pipeline"]
    assert parent.data.metrics["g_vendi.source_round.seed/0"] == pytest.approx(seed["g_vendi"], abs=1e-4)


def test_only_tracking_starts_mlflow_runs():
    """Every run goes through tracking.run (which sets the tags): no other module calls mlflow.start_run."""
    offenders = []
    for path in [*(REPO / "lib").rglob("*.py"), *(REPO / "jobs").glob("*.py"), *(REPO / "notebooks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "start_run" and path.name != "tracking.py":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_an_existing_experiment_becomes_classic(tmp_path):
    import mlflow

    from prismatic import tracking

    settings = load_config(overrides=[f"data_root={tmp_path}", "tracking.experiment=old"])
    mlflow.set_tracking_uri(tracking.tracking_uri(settings))
    exp_id = mlflow.create_experiment("old", artifact_location=tracking.artifact_location(settings))
    assert "mlflow.experimentKind" not in mlflow.get_experiment(exp_id).tags
    assert tracking.setup(settings) == exp_id
    assert mlflow.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_token_shares_add_up_to_the_call():
    from prismatic.synth.loop import token_shares

    for total in (0, 1, 7, 100, 2043):
        for n in (1, 2, 3, 8):
            shares = token_shares(total, n)
            assert len(shares) == n and sum(shares) == total and min(shares) >= 0
            assert max(shares) - min(shares) <= total % n  # as even as integers allow
            assert shares[0] == max(shares)  # the remainder goes to the first


# ---- figures ----------------------------------------------------------------------------------------------------


def _inside(fig) -> None:
    """Every drawn text (title, axis labels, tick labels in view, annotations) lies inside the saved figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figures come back closed; draw them as savefig / log_figure would
    canvas.draw()
    renderer, box = canvas.get_renderer(), fig.bbox
    for ax in fig.axes:
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ticks = [t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
        ticks += [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1]
        for t in [ax.title, ax.xaxis.label, ax.yaxis.label, *ticks, *ax.texts]:
            if t.get_visible() and t.get_text():
                e = t.get_window_extent(renderer)
                assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, t.get_text()


class _Rounds:
    """The one table gvendi_by_round_figure / gvendi_vs_ood_figure read, as a store would serve it."""

    def __init__(self, rows: list[dict]):
        import pyarrow as pa

        self.table = pa.Table.from_pylist(rows)

    def exists(self, name: str) -> bool:
        return name == "rounds"

    def read_arrow(self, name: str):
        return self.table


def test_cluster_sizes_figure_colours_the_stored_sparse_flags():
    from matplotlib.colors import to_hex

    from prismatic.synth.rounds import RoundReport, cluster_sizes_figure

    # flags that disagree with "below the median size" (the stored flag is what counts, e.g. another quantile)
    clusters = [
        {"cluster_id": 0, "size": 3, "sparse": False},
        {"cluster_id": 1, "size": 9, "sparse": True},
        {"cluster_id": 2, "size": 1, "sparse": False},
        {"cluster_id": 3, "size": 5, "sparse": True},
        {"cluster_id": 4, "size": 7, "sparse": False},
    ]
    fig = cluster_sizes_figure(RoundReport(2, "math", feature_space="gradient"), clusters)
    ax = fig.axes[0]
    bars = ax.patches
    expected = sorted(clusters, key=lambda c: -c["size"])
    assert [b.get_height() for b in bars] == [c["size"] for c in expected]
    colours = {to_hex(b.get_facecolor()) for b in bars}
    assert len(colours) == 2
    sparse_colour = {to_hex(b.get_facecolor()) for b, c in zip(bars, expected, strict=True) if c["sparse"]}
    dense_colour = {to_hex(b.get_facecolor()) for b, c in zip(bars, expected, strict=True) if not c["sparse"]}
    assert len(sparse_colour) == len(dense_colour) == 1 and sparse_colour != dense_colour
    assert all(float(t).is_integer() for t in ax.get_xticks())
    _inside(fig)


def _round_row(rnd: int, gvendi: float, ood: float | None = None, task: str = "math") -> dict:
    return {"round": rnd, "task": task, "status": "done", "gvendi_after": gvendi, "ood_accuracy": ood}


def test_gvendi_by_round_figure_plots_the_rounds_on_integer_ticks():
    from prismatic.synth.rounds import RoundReport, gvendi_by_round_figure

    rows = [_round_row(0, 10.5), _round_row(1, 11.25), _round_row(2, 12.0), _round_row(1, 99.0, task="nli")]
    report = RoundReport(3, "math", gvendi_before=12.0, gvendi_after=12.75)
    fig = gvendi_by_round_figure(report, _Rounds(rows))
    ax = fig.axes[0]
    (line,) = ax.lines
    assert list(line.get_xdata()) == [0, 1, 2, 3]
    assert list(line.get_ydata()) == [10.5, 11.25, 12.0, 12.75]  # this task's rounds, then this round's value
    lo, hi = ax.get_xlim()
    visible = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert visible and all(float(t).is_integer() for t in visible)  # no 0.5 / 0.2 round ticks
    _inside(fig)


def test_gvendi_vs_ood_figure_has_a_point_per_round_and_full_labels():
    from prismatic.synth.rounds import gvendi_vs_ood_figure

    rows = [_round_row(0, 10.0, 0.4), _round_row(1, 11.0, 0.45), _round_row(2, 12.0, None)]
    fig = gvendi_vs_ood_figure(_Rounds(rows))
    ax = fig.axes[0]
    (line,) = ax.lines
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == [(10.0, 0.4), (11.0, 0.45)]
    assert [t.get_text() for t in ax.texts] == ["r0", "r1"]
    _inside(fig)


# ---- conf/databricks.yaml ---------------------------------------------------------------------------------------


def test_databricks_conf_trains_the_synthesized_task_on_benchmarks_that_load(tmp_path, monkeypatch):
    from prismatic.train.benchmarks import load_benchmark

    settings = load_config(REPO / "conf/databricks.yaml")
    assert settings.train.task == settings.synth.task
    variables = yaml.safe_load((REPO / "databricks.yml").read_text())["variables"]
    assert settings.train.student == variables["student"]["default"]  # what the Train task passes
    bundle_benchmarks = variables["benchmarks"]["default"].split(",")
    assert bundle_benchmarks == settings.train.benchmarks  # what the Eval task passes
    monkeypatch.chdir(tmp_path)  # a job's working directory is not the checkout
    splits = set()
    for spec in {*bundle_benchmarks, *settings.train.benchmarks}:
        bench = load_benchmark(spec)  # offline, with the installed packages only
        assert bench.task == settings.train.task and len(bench) > 0, spec
        splits.add(bench.split)
    assert splits == {"id", "ood"}


def test_a_user_benchmark_file_still_loads_from_the_working_directory(tmp_path, monkeypatch):
    from prismatic.train.benchmarks import load_benchmark

    write_jsonl(tmp_path / "mine.jsonl", [{"problem": "What is 1 plus 2?", "answer": "3"}])
    monkeypatch.chdir(tmp_path)
    bench = load_benchmark("mine.jsonl")
    assert (bench.name, bench.task, len(bench)) == ("mine", "math", 1)
