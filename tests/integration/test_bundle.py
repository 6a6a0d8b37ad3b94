"""The Databricks bundle, checked without a workspace.

databricks.yml and the resources it includes parse; every task runs the jobs/<stage>.py entry point of a
registered stage (prismatic.stages.registry) and that stage's generated parser accepts every parameter the task
passes (with ``${...}`` resolved from the variables' defaults), and the config those parameters build validates; a
task never depends on a later stage of the registry and runs after every earlier stage whose tables it reads; every
registered stage has a `prism` command; every ``${var.X}`` is declared; job and task keys are unique; depends_on
points at real tasks; the scoring task runs on the single-node GPU cluster and no CPU cluster spans it; every job
parameter is declared once and used, every ``{{job.parameters.x}}`` is declared; the schema, volume and registered
model are those the config and the stages use. When the ``databricks-bundles`` package (Databricks' own bundle
models, generated from the bundle schema) is installed, each resource is also loaded with it, which rejects unknown
fields and bad enum values, and resources/compute.py (the serverless / classic and per-cloud variants) is applied.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prismatic.stages.registry import STAGES, get_stage

REPO = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO / "jobs"
BUNDLE_FILE = REPO / "databricks.yml"

# The pipeline job's tasks: the registry's stages minus `embed` (the pipeline clusters gradients) and `study` (its own
# job); GPU_TASKS need the GPU cluster. The order itself is checked against the registry below.
PIPELINE_TASKS = {"Ingest", "Dedup", "Score", "Diversity", "Cluster", "Synthesize", "Train", "Eval"}
GPU_TASKS = {"Score", "Synthesize", "Train", "Eval", "Study"}
IDEMPOTENT_TASKS = {"Ingest", "Dedup", "Score", "Diversity", "Cluster"}
BASE_PARAMS = {
    "--config": "${workspace.file_path}/conf/databricks.yaml",
    "--catalog": "${var.catalog_name}",
    "--schema": "${resources.schemas.prismatic_schema.name}",
    "--experiment": "${var.experiment_name}",
    "--git-commit": "${bundle.git.commit}",
    "--git-branch": "${bundle.git.branch}",
    "--git-url": "${bundle.git.origin_url}",
}
CPU_CLUSTERS = {"cpu_pre_cluster", "cpu_post_cluster"}
# substitutions the CLI provides, with stand-ins for resolving parameters here (file_path = this checkout)
BUILTINS = {
    "bundle.name": "prismatic",
    "bundle.target": "dev",
    "bundle.git.commit": "0123456789abcdef0123456789abcdef01234567",
    "bundle.git.branch": "main",
    "bundle.git.origin_url": "https://github.com/example/prismatic.git",
    "workspace.file_path": str(REPO),
    "workspace.host": "https://example.cloud.databricks.com",
    "workspace.current_user.userName": "someone@example.com",
}
REF = re.compile(r"\$\{([^}]+)\}")
JOB_PARAM = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z0-9_]+)\s*\}\}")


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


def resource_specs() -> dict[str, dict[str, dict]]:
    """Every resource of the included files: type -> key -> spec."""
    out: dict[str, dict[str, dict]] = {}
    for f in included_files(_load(BUNDLE_FILE)):
        for kind, specs in (_load(f).get("resources") or {}).items():
            out.setdefault(kind, {}).update(specs)
    return out


def resolve(value: str, variables: dict[str, Any], depth: int = 0, params: dict[str, str] | None = None) -> str:
    """Replace ${var.X} by X's default (recursively), ${resources.T.K.F} by that resource's field, the CLI's own
    substitutions by stand-ins and {{job.parameters.x}} by ``params[x]``."""
    assert depth < 10, f"variable references nest too deep: {value}"

    def sub(m: re.Match) -> str:
        ref = m.group(1)
        if ref.startswith("var."):
            return resolve(str(variables[ref[4:]]["default"]), variables, depth + 1)
        if ref.startswith("resources."):
            _, kind, key, name = ref.split(".")
            return resolve(str(resource_specs()[kind][key][name]), variables, depth + 1)
        return BUILTINS[ref]

    value = REF.sub(sub, value)
    return JOB_PARAM.sub(lambda m: (params or {})[m.group(1)], value)


def job_params(job: dict, variables: dict[str, Any]) -> dict[str, str]:
    """A job's parameters with their defaults resolved."""
    return {p["name"]: resolve(str(p["default"]), variables) for p in job.get("parameters", [])}


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


def task_stage(path: Path, task: dict) -> str:
    """The registered stage a task runs: the stem of its python_file (jobs/<stage>.py)."""
    return python_file(path, task).stem


def registry_index(stage: str) -> int:
    return [s.name for s in STAGES].index(stage)


def ancestors(tasks: dict[str, dict], key: str) -> set[str]:
    """Every task that ``key`` waits for, directly or through others."""
    seen: set[str] = set()
    todo = [d["task_key"] for d in tasks[key].get("depends_on", [])]
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo += [d["task_key"] for d in tasks[k].get("depends_on", [])]
    return seen


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
    mutated = set(re.findall(r'_var\(bundle, "(\w+)"\)', (REPO / "resources" / "compute.py").read_text()))
    assert mutated == {"cloud", "cpu_compute"}  # read by the python mutator, not by ${...}
    used |= mutated
    assert used <= set(declared), f"undeclared variables: {sorted(used - set(declared))}"
    assert set(declared) <= used, f"declared but never used: {sorted(set(declared) - used)}"
    specs = resource_specs()
    for r in (r for r in refs if r.startswith("resources.")):
        _, kind, key, name = r.split(".")
        assert name in specs.get(kind, {}).get(key, {}), f"${{{r}}} names no field of a bundle resource"
    others = {r for r in refs if not r.startswith(("var.", "resources."))}
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
    path, job = jobs["prismatic_pipeline_job"]
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert set(tasks) == PIPELINE_TASKS
    order = sorted(tasks, key=lambda k: registry_index(task_stage(path, tasks[k])))
    assert list(tasks) == order, "the pipeline's tasks are listed in the registry's order"
    for before, after in zip(order, order[1:], strict=False):  # a chain: one stage at a time, as `prism run`
        assert [d["task_key"] for d in tasks[after]["depends_on"]] == [before]
    assert "depends_on" not in tasks[order[0]]
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
                assert t["job_cluster_key"] in CPU_CLUSTERS, f"{key}.{t['task_key']}"
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


def test_every_task_runs_a_registered_stage_named_by_its_key(jobs):
    names = {s.name for s in STAGES}
    for key, path, t in all_tasks(jobs):
        stage = task_stage(path, t)
        assert python_file(path, t) == JOBS_DIR / f"{stage}.py" and stage in names, f"{key}.{t['task_key']}"
        assert python_file(path, t).is_file(), f"{key}.{t['task_key']}: jobs/{stage}.py is missing"
        assert t["task_key"] == stage.capitalize(), f"{key}.{t['task_key']} runs stage {stage}"
    files = {p.stem for p in JOBS_DIR.glob("*.py") if not p.stem.startswith("_")}
    assert files and files <= names, f"jobs/ files that are no registered stage: {sorted(files - names)}"
    assert files == {task_stage(p, t) for _, p, t in all_tasks(jobs)}, "a jobs/ file that no task runs"


def test_no_task_runs_before_a_stage_it_needs(jobs):
    """depends_on only points back in the registry, and a task waits for every earlier task of its job whose stage
    writes a table that its own stage reads (Score after Dedup: the pool is samples minus duplicates)."""
    checked = 0
    for key, (path, job) in jobs.items():
        tasks = {t["task_key"]: t for t in job["tasks"]}
        stage_of = {k: get_stage(task_stage(path, t)) for k, t in tasks.items()}
        for k, t in tasks.items():
            for dep in t.get("depends_on", []):
                d = dep["task_key"]
                assert registry_index(stage_of[d].name) < registry_index(stage_of[k].name), f"{key}: {k} after {d}"
            before = ancestors(tasks, k)
            for other, stage in stage_of.items():
                earlier = registry_index(stage.name) < registry_index(stage_of[k].name)
                if earlier and set(stage.writes) & set(stage_of[k].reads):
                    assert other in before, f"{key}: {k} reads what {other} writes but does not wait for it"
                    checked += 1
    assert checked >= 5  # e.g. Dedup -> Score, Score -> Diversity, Cluster -> Synthesize


def test_every_registered_stage_has_a_cli_command():
    from prismatic.cli import command

    commands = command().commands
    for stage in STAGES:
        assert stage.name in commands, f"no `prism {stage.name}`"
        flags = {opt for p in commands[stage.name].params for opt in p.opts}
        assert {o.flag for o in stage.options if not o.argument} | {"--format"} <= flags, stage.name


def test_every_task_passes_the_base_parameters(jobs, dev_variables):
    for key, _, t in all_tasks(jobs):
        params = pairs(t["spark_python_task"]["parameters"])
        for flag, value in BASE_PARAMS.items():
            assert params.get(flag) == [value], f"{key}.{t['task_key']}: {flag} must be {value}"
        # serverless compute has no cluster environment: the data root is a parameter (and PRISM_DATA_ROOT)
        assert "data_root=${var.data_root}" in params["--set"], f"{key}.{t['task_key']}"
        for v in (v for values in params.values() for v in values):
            if "${workspace.file_path}/" in v:
                local = Path(resolve(v.split("=", 1)[-1], dev_variables))
                assert local.is_file(), f"{key}.{t['task_key']}: {v} names no file of the bundle"


@pytest.mark.parametrize("name", sorted({s.name for s in STAGES} - {"embed"}))
def test_entry_point_accepts_the_task_parameters(name, jobs, dev_variables, monkeypatch):
    path = JOBS_DIR / f"{name}.py"
    source = path.read_text()
    assert f'run_stage("{name}")' in source, f"jobs/{name}.py must run its stage through _common.run_stage"
    monkeypatch.syspath_prepend(str(JOBS_DIR))
    monkeypatch.setenv("PRISM_GIT_COMMIT", "")  # settings_from() sets it; restored afterwards
    monkeypatch.delenv("PRISM_DATA_ROOT", raising=False)
    from _common import BASE_DESTS, build_parser, settings_from

    stage = get_stage(name)
    parser = build_parser(stage)
    banner = source.split('"""')[1]
    for o in stage.options:  # the job's parameter banner names every option of the stage
        assert o.flag in banner, f"jobs/{name}.py: its docstring does not list {o.flag}"
    tasks = [(key, t) for key, p, t in all_tasks(jobs) if python_file(p, t) == path]
    assert tasks, f"no task runs jobs/{name}.py"
    for key, t in tasks:
        params = job_params(jobs[key][1], dev_variables)
        argv = [resolve(p, dev_variables, params=params) for p in t["spark_python_task"]["parameters"]]
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"{key}.{t['task_key']}: jobs/{name}.py rejects its parameters {argv}") from e
        options = {k: v for k, v in vars(args).items() if k not in BASE_DESTS}
        assert set(options) == {o.name for o in stage.options}  # what run_stage passes: the stage's options
        settings = settings_from(args)  # the config a task builds: conf/databricks.yaml + every --set, validated
        assert settings.storage.engine == "delta-spark"
        assert settings.storage.catalog == "dev" and settings.storage.schema_name == "prismatic"
        assert settings.tracking.experiment == "/Users/someone@example.com/dev-prismatic"
        assert settings.data_root == "/Volumes/dev/prismatic/prismatic/lakehouse"
        if name == "study":  # the study draws from the pool the pipeline grows, with a student for that task
            assert settings.study.task == settings.synth.task == resolve("${var.raw_task}", dev_variables)
            assert (args.student or settings.study.student) != "probe" or settings.study.task == "nli"
        # the model folders a stage opens are in the target's volume: no placeholder of conf/databricks.yaml
        # (/Volumes/main/...) is left for it (the lm student of Train and Study starts from train.model.path)
        opened = {"train": ["train"], "study": ["train"]}.get(name, []) + ["scoring"] * (
            name not in ("ingest", "dedup")
        )
        for section in opened:
            path = getattr(settings, section).model.path
            assert path.startswith("/Volumes/dev/prismatic/prismatic/models/"), f"{key}.{t['task_key']}: {path}"
        if any(v.startswith("scoring.model.path=") for v in pairs(argv).get("--set", [])):
            assert settings.scoring.model.path == resolve("${var.proxy_model_path}", dev_variables)
            assert settings.scoring.model.path.startswith("/Volumes/dev/prismatic/")


def test_job_parser_reads_options_as_the_cli_does(monkeypatch):
    """Flags, negatable flags, repeatable options (or comma lists), positional paths as --paths, min, choices."""
    monkeypatch.syspath_prepend(str(JOBS_DIR))
    from _common import build_parser

    div = build_parser(get_stage("diversity"))
    assert vars(div.parse_args([])) | {"exact": False, "baselines": True} == vars(div.parse_args([]))
    args = div.parse_args(["--exact", "--no-baselines", "--group-by", "source"])
    assert (args.exact, args.baselines, args.group_by) == (True, False, "source")
    ev = build_parser(get_stage("eval")).parse_args(["--benchmark", "a,b", "--benchmark", "c"])
    assert ev.benchmark == ["a", "b", "c"]
    ing = build_parser(get_stage("ingest"))
    args = ing.parse_args(["--paths", "x,y.jsonl", "--paths", "z.jsonl", "--source", "s", "--limit", "3"])
    assert (args.paths, args.source, args.task, args.limit) == (["x,y.jsonl", "z.jsonl"], "s", "generic", 3)
    for bad in (["--paths", "x", "--source", "s", "--limit", "0"], ["--paths", "x"], ["--source", "s"]):
        with pytest.raises(SystemExit):
            ing.parse_args(bad)
    with pytest.raises(SystemExit):
        build_parser(get_stage("train")).parse_args(["--student", "bogus"])


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
    assert [t.task_key for t in loaded["prismatic_pipeline_job"].tasks] == [
        t["task_key"] for t in jobs["prismatic_pipeline_job"][1]["tasks"]
    ]
    exps = [e for doc in resource_docs.values() for e in (doc["resources"].get("experiments") or {}).values()]
    assert [str(MlflowExperiment.from_dict(copy.deepcopy(e)).name) for e in exps] == ["${var.experiment_name}"]
    bad = copy.deepcopy(jobs["prismatic_pipeline_job"][1])
    bad["tasks"][0]["max_retrys"] = 1
    with pytest.raises(ValueError, match="max_retrys"):  # the models do reject what the CLI would reject
        Job.from_dict(bad)


# ---- job parameters, compute split, workspace resources -----------------------------------------------------------


def test_job_parameters_declared_and_used(jobs, dev_variables):
    """What users change per run is a job parameter: declared once, defaulting to a bundle variable, and read by a
    task as {{job.parameters.x}}; no task names an undeclared one."""
    expected = {
        "prismatic_pipeline_job": {
            "input_path",
            "rounds",
            "target_pool_size",
            "token_budget",
            "student",
            "benchmarks",
        },
        "prismatic_study_job": {"subsets", "student"},
    }
    for key, (_, job) in jobs.items():
        names = [p["name"] for p in job.get("parameters", [])]
        assert len(names) == len(set(names)), f"{key}: a parameter is declared twice"
        assert set(names) == expected[key], key
        for p in job["parameters"]:
            assert re.fullmatch(r"\$\{var\.\w+\}", str(p["default"])), f"{key}.{p['name']}: default is a variable"
        used = {m for t in job["tasks"] for a in t["spark_python_task"]["parameters"] for m in JOB_PARAM.findall(a)}
        assert used == set(names), f"{key}: declared {sorted(names)}, used {sorted(used)}"
    params = job_params(jobs["prismatic_pipeline_job"][1], dev_variables)
    assert params["input_path"] == "/Volumes/dev/prismatic/prismatic/raw/*.jsonl"
    assert params["rounds"] == str(dev_variables["synth_rounds"]["default"])


def test_no_cpu_cluster_idles_through_gpu_work(jobs):
    """A job cluster lives from its first task to its last: no GPU task runs between the first and the last task of
    a classic CPU cluster (the tasks are a chain in file order), so none is held while the GPU cluster works."""
    for key, (_, job) in jobs.items():
        clusters = [t["job_cluster_key"] for t in job["tasks"]]
        for cluster in CPU_CLUSTERS & set(clusters):
            idx = [i for i, c in enumerate(clusters) if c == cluster]
            between = clusters[min(idx) : max(idx) + 1]
            assert "gpu_cluster" not in between, f"{key}: {cluster} is held through GPU tasks: {between}"
    tasks = {t["task_key"]: t["job_cluster_key"] for t in jobs["prismatic_pipeline_job"][1]["tasks"]}
    assert tasks["Ingest"] == tasks["Dedup"] == "cpu_pre_cluster"
    assert tasks["Diversity"] == tasks["Cluster"] == "cpu_post_cluster"


def test_workspace_resources_match_the_config(bundle, dev_variables):
    """The schema, volume and registered model the bundle creates are the ones conf/databricks.yaml and the stages
    use; the volume paths of the variables live in that volume."""
    from prismatic.config import Settings, load_config

    specs = resource_specs()
    (schema,) = specs["schemas"].values()
    (volume,) = specs["volumes"].values()
    (model,) = specs["registered_models"].values()
    conf = load_config(REPO / "conf" / "databricks.yaml")
    assert resolve(schema["name"], dev_variables) == conf.storage.schema_name
    assert resolve(bundle["variables"]["catalog_name"]["default"], {}) == conf.storage.catalog
    for spec in (schema, volume, model):
        assert spec["catalog_name"] == "${var.catalog_name}"
    for spec in (volume, model):
        assert spec["schema_name"] == "${resources.schemas.prismatic_schema.name}"  # created after the schema
    assert model["name"] == Settings().train.registered_model == "prismatic_student"
    assert model["grants"] and schema["grants"] and volume["volume_type"] == "MANAGED"
    base = "/Volumes/dev/prismatic/" + resolve(volume["name"], dev_variables)
    for var, sub in (("data_root", "lakehouse"), ("proxy_model_path", "models/"), ("raw_input_path", "raw/")):
        assert resolve(f"${{var.{var}}}", dev_variables).startswith(f"{base}/{sub}"), var
    # the config's placeholders name the same places (main catalog = the variable defaults without a target)
    assert conf.data_root == "/Volumes/main/prismatic/prismatic/lakehouse"
    assert conf.scoring.model.path.startswith("/Volumes/main/prismatic/prismatic/models/")


def _mutated(jobs, **variables: str) -> dict:
    """Every job after resources/compute.py, as the CLI applies it (python.mutators), with these variable values."""
    from databricks.bundles.core import Bundle
    from databricks.bundles.jobs import Job

    sys.path.insert(0, str(REPO))
    try:
        from resources.compute import compute
    finally:
        sys.path.remove(str(REPO))
    values = {"cloud": "aws", "cpu_compute": "serverless", "cpu_node_type": "auto", "gpu_node_type": "auto"}
    bundle = Bundle(target="dev", variables=values | variables)
    return {key: compute.function(bundle, Job.from_dict(copy.deepcopy(job))) for key, (_, job) in jobs.items()}


def test_compute_variants_with_databricks_bundles(bundle, jobs):
    """resources/compute.py: serverless moves every CPU task to an environment that installs the wheel and drops the
    CPU clusters; classic keeps them; node types `auto` follow var.cloud; every variant loads back as a valid job."""
    pytest.importorskip("databricks.bundles.jobs", reason="pip install databricks-bundles")
    from databricks.bundles.jobs import Job

    assert bundle["python"]["mutators"] == ["resources.compute:compute"]
    assert {bundle["variables"][v]["default"] for v in ("cpu_node_type", "gpu_node_type")} == {"auto"}
    assert bundle["variables"]["cpu_compute"]["default"] == "serverless"
    for mode in ("serverless", "classic"):
        for cloud, nodes in (
            ("aws", ("i3.xlarge", "g5.xlarge")),
            ("azure", ("Standard_D4ds_v5", "Standard_NV36ads_A10_v5")),
            ("gcp", ("n2-highmem-4", "g2-standard-8")),
        ):
            for key, job in _mutated(jobs, cpu_compute=mode, cloud=cloud).items():
                d = job.as_dict()
                Job.from_dict(copy.deepcopy(d))  # still a valid job
                clusters = {c["job_cluster_key"]: c["new_cluster"] for c in d.get("job_clusters", [])}
                envs = {e["environment_key"]: e["spec"] for e in d.get("environments", [])}
                for t in d["tasks"]:
                    assert ("job_cluster_key" in t) != ("environment_key" in t), f"{key}.{t['task_key']}: one compute"
                    if t["task_key"] in GPU_TASKS:
                        assert t["job_cluster_key"] == "gpu_cluster"
                    elif mode == "serverless":
                        assert t["environment_key"] in envs and "libraries" not in t
                        assert envs[t["environment_key"]]["dependencies"] == ["../dist/*.whl"]
                    else:
                        assert t["job_cluster_key"] in CPU_CLUSTERS
                used = {t.get("job_cluster_key") for t in d["tasks"]} - {None}
                assert used == set(clusters), f"{key}: clusters {sorted(clusters)}, used {sorted(used)}"
                for name, spec in clusters.items():
                    assert spec["node_type_id"] == nodes[name == "gpu_cluster"], (mode, cloud, name)
    explicit = _mutated(jobs, cpu_compute="classic", cpu_node_type="m5.2xlarge")["prismatic_pipeline_job"].as_dict()
    assert {c["new_cluster"]["node_type_id"] for c in explicit["job_clusters"]} == {"m5.2xlarge", "g5.xlarge"}
    with pytest.raises(ValueError, match="cpu_compute"):
        _mutated(jobs, cpu_compute="gpu")


def test_workspace_resources_load_with_databricks_bundles(resource_docs):
    pytest.importorskip("databricks.bundles.schemas", reason="pip install databricks-bundles")
    from databricks.bundles.registered_models import RegisteredModel
    from databricks.bundles.schemas import Schema
    from databricks.bundles.volumes import Volume

    specs = resource_specs()
    for kind, model in (("schemas", Schema), ("volumes", Volume), ("registered_models", RegisteredModel)):
        (spec,) = specs[kind].values()
        loaded = model.from_dict(copy.deepcopy(spec))
        assert loaded.grants, kind
        with pytest.raises(ValueError, match="bogus"):
            model.from_dict({**copy.deepcopy(spec), "bogus": 1})
