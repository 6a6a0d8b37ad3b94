"""The bundle's jobs run locally (prismatic.bundle_local, `prism bundle run-local`, `make bundle-run`).

Fast checks of the plan (resolution, order, overrides, path mapping) run by default; the end-to-end run of every task
of both jobs is marked ``bundle`` (deselected by default, `pytest --bundle`; CI runs `make bundle-run`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from prismatic.bundle_local import CPU_SETTINGS, LOCAL_SETTINGS, RAW_ROWS, SMALL, load_bundle, plan, topological
from prismatic.errors import PrismError

REPO = Path(__file__).resolve().parents[2]

# what the local run may change besides paths: the engine and sizes, never a key that decides what a task does
ENGINE_KEYS = {
    "storage.engine",
    "spark.master",
    "spark.driver_memory",
    "diversity.embedding_model",
    "synth.generator.backend",
    "synth.generator.threads",
}


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_plan_covers_every_task_of_both_jobs_in_dependency_order(tmp_path):
    _, jobs = load_bundle(REPO)
    tasks = plan(REPO, local_root=tmp_path)
    assert {(t.job, t.key) for t in tasks} == {
        (j, t["task_key"]) for j, (_, job) in jobs.items() for t in job["tasks"]
    }
    seen: set[tuple[str, str]] = set()
    for t in tasks:
        assert all((t.job, d) in seen for d in t.depends_on), f"{t.key} before {t.depends_on}"
        assert t.python_file == REPO / "jobs" / f"{t.key.lower()}.py"
        seen.add((t.job, t.key))
        assert not any("${" in a or "{{" in a for a in t.argv), f"{t.key}: unresolved {t.argv}"
        assert not any(a.startswith(("/Volumes/", "/Workspace/")) or "=/Volumes/" in a for a in t.argv)
        assert _flag(t.argv, "--config") == str(REPO / "conf" / "databricks.yaml")  # the shipped config
        assert (_flag(t.argv, "--catalog"), _flag(t.argv, "--schema")) == ("dev", "prismatic")  # the dev target
        assert f"data_root={tmp_path}/Volumes/dev/prismatic/prismatic/lakehouse" in _sets(t.argv)
        assert (
            _flag(t.argv, "--git-commit")
            == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        )
    ingest = next(t for t in tasks if t.key == "Ingest")
    assert _flag(ingest.argv, "--paths") == f"{tmp_path}/Volumes/dev/prismatic/prismatic/raw/*.jsonl"
    synth = next(t for t in tasks if t.key == "Synthesize")
    assert not [s for s in _sets(synth.argv) if s.startswith("synth.generator.base_url=")]
    assert "synth.generator.model=builtin:smollm2" in _sets(synth.argv)


def test_local_overrides_are_engine_and_sizes_only(tmp_path):
    """Besides paths, the local run sets only engine keys and sizes: every other key keeps the shipped value."""
    assert {s.split("=")[0] for s in LOCAL_SETTINGS} == ENGINE_KEYS
    assert {s.split("=")[0] for s in CPU_SETTINGS} == {"scoring.model.dtype", "train.model.dtype"}
    sizes = {s.split("=")[0] for s in SMALL}
    assert all(k.rsplit(".", 1)[-1] in SIZE_WORDS for k in sizes), sorted(sizes)
    shipped = yaml.safe_load((REPO / "conf" / "databricks.yaml").read_text())
    assert shipped["storage"]["engine"] == "delta-spark"  # the one thing the engine override replaces
    train = next(t for t in plan(REPO, local_root=tmp_path) if t.key == "Train")
    assert (
        _flag(train.argv, "--student")
        == yaml.safe_load((REPO / "databricks.yml").read_text())["variables"]["student"]["default"]
    )


SIZE_WORDS = {
    "shuffle_partitions",
    "buckets",
    "batch_size",
    "max_tokens",
    "calls_per_round",
    "max_new_tokens",
    "concurrency",
    "max_steps",
    "eval_limit",
    "subset_size",
    "clusters",
    "id_size",
    "ood_size",
    "bootstrap",
}


def test_variables_and_job_parameters_override_like_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("BUNDLE_VAR_raw_source", "from_env")
    tasks = plan(
        REPO,
        local_root=tmp_path,
        jobs=["prismatic_pipeline_job"],
        variables={"catalog_name": "mine"},
        params={"rounds": "2", "student": "probe"},
    )
    by_key = {t.key: t for t in tasks}
    assert _flag(by_key["Ingest"].argv, "--catalog") == "mine"
    assert _flag(by_key["Ingest"].argv, "--source") == "from_env"
    assert _flag(by_key["Ingest"].argv, "--paths").startswith(f"{tmp_path}/Volumes/mine/")
    assert _flag(by_key["Synthesize"].argv, "--rounds") == "2"
    assert _flag(by_key["Train"].argv, "--student") == "probe"
    staging = plan(REPO, local_root=tmp_path, target="staging", jobs=["prismatic_study_job"])
    assert _flag(staging[0].argv, "--catalog") == "staging"
    with pytest.raises(PrismError, match="no such bundle variable"):
        plan(REPO, local_root=tmp_path, variables={"nope": "1"})
    with pytest.raises(PrismError, match="no job"):
        plan(REPO, local_root=tmp_path, jobs=["nope"])
    with pytest.raises(PrismError, match="no target"):
        plan(REPO, local_root=tmp_path, target="nope")


def test_topological_order_and_cycles():
    tasks = [
        {"task_key": "C", "depends_on": [{"task_key": "B"}]},
        {"task_key": "A"},
        {"task_key": "B", "depends_on": [{"task_key": "A"}]},
        {"task_key": "D", "depends_on": [{"task_key": "A"}, {"task_key": "C"}]},
    ]
    assert [t["task_key"] for t in topological(tasks, "j")] == ["A", "B", "C", "D"]
    with pytest.raises(PrismError, match="cycle"):
        topological(
            [
                {"task_key": "A", "depends_on": [{"task_key": "B"}]},
                {"task_key": "B", "depends_on": [{"task_key": "A"}]},
            ],
            "j",
        )
    with pytest.raises(PrismError, match="unknown task"):
        topological([{"task_key": "A", "depends_on": [{"task_key": "Z"}]}], "j")


@pytest.mark.bundle
def test_both_jobs_run_locally_end_to_end(tmp_path):
    """Every task of the pipeline and study jobs through its entry point, then the tables and MLflow runs it left."""
    import deltalake
    import mlflow

    from prismatic.bundle_local import run_local

    lines: list[str] = []
    results = run_local(REPO, local_root=tmp_path, echo=lines.append)
    failed = [r for r in results if not r.ok]
    assert not failed, f"{failed[0].job}.{failed[0].key} failed:\n{failed[0].stderr_tail}"
    _, jobs = load_bundle(REPO)
    assert [(r.job, r.key) for r in results] == [(t.job, t.key) for t in plan(REPO, local_root=tmp_path)]
    assert len(results) == sum(len(job["tasks"]) for _, job in jobs.values())
    root = tmp_path / "Volumes" / "dev" / "prismatic" / "prismatic"
    assert (root / "models" / "SmolLM2-135M-Instruct" / "prismatic_proxy.json").is_file()  # the exported proxy
    tables = root / "lakehouse" / "tables"
    samples = deltalake.DeltaTable(next(tables.rglob("samples"))).to_pyarrow_table()
    assert samples.num_rows >= RAW_ROWS  # the raw input, plus what Synthesize added
    for name in ("gradients", "diversity", "clusters", "eval_results", "study"):
        found = [p for p in tables.rglob(name) if (p / "_delta_log").is_dir()]
        assert found and deltalake.DeltaTable(found[0]).to_pyarrow_table().num_rows > 0, name
    mlflow.set_tracking_uri(f"sqlite:///{root / 'lakehouse' / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    branch = subprocess.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert runs and all(r.data.tags.get("git_commit") == head for r in runs)
    assert all(r.data.tags.get("git_branch") == branch and r.data.tags.get("git_url") for r in runs)


def test_raw_input_is_filled_only_when_empty(tmp_path):
    """The mapped raw/ folder gets the shipped math seed (the README's upload step) unless it already holds files."""
    from prismatic.bundle_local import RAW_ROWS, SHIPPED_RAW, prepare_volume_files

    raw = tmp_path / "Volumes" / "dev" / "prismatic" / "prismatic" / "raw"
    prepare_volume_files(["--paths", f"{raw}/*.jsonl"], tmp_path, REPO)
    assert [p.name for p in raw.iterdir()] == [Path(SHIPPED_RAW).name]
    seed = (REPO / SHIPPED_RAW).read_text().splitlines()
    assert (raw / Path(SHIPPED_RAW).name).read_text().splitlines() == seed[:RAW_ROWS] and len(seed) > RAW_ROWS
    (raw / Path(SHIPPED_RAW).name).unlink()
    (raw / "mine.jsonl").write_text('{"text": "x"}\n')
    prepare_volume_files(["--paths", f"{raw}/*.jsonl"], tmp_path, REPO)
    assert [p.name for p in raw.iterdir()] == ["mine.jsonl"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    prepare_volume_files(["--paths", f"{outside}/*.jsonl"], tmp_path, REPO)  # not under the local root: untouched
    assert not outside.exists()
