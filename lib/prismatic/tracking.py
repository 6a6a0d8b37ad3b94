"""MLflow: one experiment per pipeline, a parent run per `prism run` / `prism synthesize`, a child run per round.

Locally the tracking store is SQLite with an artifacts folder under ``<data_root>/mlflow``; on Databricks the
workspace's MLflow (``databricks``). Params are the flattened config (secrets never live in config, only the
*names* of env vars and secret scopes), tags carry the Delta table versions and the git commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

from prismatic.config import REPO_ROOT, Settings, to_flat_dict
from prismatic.spark import on_databricks

log = logging.getLogger(__name__)

SECRET_WORDS = ("password", "token", "secret_value", "api_key_value", "apikey")
MAX_PARAM_CHARS = 500
# The experiment tag the MLflow UI reads to pick its view: "custom_model_development" opens runs, metrics and
# artifacts (the classic ML view), "genai_development" the traces-first GenAI view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
STAGE_TAG = "prismatic.stage"
COMMIT_TAG = "git_commit"
UNKNOWN_COMMIT = "unknown"


def tracking_uri(settings: Settings) -> str:
    if settings.tracking.tracking_uri:
        return settings.tracking.tracking_uri
    if on_databricks():
        return "databricks"
    root = settings.root / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(settings: Settings) -> str | None:
    if on_databricks() or settings.tracking.tracking_uri:
        return None
    return (settings.root / "mlflow" / "artifacts").as_uri()


def setup(settings: Settings) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; returns the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    mlflow.set_tracking_uri(tracking_uri(settings))
    name = settings.tracking.experiment
    if on_databricks() and not name.startswith("/"):
        name = f"/Shared/{name}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        exp_id = mlflow.create_experiment(
            name, artifact_location=artifact_location(settings), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    else:
        exp_id = exp.experiment_id
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older version (or the UI): classic view, once
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def git_commit() -> str | None:
    env = os.environ.get("PRISM_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(stage: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The tags every run carries: ``prismatic.stage`` and ``git_commit`` (``unknown`` outside a checkout with no
    ``PRISM_GIT_COMMIT``, so the tag is always there to filter on), then ``extra`` (stringified)."""
    tags = {STAGE_TAG: stage, COMMIT_TAG: git_commit() or UNKNOWN_COMMIT}
    # the bundle's tasks pass ${bundle.git.branch} / ${bundle.git.origin_url} (jobs/_common.py sets these)
    for tag, env in (("git_branch", "PRISM_GIT_BRANCH"), ("git_url", "PRISM_GIT_URL")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def safe_params(settings: Settings, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Flattened config as MLflow params: long values cut, anything that looks like a secret value dropped."""
    flat = to_flat_dict(settings)
    flat.update(extra or {})
    out = {}
    for k, v in flat.items():
        if any(w in k.lower() for w in SECRET_WORDS):
            continue
        s = str(v)
        out[k] = s if len(s) <= MAX_PARAM_CHARS else s[: MAX_PARAM_CHARS - 1] + "…"
    return out


@contextlib.contextmanager
def run(
    settings: Settings,
    name: str,
    nested: bool = False,
    tags: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    stage: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run; no-op context when tracking is disabled.

    The run is a child of the active run when ``nested``, and always when a run is already active (a stage called
    inside ``prism run``'s pipeline run, or from a notebook that opened one), so stages compose. Every run carries
    the tags ``prismatic.stage`` (``stage``, default ``name``) and ``git_commit`` (:func:`run_tags`); every
    MLflow run of the project starts here.

    Args:
        run_id: resume this run (a round re-run after a crash) instead of starting a new one; tags are set again.
    """
    if not settings.tracking.enabled:
        yield None
        return
    import mlflow

    setup(settings)
    all_tags = run_tags(stage or name, tags)
    nested = nested or mlflow.active_run() is not None
    if run_id:
        ctx = mlflow.start_run(run_id=run_id, nested=nested)
    else:
        ctx = mlflow.start_run(run_name=name, nested=nested, tags=all_tags)
    with ctx as r:
        if run_id:
            mlflow.set_tags(all_tags)
        if params:
            mlflow.log_params({k: str(v)[:MAX_PARAM_CHARS] for k, v in params.items()})
        yield r


def log_table_versions(versions: dict[str, int | None], prefix: str) -> None:
    import mlflow

    mlflow.set_tags({f"{prefix}.{k}": str(v) for k, v in versions.items() if v is not None})


def runs_dataframe(settings: Settings, filter_string: str = "") -> Any:
    """All runs of the experiment as a pandas DataFrame (for notebooks and the study)."""
    import mlflow

    exp_id = setup(settings)
    return mlflow.search_runs(experiment_ids=[exp_id], filter_string=filter_string)


def ui_command(settings: Settings) -> str:
    """The command that opens the MLflow UI on this config's tracking store."""
    from urllib.parse import urlsplit, urlunsplit

    uri = tracking_uri(settings)
    if uri == "databricks":
        return "open the experiment in the Databricks workspace (Machine Learning > Experiments)"
    parts = urlsplit(uri)
    if "@" in parts.netloc:  # never print credentials embedded in a server URI
        uri = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return f"mlflow ui --backend-store-uri {uri}"
