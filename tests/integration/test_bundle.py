"""The Databricks bundle, checked without a workspace.

databricks.yml and the resources it includes parse; every task runs a jobs/ entry point that exists and accepts
every parameter the task passes (each job's own ``build_parser()``, with ``${...}`` resolved from the variables'
defaults), and the config those parameters build validates; every ``${var.X}`` is declared; job and task keys are
unique; depends_on points at real tasks; the scoring task runs on the single-node GPU cluster. When the
``databricks-bundles`` package (Databricks' own bundle models, generated from the bundle schema) is installed, each
job and experiment is also loaded with it, which rejects unknown fields and bad enum values.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO / "jobs"
BUNDLE_FILE = REPO / "databricks.yml"

# The entry points the bundle runs: the existing ones plus those the lead announced (score, diversity, cluster,
# synthesize, train_eval, study). A misspelt python_file makes the set differ and fails loudly.
ANNOUNCED_JOBS = {"ingest", "dedup", "score", "diversity", "cluster", "synthesize", "train_eval", "study"}
PIPELINE_ORDER = ["Ingest", "Dedup", "Score", "Diversity", "Cluster", "Synthesize", "TrainEval"]
GPU_TASKS = {"Score", "Synthesize", "TrainEval", "Study"}
IDEMPOTENT_TASKS = {"Ingest", "Dedup", "Score", "Diversity", "Cluster"}
BASE_PARAMS = {
    "--config": "${workspace.file_path}/conf/databricks.yaml",
    "--catalog": "${var.catalog_name}",
    "--schema": "${var.schema_name}",
    "--experiment": "${var.experiment_name}",
    "--git-commit": "${bundle.git.commit}",
}
# substitutions the CLI provides, with stand-ins for resolving parameters here (file_path = this checkout)
BUILTINS = {
    "bundle.name": "prismatic",
    "bundle.target": "dev",
    "bundle.git.commit": "0123456789abcdef0123456789abcdef01234567",
    "workspace.file_path": str(REPO),
    "workspace.host": "https://example.cloud.databricks.com",
    "workspace.current_user.userName": "someone@example.com",
}
REF = re.compile(r"\$\{([^}]+)\}")


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name}: top level must be a mapping"
    return doc


def included_files(bundle: dict) -> list[Path]:
    files: list[Path] = []
    for pattern in bundle.get("include", []):
        matched = sorted(REPO.glob(pattern.removeprefix("./")))
        assert matched, f"include {pattern!r} matches no file"
        files += matched
    return files


@pytest.fixture(scope="module")
def bundle() -> dict:
    return _load(BUNDLE_FILE)


@pytest.fixture(scope="module")
def dev_variables(bundle) -> dict[str, dict]:
    """The variables as the dev target (the default) sees them: defaults plus the target's overrides."""
    overrides = bundle["targets"]["dev"].get("variables", {})
    return {k: {**v, "default": overrides.get(k, v["default"])} for k, v in bundle["variables"].items()}


@pytest.fixture(scope="module")
def resource_docs(bundle) -> dict[Path, dict]:
    return {f: _load(f) for f in included_files(bundle)}


@pytest.fixture(scope="module")
def jobs(resource_docs) -> dict[str, tuple[Path, dict]]:
    """Job key -> (the file that defines it, the job), over every included file; a key defined twice fails."""
    out: dict[str, tuple[Path, dict]] = {}
    for path, doc in resource_docs.items():
        for key, job in (doc.get("resources", {}).get("jobs") or {}).items():
            assert key not in out, f"job key {key!r} is defined in {out[key][0].name} and {path.name}"
            out[key] = (path, job)
    assert {"prismatic_pipeline_job", "prismatic_study_job"} <= set(out)
    return out


def all_tasks(jobs) -> list[tuple[str, Path, dict]]:
    tasks = [(key, path, task) for key, (path, job) in jobs.items() for task in job.get("tasks", [])]
    assert tasks
    return tasks


def resolve(value: str, variables: dict[str, Any], depth: int = 0) -> str:
    """Replace ${var.X} by X's default (recursively) and the CLI's own substitutions by stand-ins."""
    assert depth < 10, f"variable references nest too deep: {value}"

    def sub(m: re.Match) -> str:
        ref = m.group(1)
        if ref.startswith("var."):
            return resolve(str(variables[ref[4:]]["default"]), variables, depth + 1)
        return BUILTINS[ref]

    return REF.sub(sub, value)


def python_file(path: Path, task: dict) -> Path:
    """python_file is relative to the YAML file that defines it (how the CLI translates paths)."""
    return (path.parent / task["spark_python_task"]["python_file"]).resolve()


def pairs(params: list[str]) -> dict[str, list[str]]:
    """``--flag value`` pairs of a parameter list (every flag here takes one value)."""
    assert len(params) % 2 == 0 and all(p.startswith("--") for p in params[::2]), params
    out: dict[str, list[str]] = {}
    for flag, value in zip(params[::2], params[1::2], strict=True):
        out.setdefault(flag, []).append(value)
    return out


def import_job(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(JOBS_DIR))  # the jobs import their shared `_common` module
    spec = importlib.util.spec_from_file_location(f"prism_bundle_job_{name}", JOBS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- structure ------------------------------------------------------------------------------------------------------


def test_includes_name_every_resource_file(bundle):
    assert bundle["bundle"]["name"] == "prismatic"
    for entry in bundle["include"]:
        assert "*" not in entry, f"include should name each file (mlops-stacks layout): {entry}"
        assert (REPO / entry).is_file(), f"included file missing: {entry}"
    assert set(included_files(bundle)) == set((REPO / "resources").glob("*.yml")), "a resources/*.yml is not included"
    assert {p.name for p in included_files(bundle)} == {
        "prismatic-pipeline-workflow-resource.yml",
        "prismatic-study-workflow-resource.yml",
        "ml-artifacts-resource.yml",
    }


def test_variables_declared_described_and_used(bundle, resource_docs):
    declared = bundle["variables"]
    assert len(declared) >= 12
    for name, spec in declared.items():
        assert spec.get("description"), f"variable {name} needs a description"
        assert "default" in spec and spec["default"] not in (None, ""), f"variable {name} needs a default"
    texts = [BUNDLE_FILE.read_text()] + [p.read_text() for p in resource_docs]
    refs = {r for t in texts for r in REF.findall(t)}
    used = {r[4:] for r in refs if r.startswith("var.")}
    assert used, "no ${var.X} found"
    assert used <= set(declared), f"undeclared variables: {sorted(used - set(declared))}"
    assert set(declared) <= used, f"declared but never used: {sorted(set(declared) - used)}"
    others = {r for r in refs if not r.startswith("var.")}
    assert others <= set(BUILTINS), f"unknown substitutions: {sorted(others - set(BUILTINS))}"
    for name in (
        "catalog_name",
        "schema_name",
        "experiment_name",
        "proxy_model_path",
        "generator_endpoint",
        "generator_api_key_secret",
        "cpu_node_type",
        "gpu_node_type",
        "spark_version",
        "gpu_spark_version",
        "raw_input_path",
        "notification_email",
    ):
        assert name in declared, name
    assert re.fullmatch(r"[^/\s]+/[^/\s]+", declared["generator_api_key_secret"]["default"]), "scope/key, no value"
    assert resolve("${var.proxy_model_path}", declared).startswith("/Volumes/")
    assert "-ml-" in declared["spark_version"]["default"] and "-gpu-ml-" in declared["gpu_spark_version"]["default"]


def test_targets(bundle):
    targets = bundle["targets"]
    assert set(targets) == {"dev", "staging", "prod", "test"}
    assert targets["dev"]["mode"] == "development" and targets["dev"]["default"] is True
    assert [t for t, spec in targets.items() if spec.get("default")] == ["dev"]
    catalogs = {t: spec["variables"]["catalog_name"] for t, spec in targets.items()}
    assert len(set(catalogs.values())) == 4, f"each target needs its own catalog: {catalogs}"
    for t in ("staging", "prod"):
        assert targets[t]["mode"] == "production"
        assert targets[t]["run_as"] and targets[t]["permissions"]
        assert targets[t]["workspace"]["root_path"]  # production mode requires an explicit root_path


def test_artifact_is_the_project_wheel(bundle, jobs):
    (art,) = bundle["artifacts"].values()
    assert art["type"] == "whl" and (REPO / art["path"] / "pyproject.toml").is_file()
    assert "wheel" in art["build"] and "[spark" not in art["build"]  # the runtime brings pyspark and Delta
    for key, path, task in all_tasks(jobs):
        wheels = [lib["whl"] for lib in task.get("libraries", []) if "whl" in lib]
        assert wheels == ["../dist/*.whl"], f"{key}.{task['task_key']} must install the project wheel"
        assert (path.parent / "..").resolve() == REPO


def test_job_and_task_keys_unique_and_dependencies_real(jobs):
    for key, (_, job) in jobs.items():
        assert job["name"] == f"${{bundle.target}}-{key.replace('_job', '').replace('_', '-')}-job"
        keys = [t["task_key"] for t in job["tasks"]]
        assert keys and len(keys) == len(set(keys)), f"{key}: task keys repeat: {keys}"
        for t in job["tasks"]:
            for dep in t.get("depends_on", []):
                assert dep["task_key"] in keys, f"{key}.{t['task_key']} depends on unknown {dep['task_key']}"
                assert dep["task_key"] != t["task_key"]
        clusters = [c["job_cluster_key"] for c in job["job_clusters"]]
        assert len(clusters) == len(set(clusters))
        assert {t["job_cluster_key"] for t in job["tasks"]} <= set(clusters)
        assert job["email_notifications"]["on_failure"] == ["${var.notification_email}"]
        assert job.get("max_concurrent_runs") == 1


def test_pipeline_order_schedule_and_retries(jobs):
    _, job = jobs["prismatic_pipeline_job"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == PIPELINE_ORDER
    for before, after in zip(PIPELINE_ORDER, PIPELINE_ORDER[1:], strict=False):
        assert [d["task_key"] for d in tasks[after]["depends_on"]] == [before]
    assert "depends_on" not in tasks["Ingest"]
    sched = job["schedule"]
    assert sched["pause_status"] == "PAUSED" and len(sched["quartz_cron_expression"].split()) in (6, 7)
    for name, t in tasks.items():
        if name in IDEMPOTENT_TASKS:
            assert t["max_retries"] >= 1 and t["min_retry_interval_millis"] >= 60_000, name
        else:
            assert not t.get("max_retries"), f"{name} is not idempotent: no automatic retry"


def test_gpu_tasks_run_on_the_single_node_gpu_cluster(jobs):
    seen = set()
    for key, (_, job) in jobs.items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for t in job["tasks"]:
            spec = clusters[t["job_cluster_key"]]
            if t["task_key"] in GPU_TASKS:
                seen.add(t["task_key"])
                assert t["job_cluster_key"] == "gpu_cluster", f"{key}.{t['task_key']}"
                assert spec["spark_version"] == "${var.gpu_spark_version}"
                assert spec["node_type_id"] == "${var.gpu_node_type}"
                assert spec["num_workers"] == 0
                assert spec["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
                assert spec["custom_tags"]["ResourceClass"] == "SingleNode"
            else:
                assert t["job_cluster_key"] == "cpu_cluster", f"{key}.{t['task_key']}"
                assert spec["spark_version"] == "${var.spark_version}"
                assert spec["node_type_id"] == "${var.cpu_node_type}"
            assert spec["spark_env_vars"]["PRISM_DATA_ROOT"] == "${var.data_root}"
    assert seen == GPU_TASKS
    score = next(t for t in jobs["prismatic_pipeline_job"][1]["tasks"] if t["task_key"] == "Score")
    assert "scoring.model.device=cuda" in pairs(score["spark_python_task"]["parameters"])["--set"]


def test_experiment_resource(resource_docs):
    exps = {k: v for doc in resource_docs.values() for k, v in (doc["resources"].get("experiments") or {}).items()}
    assert list(exps) == ["prismatic_experiment"]
    exp = exps["prismatic_experiment"]
    assert exp["name"] == "${var.experiment_name}" and exp["permissions"]


# ---- entry points and their parameters ------------------------------------------------------------------------------


def test_referenced_job_files_are_the_announced_set(jobs):
    referenced = {python_file(path, t) for _, path, t in all_tasks(jobs)}
    assert referenced == {JOBS_DIR / f"{name}.py" for name in ANNOUNCED_JOBS}
    present = {p.stem for p in referenced if p.is_file()}
    assert {"ingest", "dedup"} <= present  # the ones that exist from the start


def test_every_task_passes_the_base_parameters(jobs, dev_variables):
    for key, _, t in all_tasks(jobs):
        params = pairs(t["spark_python_task"]["parameters"])
        for flag, value in BASE_PARAMS.items():
            assert params.get(flag) == [value], f"{key}.{t['task_key']}: {flag} must be {value}"
        for v in (v for values in params.values() for v in values):
            if "${workspace.file_path}/" in v:
                local = Path(resolve(v.split("=", 1)[-1], dev_variables))
                assert local.is_file(), f"{key}.{t['task_key']}: {v} names no file of the bundle"


@pytest.mark.parametrize("name", sorted(ANNOUNCED_JOBS))
def test_entry_point_accepts_the_task_parameters(name, jobs, dev_variables, monkeypatch):
    path = JOBS_DIR / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"jobs/{name}.py is not written yet")
    module = import_job(name, monkeypatch)
    assert callable(module.run) and callable(module.build_parser)
    tasks = [(key, t) for key, p, t in all_tasks(jobs) if python_file(p, t) == path]
    assert tasks, f"no task runs jobs/{name}.py"
    monkeypatch.setenv("PRISM_GIT_COMMIT", "")  # settings_from() sets it; restored afterwards
    monkeypatch.delenv("PRISM_DATA_ROOT", raising=False)
    from _common import settings_from

    for key, t in tasks:
        argv = [resolve(p, dev_variables) for p in t["spark_python_task"]["parameters"]]
        try:
            args = module.build_parser().parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"{key}.{t['task_key']}: jobs/{name}.py rejects its parameters {argv}") from e
        settings = settings_from(args)  # the config a task builds: conf/databricks.yaml + every --set, validated
        assert settings.storage.engine == "delta-spark"
        assert settings.storage.catalog == "dev" and settings.storage.schema_name == "prismatic"
        assert settings.tracking.experiment == "/Users/someone@example.com/dev-prismatic"
        if any(v.startswith("scoring.model.path=") for v in pairs(argv).get("--set", [])):
            assert settings.scoring.model.path == resolve("${var.proxy_model_path}", dev_variables)
            assert settings.scoring.model.path.startswith("/Volumes/dev/prismatic/")


def test_databricks_config_validates():
    from prismatic.config import load_config

    s = load_config(REPO / "conf" / "databricks.yaml")
    assert s.storage.engine == "delta-spark"
    assert s.scoring.model.path.startswith("/Volumes/")
    assert s.synth.generator.backend == "openai" and s.synth.generator.api_key_secret
    assert s.scoring.batch_size > 8 and s.ingest.batch_rows >= 200_000


# ---- Databricks' own bundle models --------------------------------------------------------------------------------


def test_resources_load_with_databricks_bundles(jobs, resource_docs):
    pytest.importorskip("databricks.bundles.jobs", reason="pip install databricks-bundles to check the job schema")
    from databricks.bundles.experiments import MlflowExperiment
    from databricks.bundles.jobs import Job, PauseStatus

    loaded = {key: Job.from_dict(copy.deepcopy(job)) for key, (_, job) in jobs.items()}
    assert loaded["prismatic_pipeline_job"].schedule.pause_status == PauseStatus.PAUSED
    assert [t.task_key for t in loaded["prismatic_pipeline_job"].tasks] == PIPELINE_ORDER
    exps = [e for doc in resource_docs.values() for e in (doc["resources"].get("experiments") or {}).values()]
    assert [str(MlflowExperiment.from_dict(copy.deepcopy(e)).name) for e in exps] == ["${var.experiment_name}"]
    bad = copy.deepcopy(jobs["prismatic_pipeline_job"][1])
    bad["tasks"][0]["max_retrys"] = 1
    with pytest.raises(ValueError, match="max_retrys"):  # the models do reject what the CLI would reject
        Job.from_dict(bad)
