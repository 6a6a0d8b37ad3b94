"""Student checkpoints under the data root and the ``train`` stage.

Every trained student is a folder ``<data_root>/students/<student_id>/`` (or ``train.students_dir``) holding its
weights (``probe.safetensors`` + ``probe.json``, or a transformers safetensors folder) and ``student.json``, the
manifest: kind, creation time, base model / encoder, label set, training-set size, the sha256 of its sorted
sample ids, the subset and study it belongs to, the Delta versions of the tables it was read from, the MLflow run
and the git commit. ``student_id`` is a hash of the kind, the training settings that change the weights and the
sample ids, so training the same student twice reuses the first checkpoint (idempotent, like every stage).
Folders are written under a temporary name and renamed when complete: a crash never leaves a half student.
A tracked training run also logs the student as an MLflow model and registers it (``train.register_model``; see
:mod:`prismatic.train.registry`); the manifest's ``registered`` names the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

MANIFEST = "student.json"
PROBE_KEYS = ("embedding_model", "probe_c", "probe_max_iter")
LM_KEYS = ("model", "method", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "epochs", "max_steps",
           "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "max_grad_norm", "max_tokens",
           "chat_template", "seed", "shuffle_buffer")  # fmt: skip
LINEAGE_TABLES = ("samples", "duplicates", "candidates_bronze", "gradients")


def students_root(settings: Settings) -> Path:
    d = settings.train.students_dir
    return Path(d).expanduser().resolve() if d else settings.root / "students"


def ids_sha(sample_ids: Sequence[str]) -> str:
    """sha256 of the sorted, newline-joined sample ids: the identity of a training set."""
    h = hashlib.sha256()
    for s in sorted(sample_ids):
        h.update(s.encode())
        h.update(b"\n")
    return h.hexdigest()


def student_id_for(kind: str, settings: Settings, sample_ids: Sequence[str]) -> str:
    """Deterministic id: hash of the kind, the weight-changing settings and the training set."""
    cfg = settings.train.model_dump(mode="json")
    keys = PROBE_KEYS if kind == "probe" else LM_KEYS
    ident = {"kind": kind, "train": {k: cfg[k] for k in keys}, "ids": ids_sha(sample_ids)}
    if kind == "probe":
        ident["template"] = settings.ingest.nli_prompt_template
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise PrismError(
            f"{folder} holds no {MANIFEST}: not a student checkpoint",
            hint="pass a folder written by `prism train` (see <data_root>/students)",
        )
    return json.loads(path.read_text())


def list_students(settings: Settings) -> list[dict]:
    """Manifests of every complete student under the students folder, oldest first."""
    root = students_root(settings)
    out = []
    for m in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        try:
            man = json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        man["path"] = str(m.parent)
        out.append(man)
    return sorted(out, key=lambda x: (x.get("created_at", ""), x.get("student_id", "")))


def latest_student(settings: Settings) -> Path:
    """The most recently trained student under the data root.

    Raises:
        PrismError: none has been trained yet.
    """
    found = list_students(settings)
    if not found:
        raise PrismError(f"no trained student under {students_root(settings)}", hint="run `prism train` first")
    return Path(found[-1]["path"])


def load_student(path: str | Path, settings: Settings):
    """Load a student folder: a :class:`~prismatic.train.probe.ProbeStudent` or a
    :class:`~prismatic.train.lm.LMStudent` (by its manifest's kind; a bare probe or transformers folder works too).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise PrismError(f"student {folder} does not exist", hint="pass a folder under <data_root>/students")
    kind = None
    if (folder / MANIFEST).is_file():
        kind = read_manifest(folder).get("kind")
    elif (folder / "probe.json").is_file():
        kind = "probe"
    elif (folder / "config.json").is_file():
        kind = "lm"
    if kind == "probe":
        from prismatic.train.probe import ProbeStudent

        return ProbeStudent.load(folder)
    if kind == "lm":
        from prismatic.train.lm import LMStudent

        return LMStudent(folder, device=settings.train.model.device, chat_template=settings.train.chat_template)
    raise PrismError(f"{folder} is neither a probe nor an lm checkpoint")


@dataclass
class TrainReport:
    """One trained (or reused) student."""

    student_id: str
    kind: str
    path: str
    n_train: int
    reused: bool
    labels: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    registered: dict | None = None  # {name, version, uri} of the registered MLflow model version

    def summary(self) -> str:
        verb = "reused" if self.reused else "trained"
        extra = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        reg = f", registered {self.registered['uri']}" if self.registered else ""
        return (
            f"{verb} {self.kind} student {self.student_id} on {self.n_train} samples -> {self.path}"
            + (f" ({extra})" if extra else "")
            + reg
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _lineage(
    store: TableStore, settings: Settings, kind: str, ids: Sequence[str], subset_id: str | None, study_id: str | None
) -> dict:
    from prismatic.tracking import git_commit

    base = settings.train.embedding_model if kind == "probe" else settings.train.model.path
    return {
        "table_versions": {t: store.version(t) for t in LINEAGE_TABLES},
        "n_train": len(ids), "sample_ids_sha256": ids_sha(ids), "subset_id": subset_id, "study_id": study_id,
        "task": settings.train.task if kind == "lm" else "nli", "base": base, "git_commit": git_commit(),
    }  # fmt: skip


def _fit_probe(store: TableStore, settings: Settings, ids: Sequence[str] | None, pairs=None):
    from prismatic.train.data import embedder_for, nli_pairs
    from prismatic.train.probe import ProbeStudent

    pairs = pairs if pairs is not None else nli_pairs(store, settings, ids)
    if len(pairs) == 0:
        raise PrismError(
            "no NLI samples with a label to train the probe on",
            hint="ingest NLI data (`prism ingest --task nli`) or check the subset ids",
        )
    embed = embedder_for(settings)
    u, v = embed(pairs.premises), embed(pairs.hypotheses)
    cfg = settings.train
    return ProbeStudent.fit(
        u, v, pairs.labels, c=cfg.probe_c, max_iter=cfg.probe_max_iter, embedding_model=cfg.embedding_model
    ), pairs


def train_stage(
    store: TableStore,
    settings: Settings,
    student: str | None = None,
    subset_ids: Sequence[str] | None = None,
    *,
    subset_id: str | None = None,
    study_id: str | None = None,
    force: bool = False,
    track: bool = True,
    pairs=None,
) -> TrainReport:
    """Train a student on ``subset_ids`` (default: every pool row of ``train.task``) and save it.

    Steps: resolve the training ids → reuse the checkpoint of the same id, if any → fit into a temporary folder
    (probe or lm) → write the manifest and log to MLflow → rename the folder into place.

    Args:
        store: the table store.
        settings: validated settings (``train`` section).
        student: ``probe`` or ``lm`` (default ``train.student``).
        subset_ids: sample ids to train on; ids not in the pool are ignored.
        subset_id, study_id: recorded in the manifest and MLflow (the study passes them).
        force: retrain even if a student with the same id exists.
        track: log an MLflow run ``train-<kind>`` (nested under an active run); the study logs its own runs.
        pairs: pre-loaded :class:`~prismatic.train.data.NliPairs` of exactly these ids (probe; saves a read).

    Returns:
        A :class:`TrainReport` (``reused`` when the checkpoint already existed).
    """
    kind = student or settings.train.student
    if kind not in ("probe", "lm"):
        raise PrismError(f"unknown student {kind!r}; choose probe or lm")
    pool_ids = training_ids(store, settings, kind, subset_ids, pairs)
    sid = student_id_for(kind, settings, pool_ids)
    folder = students_root(settings) / sid
    if (folder / MANIFEST).is_file() and not force:
        return reused_report(folder, sid, kind, len(pool_ids))
    lineage = _lineage(store, settings, kind, pool_ids, subset_id, study_id)
    if track and settings.tracking.enabled and settings.train.register_model:
        from prismatic.train.registry import model_name

        model_name(settings)  # a registry that cannot name the model fails before training, not after
    tmp = folder.parent / f".{sid}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True, exist_ok=True)
    report = TrainReport(sid, kind, str(folder), len(pool_ids), False, lineage=lineage)
    try:
        ctx = _tracking(settings, kind, lineage, sid) if track else _null()
        with ctx as run:
            report.mlflow_run_id = run.info.run_id if run is not None else None
            if kind == "probe":
                _fit_probe_into(tmp, store, settings, pool_ids, pairs, report)
            else:
                _fit_lm_into(tmp, store, settings, None if subset_ids is None else pool_ids, run, report)
            if run is not None:
                from prismatic.train.registry import log_student_model

                report.registered = log_student_model(tmp, report, settings)
            _write_manifest(tmp, report, settings)
            if run is not None:
                _log_student(tmp, report, settings)
        _publish(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(report.summary())
    return report


def training_ids(
    store: TableStore, settings: Settings, kind: str, subset_ids: Sequence[str] | None, pairs=None
) -> list[str]:
    """The pool sample ids a student of ``kind`` trains on (``subset_ids`` ∩ the task's pool, or all of it).

    Raises:
        PrismError: no pool row of the task.
    """
    from prismatic.train.data import pool_arrow

    task = "nli" if kind == "probe" else settings.train.task
    if kind == "probe" and pairs is not None:
        pool_ids = list(pairs.sample_ids)
    else:
        pool_ids = pool_arrow(store, task=task, sample_ids=subset_ids, columns=["sample_id"])["sample_id"].to_pylist()
    if not pool_ids:
        raise PrismError(f"no pool samples of task {task!r} to train on", hint="ingest data, or check --subset ids")
    return pool_ids


def reused_report(folder: Path, sid: str, kind: str, n_train: int) -> TrainReport:
    """The report of a student already saved under ``folder`` (from its manifest)."""
    man = read_manifest(folder)
    return TrainReport(
        sid,
        kind,
        str(folder),
        man.get("n_train", n_train),
        True,
        man.get("labels", []),
        man.get("metrics", {}),
        man.get("lineage", {}),
        man.get("mlflow_run_id"),
        man.get("registered"),
    )


def _fit_probe_into(tmp: Path, store: TableStore, settings: Settings, ids: Sequence[str], pairs, report) -> None:
    probe, used = _fit_probe(store, settings, ids, pairs)
    probe.save(tmp)
    report.labels = list(probe.labels)
    report.metrics = {"train_accuracy": float(probe.train_accuracy or 0.0)}
    report.n_train = len(used)


def _fit_lm_into(tmp: Path, store: TableStore, settings: Settings, ids: list[str] | None, run, report) -> None:
    """SFT of the lm student into ``tmp``; ``ids`` None trains on every pool row of ``train.task``."""
    from prismatic.train.lm import train_lm

    def on_step(step: int, loss: float) -> None:
        if run is not None:
            import mlflow

            mlflow.log_metric("train_loss", loss, step=step)

    res = train_lm(store, settings, ids, tmp, on_step=on_step)
    report.metrics = {
        "first_loss": res.losses[0],
        "last_loss": res.losses[-1],
        "steps": res.steps,
        "tokens": res.tokens,
        "seconds": res.seconds,
    }


def _write_manifest(tmp: Path, report: TrainReport, settings: Settings) -> None:
    manifest = {
        "student_id": report.student_id,
        "kind": report.kind,
        "created_at": _now(),
        "n_train": report.n_train,
        "labels": report.labels,
        "metrics": report.metrics,
        "lineage": report.lineage,
        "train": settings.train.model_dump(mode="json"),
        "mlflow_run_id": report.mlflow_run_id,
        "registered": report.registered,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def _log_student(tmp: Path, report: TrainReport, settings: Settings) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in report.metrics.items()})
    if report.registered:
        mlflow.set_tags({"model_uri": report.registered["uri"], "model_version": report.registered["version"]})
    mlflow.log_artifact(str(tmp / MANIFEST), artifact_path="student")
    if report.kind == "probe" or settings.train.log_checkpoint:
        mlflow.log_artifacts(str(tmp), artifact_path="student")


def _publish(tmp: Path, folder: Path) -> None:
    """Move a complete student folder into place (a concurrent or forced run's folder is replaced)."""
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> bool:
        return False


def _tracking(settings: Settings, kind: str, lineage: dict, sid: str):
    from prismatic import tracking

    nested = False
    if settings.tracking.enabled:
        import mlflow

        nested = mlflow.active_run() is not None
    tags = {f"lineage.{k}": v for k, v in lineage["table_versions"].items() if v is not None}
    tags.update({"student_id": sid, "student_kind": kind, "lineage.sample_ids_sha256": lineage["sample_ids_sha256"]})
    if lineage.get("subset_id"):
        tags["subset_id"] = lineage["subset_id"]
    if lineage.get("study_id"):
        tags["study_id"] = lineage["study_id"]
    params = {"student": kind, "n_train": lineage["n_train"], "base": lineage["base"]}
    params.update(
        {
            f"train.{k}": v
            for k, v in settings.train.model_dump(mode="json").items()
            if k in (PROBE_KEYS if kind == "probe" else LM_KEYS)
        }
    )
    return tracking.run(settings, f"train-{kind}", nested=nested, tags=tags, params=params)
