"""Run the Databricks bundle's jobs on this machine: every task of every job, through its own entry point.

``prism bundle run-local`` (``make bundle-run``) reads databricks.yml and the resources it includes, resolves
``${var.*}`` (defaults, the target's overrides, ``BUNDLE_VAR_<name>``, ``--var``), ``${bundle.*}`` and
``${workspace.*}`` the way the databricks CLI does, then ``{{job.parameters.*}}`` from each job's parameters
(``--param`` overrides them, as ``databricks bundle run --params`` does). Each job's tasks run in ``depends_on``
order, each as ``python jobs/<stage>.py <its resolved parameters>`` in a subprocess, so a parameter the entry point
rejects, or a shipped default that cannot work, fails here as it would on a cluster.

What differs from a workspace, and nothing else (:data:`LOCAL_SETTINGS`, :func:`map_set`):

* paths: ``/Volumes/<catalog>/<schema>/<volume>/...`` and ``/Workspace/...`` live under a local root;
  ``${workspace.file_path}`` (where the bundle's files are synced) is this checkout. The volume is filled the way
  the README's deploy steps fill it: the shipped proxy exported into ``models/`` (``prism assets export-proxy``)
  and the shipped math seed copied into ``raw/``.
* engine: delta-rs tables under the data root, a local Spark session, MLflow under the data root;
  the serving endpoint is the local generator (``builtin:smollm2``), the embedding model the shipped MiniLM;
  ``device: cuda`` becomes ``auto`` and, without CUDA, the models' bfloat16 float32.
* sizes: :data:`SMALL` (one generation call, a few optimizer steps, small evaluation and study samples) and the
  first :data:`RAW_ROWS` rows of the seed as the raw input, so that both jobs run in minutes on two CPU cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prismatic.config import REPO_ROOT
from prismatic.errors import PrismError

VAR_REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
JOB_PARAM_REF = re.compile(r"\{\{\s*job\.parameters\.([A-Za-z0-9_.-]+)\s*\}\}")
DYNAMIC_REF = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")

# The engine of the embedded default in place of the workspace's (same keys as conf/databricks.yaml).
LOCAL_SETTINGS: tuple[str, ...] = (
    "storage.engine=delta-rs",
    "spark.master=local[2]",
    "spark.driver_memory=2g",
    "diversity.embedding_model=builtin:minilm",  # the hub id of conf/databricks.yaml, shipped
    "synth.generator.backend=local",  # the serving endpoint -> the local generator
    "synth.generator.threads=2",
)
# On a machine without CUDA: float32 weights (bfloat16 of conf/databricks.yaml has no fast CPU kernels here).
CPU_SETTINGS: tuple[str, ...] = ("scoring.model.dtype=float32", "train.model.dtype=float32")
# Sizes: what makes both jobs run in minutes here; every other key keeps the shipped conf/databricks.yaml value.
SMALL: tuple[str, ...] = (
    "spark.shuffle_partitions=4",
    "ingest.buckets=8",
    "scoring.batch_size=8",
    "scoring.max_tokens=128",
    "synth.calls_per_round=1",
    "synth.generator.max_new_tokens=192",
    "synth.generator.concurrency=1",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.max_tokens=256",
    "train.eval_limit=8",
    "train.max_new_tokens=16",
    "study.subset_size=16",
    "study.clusters=4",
    "study.id_size=32",
    "study.ood_size=32",
    "study.bootstrap=50",
)
# Job parameters (what a user changes per run) at small sizes; a parameter a job does not declare is ignored.
SMALL_PARAMS: dict[str, str] = {"rounds": "1", "target_pool_size": "100000", "subsets": "3", "study_subsets": "3"}
LOCAL_GENERATOR = "builtin:smollm2"
SHIPPED_RAW = "data/seed/math_seed.jsonl"
RAW_ROWS = 64  # the local raw/ gets the seed's first rows: enough for every stage (k-means, the study's subsets)


@dataclass
class Task:
    job: str
    key: str
    python_file: Path
    argv: list[str]
    env: dict[str, str]
    depends_on: list[str] = field(default_factory=list)


@dataclass
class TaskResult:
    job: str
    key: str
    ok: bool
    seconds: float
    stderr_tail: str = ""


# ---- loading and resolving the bundle -------------------------------------------------------------------------------


def load_bundle(repo: Path = REPO_ROOT) -> tuple[dict, dict[str, tuple[Path, dict]]]:
    """databricks.yml and its resources: (the bundle document, job key -> (file that defines it, job)); every
    resource of the included files is also under the bundle document's ``resources`` (type -> key -> spec)."""
    path = repo / "databricks.yml"
    if not path.is_file():
        raise PrismError(f"no databricks.yml in {repo}", hint="run from the project's checkout")
    bundle = yaml.safe_load(path.read_text())
    jobs: dict[str, tuple[Path, dict]] = {}
    resources: dict[str, dict] = bundle.setdefault("resources", {}) or {}
    for pattern in bundle.get("include", []):
        for f in sorted(repo.glob(pattern.removeprefix("./"))):
            doc = yaml.safe_load(f.read_text()) or {}
            for kind, specs in (doc.get("resources") or {}).items():
                resources.setdefault(kind, {}).update(specs or {})
            for key, job in ((doc.get("resources") or {}).get("jobs") or {}).items():
                jobs[key] = (f, job)
    bundle["resources"] = resources
    return bundle, jobs


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def builtins(repo: Path, target: str, local_root: Path, bundle: dict) -> dict[str, str]:
    """The CLI's own substitutions, as they are on this machine (the checkout stands in for the synced files), and
    ``resources.<type>.<key>.<field>`` for the plain fields of the bundle's resources (e.g. a schema's name)."""
    user = os.environ.get("USER") or "local-user"
    user_name = f"{user}@localhost"
    root = local_root / "Workspace" / "Users" / user_name / ".bundle" / bundle["bundle"]["name"] / target
    refs = {
        f"resources.{kind}.{key}.{name}": value
        for kind, specs in (bundle.get("resources") or {}).items()
        for key, spec in specs.items()
        for name, value in spec.items()
        if isinstance(value, str | int)
    }
    return refs | {
        "bundle.name": bundle["bundle"]["name"],
        "bundle.target": target,
        "bundle.git.commit": _git(repo, "rev-parse", "HEAD") or "unknown",
        "bundle.git.branch": _git(repo, "rev-parse", "--abbrev-ref", "HEAD") or "unknown",
        "bundle.git.origin_url": _git(repo, "config", "--get", "remote.origin.url") or repo.as_uri(),
        "workspace.file_path": str(repo),
        "workspace.root_path": str(root),
        "workspace.host": "http://localhost",
        "workspace.current_user.userName": user_name,
        "workspace.current_user.short_name": user,
    }


def target_variables(bundle: dict, target: str, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variable values as the CLI sees them: default < the target's < BUNDLE_VAR_<name> < ``overrides``."""
    targets = bundle.get("targets") or {}
    if target not in targets:
        raise PrismError(f"no target {target!r} in databricks.yml", hint="targets: " + ", ".join(targets))
    declared = bundle.get("variables") or {}
    values = {k: v.get("default") for k, v in declared.items()}
    values.update((targets[target] or {}).get("variables") or {})
    for k in declared:
        env = os.environ.get(f"BUNDLE_VAR_{k}")
        if env is not None:
            values[k] = env
    for k, v in (overrides or {}).items():
        if k not in declared:
            raise PrismError(f"--var {k}: no such bundle variable", hint="declared: " + ", ".join(declared))
        values[k] = v
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise PrismError(f"bundle variables without a value: {', '.join(missing)}", hint="pass --var NAME=VALUE")
    return {k: str(v) for k, v in values.items()}


def resolve(value: Any, variables: Mapping[str, str], builtin: Mapping[str, str], depth: int = 0) -> Any:
    """``${var.X}`` (recursively) and the CLI's ``${bundle.*}`` / ``${workspace.*}`` in a string, list or mapping."""
    if isinstance(value, list):
        return [resolve(v, variables, builtin) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, variables, builtin) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if depth > 10:
        raise PrismError(f"bundle variable references nest too deep: {value}")

    def sub(m: re.Match) -> str:
        ref = m.group(1)
        if ref.startswith("var."):
            if ref[4:] not in variables:
                raise PrismError(f"${{{ref}}} names no declared variable")
            return resolve(variables[ref[4:]], variables, builtin, depth + 1)
        if ref not in builtin:
            raise PrismError(f"${{{ref}}} is no substitution the local run knows", hint=", ".join(sorted(builtin)))
        return resolve(str(builtin[ref]), variables, builtin, depth + 1)

    return VAR_REF.sub(sub, value)


def job_parameters(job: dict, overrides: Mapping[str, str]) -> dict[str, str]:
    """A job's ``parameters`` (name -> default), with the run's overrides of those it declares."""
    params = {p["name"]: str(p["default"]) for p in job.get("parameters") or []}
    params.update({k: v for k, v in overrides.items() if k in params})
    return params


def substitute_job_parameters(value: str, params: Mapping[str, str], job: str, task: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in params:
            raise PrismError(f"{job}.{task}: {{{{job.parameters.{name}}}}} names no parameter of the job")
        return params[name]

    out = JOB_PARAM_REF.sub(sub, value)
    left = DYNAMIC_REF.search(out)
    if left:
        raise PrismError(f"{job}.{task}: dynamic value {left.group(0)} has no local stand-in")
    return out


def topological(tasks: Sequence[dict], job: str) -> list[dict]:
    """The tasks in an order where each runs after everything it depends on (ties keep the file's order)."""
    by_key = {t["task_key"]: t for t in tasks}
    order: list[dict] = []
    state: dict[str, str] = {}

    def visit(key: str, path: tuple[str, ...]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "open":
            raise PrismError(f"{job}: depends_on forms a cycle: {' -> '.join((*path, key))}")
        if key not in by_key:
            raise PrismError(f"{job}: {path[-1]} depends on unknown task {key}")
        state[key] = "open"
        for d in by_key[key].get("depends_on") or []:
            visit(d["task_key"], (*path, key))
        state[key] = "done"
        order.append(by_key[key])

    for t in tasks:
        visit(t["task_key"], ())
    return order


# ---- the local stand-ins --------------------------------------------------------------------------------------------


def map_path(value: str, local_root: Path) -> str:
    """``/Volumes/...`` and ``/Workspace/...`` anywhere in a value (``key=/Volumes/...`` too) under ``local_root``."""
    return re.sub(r"(?<![\w/])/(Volumes|Workspace)/", lambda m: f"{local_root}/{m.group(1)}/", value)


def map_set(item: str) -> str | None:
    """One ``--set key=value`` of a task as the local run passes it (None: dropped, the local generator needs none)."""
    key, _, value = item.partition("=")
    if key == "synth.generator.base_url":
        return None
    if key == "synth.generator.model":
        return f"{key}={LOCAL_GENERATOR}"
    if key.endswith(".device") and value == "cuda":
        return f"{key}=auto"  # CUDA when this machine has it
    return item


def local_argv(argv: Sequence[str], local_root: Path) -> list[str]:
    """A task's resolved parameters with the local stand-ins: paths mapped, the engine's --set rewritten, then
    :data:`LOCAL_SETTINGS`, :data:`CPU_SETTINGS` without CUDA, and :data:`SMALL` (later --set win)."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a == "--set":
            mapped = map_set(map_path(next(it), local_root))
            if mapped is not None:
                out += ["--set", mapped]
        else:
            out.append(map_path(a, local_root))
    for s in (*LOCAL_SETTINGS, *([] if has_cuda() else CPU_SETTINGS), *SMALL):
        out += ["--set", s]
    return out


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def prepare_volume_files(argv: Sequence[str], local_root: Path, repo: Path) -> None:
    """Fill the mapped volume as the README's deploy steps do: the shipped proxy exported to the folder that
    ``scoring.model.path`` (or ``train.model.path``) names, the shipped math seed (its first :data:`RAW_ROWS` rows)
    written where ``--paths`` points."""
    for a, value in zip(argv, argv[1:], strict=False):
        if a == "--set" and value.split("=", 1)[0] in ("scoring.model.path", "train.model.path"):
            folder = Path(value.split("=", 1)[1])
            if folder.is_relative_to(local_root) and not (folder / "config.json").is_file():
                from prismatic.config import ModelConfig
                from prismatic.gradients.model import export_proxy

                export_proxy(ModelConfig(), folder)  # refuses a folder that holds other files
        elif a == "--paths":
            for p in value.split(","):
                path = Path(p)
                if path.is_relative_to(local_root):
                    folder = path.parent if any(c in path.name for c in "*?[") else path
                    if not (folder.exists() and any(folder.iterdir())):
                        folder.mkdir(parents=True, exist_ok=True)
                        lines = (repo / SHIPPED_RAW).read_text().splitlines(keepends=True)[:RAW_ROWS]
                        (folder / Path(SHIPPED_RAW).name).write_text("".join(lines))


def plan(
    repo: Path = REPO_ROOT,
    *,
    target: str = "dev",
    local_root: Path,
    jobs: Sequence[str] | None = None,
    variables: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> list[Task]:
    """Every task of the chosen jobs (default: all, in the order the bundle defines them), resolved and mapped."""
    bundle, defined = load_bundle(repo)
    names = list(jobs or defined)
    unknown = [j for j in names if j not in defined]
    if unknown:
        raise PrismError(f"no job {', '.join(unknown)} in the bundle", hint="jobs: " + ", ".join(defined))
    values = target_variables(bundle, target, variables)
    builtin = builtins(repo, target, local_root, bundle)
    run_params = {**SMALL_PARAMS, **(params or {})}
    out: list[Task] = []
    for name in names:
        path, job = defined[name]
        job = resolve(job, values, builtin)
        jp = job_parameters(job, run_params)
        clusters = {c["job_cluster_key"]: c.get("new_cluster", {}) for c in job.get("job_clusters") or []}
        for t in topological(job["tasks"], name):
            spt = t.get("spark_python_task")
            if not spt:
                raise PrismError(f"{name}.{t['task_key']}: only spark_python_task tasks run locally")
            argv = [substitute_job_parameters(str(a), jp, name, t["task_key"]) for a in spt.get("parameters", [])]
            env = {
                k: map_path(str(v), local_root)
                for k, v in (clusters.get(t.get("job_cluster_key"), {}).get("spark_env_vars") or {}).items()
            }
            out.append(
                Task(
                    job=name,
                    key=t["task_key"],
                    python_file=(path.parent / spt["python_file"]).resolve(),
                    argv=local_argv(argv, local_root),
                    env=env,
                    depends_on=[d["task_key"] for d in t.get("depends_on") or []],
                )
            )
    return out


# ---- running --------------------------------------------------------------------------------------------------------


def run_task(task: Task, *, repo: Path, local_root: Path, log_dir: Path, timeout_s: float | None = None) -> TaskResult:
    """``python jobs/<stage>.py ARGV`` with the task's cluster environment; its output goes to ``log_dir``."""
    prepare_volume_files(task.argv, local_root, repo)
    env = {
        **os.environ,
        **task.env,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYSPARK_PYTHON": sys.executable,
    }
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path = log_dir / f"{task.job}.{task.key}.out"
    err_path = log_dir / f"{task.job}.{task.key}.err"
    start = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        try:
            rc = subprocess.run(
                [sys.executable, str(task.python_file), *task.argv],
                cwd=repo,
                env=env,
                stdout=out,
                stderr=err,
                timeout=timeout_s,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            err.write(f"\ntimed out after {timeout_s} s\n")
    seconds = time.perf_counter() - start
    tail = "" if rc == 0 else "\n".join(err_path.read_text(errors="replace").splitlines()[-40:])
    return TaskResult(task.job, task.key, rc == 0, seconds, tail)


def run_local(
    repo: Path = REPO_ROOT,
    *,
    target: str = "dev",
    local_root: Path,
    jobs: Sequence[str] | None = None,
    variables: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
) -> list[TaskResult]:
    """Run every task of the chosen jobs; stop at the first failure (its result is the last one returned)."""
    local_root = Path(local_root).expanduser().resolve()
    tasks = plan(repo, target=target, local_root=local_root, jobs=jobs, variables=variables, params=params)
    results: list[TaskResult] = []
    for task in tasks:
        echo(f"{task.job}.{task.key}: running jobs/{task.python_file.name}")
        r = run_task(task, repo=repo, local_root=local_root, log_dir=local_root / "logs", timeout_s=timeout_s)
        results.append(r)
        echo(f"{task.job}.{task.key}: {'ok' if r.ok else 'FAILED'} in {r.seconds:.1f} s")
        if not r.ok:
            break
    return results


def parse_assignments(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise PrismError(f"{what} {item!r} must look like NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out
