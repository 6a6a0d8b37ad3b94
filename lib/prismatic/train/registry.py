"""Students as MLflow models: logged with a flavor, registered, and the ``champion`` alias.

* **Flavors.** The probe is logged with the ``sklearn`` flavor: its head (``LogisticRegression`` rebuilt from the
  stored coefficients, or a constant ``DummyClassifier`` for a one-label training set) over the pair features,
  with a feature signature and input example; the model's metadata names the sentence encoder the features come
  from (``embedding_model``), so the registered model plus that encoder reproduce the probe exactly. The lm student
  is logged with the ``transformers`` flavor (model + tokenizer, ``text-generation``, string signature and a
  prompt as input example). The local ``students/<id>/`` folder stays what ``prism eval`` reads by default.
* **Registry.** ``tracking.registry_uri`` (default: the tracking store, i.e. the local SQLite file, or Unity
  Catalog on Databricks). The name is ``train.registered_model`` (``prismatic_student``); with a
  ``databricks-uc`` registry it is qualified as ``storage.catalog.storage.schema_name.<name>``.
* **Champion.** After an eval, the version's score is the mean OOD accuracy over the evaluated OOD benchmarks
  (balanced accuracy where recorded, i.e. NLI); it is stored on the version (tags ``prismatic.ood_score``,
  ``prismatic.ood_key``) and the alias ``train.champion_alias`` moves to it when there is no champion yet, or
  when it beats the champion's score on the same benchmarks and method. The decision is a version tag
  (``prismatic.champion_decision``) and a log line.
* **Loading.** :func:`fetch_registered` takes ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/PATH``
  and materializes the version once as a student folder under ``<data_root>/cache/registry`` (what
  :func:`prismatic.train.students.load_student` reads), with its manifest.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismatic.config import Settings
from prismatic.errors import PrismError

log = logging.getLogger(__name__)

MODEL_PATH = "model"
MANIFEST = "student.json"  # prismatic.train.students.MANIFEST (students imports this module, not the reverse)
UC = "databricks-uc"
TAG_SCORE, TAG_KEY, TAG_DECISION = "prismatic.ood_score", "prismatic.ood_key", "prismatic.champion_decision"
MODEL_URI_RE = re.compile(r"^(models|runs):/")


def is_model_uri(spec: str | Path | None) -> bool:
    return isinstance(spec, str) and bool(MODEL_URI_RE.match(spec))


def registry_uri(settings: Settings) -> str:
    """The model registry: ``tracking.registry_uri``, else Unity Catalog on Databricks, else the tracking store."""
    from prismatic import tracking
    from prismatic.spark import on_databricks

    if settings.tracking.registry_uri:
        return settings.tracking.registry_uri
    return UC if on_databricks() else tracking.tracking_uri(settings)


def model_name(settings: Settings) -> str:
    """The registered model's name; three-level ``catalog.schema.name`` for a Unity Catalog registry."""
    name = settings.train.registered_model
    if not registry_uri(settings).startswith(UC) or name.count(".") == 2:
        return name
    s = settings.storage
    if not s.catalog:
        raise PrismError(
            "a Unity Catalog model registry needs storage.catalog",
            hint="set storage.catalog (and storage.schema_name), or train.registered_model=catalog.schema.name",
        )
    return f"{s.catalog}.{s.schema_name}.{name}"


def client(settings: Settings):
    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    mlflow.set_registry_uri(registry_uri(settings))
    return mlflow.MlflowClient(registry_uri=registry_uri(settings))


# ---- logging and registering ---------------------------------------------------------------------------------


def sklearn_head(probe):
    """The probe's classifier as a fitted scikit-learn estimator with identical predictions on feature rows."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    n_feat = probe.coef.shape[1]
    if len(probe.labels) == 1:
        head = DummyClassifier(strategy="constant", constant=probe.labels[0])
        return head.fit(np.zeros((1, n_feat)), [probe.labels[0]])
    head = LogisticRegression()
    if len(probe.labels) == 2 and not probe.coef[0].any() and probe.intercept[0] == 0.0:
        head.coef_, head.intercept_ = probe.coef[1:2].copy(), probe.intercept[1:2].copy()  # binary: one row
    elif len(probe.labels) == 2:  # two free rows: the difference decides
        head.coef_ = (probe.coef[1] - probe.coef[0])[None, :]
        head.intercept_ = np.array([probe.intercept[1] - probe.intercept[0]])
    else:
        head.coef_, head.intercept_ = probe.coef.copy(), probe.intercept.copy()
    head.classes_ = np.asarray(probe.labels, dtype=object)
    head.n_features_in_ = n_feat
    return head


def probe_from_head(head, embedding_model: str):
    """The inverse of :func:`sklearn_head`: a :class:`~prismatic.train.probe.ProbeStudent`."""
    from prismatic.train.probe import ProbeStudent

    labels = [str(c) for c in head.classes_]
    n_feat = int(head.n_features_in_)
    if len(labels) == 1:
        return ProbeStudent(np.zeros((1, n_feat)), np.zeros(1), labels, embedding_model)
    coef, intercept = np.asarray(head.coef_, np.float64), np.asarray(head.intercept_, np.float64)
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, float(intercept[0])])
    return ProbeStudent(coef, intercept, labels, embedding_model)


def log_student_model(folder: Path, report, settings: Settings) -> dict | None:
    """Log the student in ``folder`` as an MLflow model under the active run and register it.

    Returns ``{"name", "version", "uri"}`` of the registered version (None when ``train.register_model`` is off).
    """
    if not settings.train.register_model:
        return None
    import mlflow

    name = model_name(settings)
    mlflow.set_registry_uri(registry_uri(settings))
    meta = {"student_id": report.student_id, "kind": report.kind}
    if report.kind == "probe":
        info = _log_probe(folder, name, meta)
    else:
        info = _log_lm(folder, name, meta, settings)
    version = str(info.registered_model_version)
    c = mlflow.MlflowClient(registry_uri=registry_uri(settings))
    c.set_model_version_tag(name, version, "student_id", report.student_id)
    c.set_model_version_tag(name, version, "student_kind", report.kind)
    log.info("registered %s student %s as %s version %s", report.kind, report.student_id, name, version)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}"}


def _log_probe(folder: Path, name: str, meta: dict):
    import mlflow
    from mlflow.models import infer_signature

    from prismatic.train.probe import ProbeStudent

    probe = ProbeStudent.load(folder)
    head = sklearn_head(probe)
    example = np.zeros((2, probe.coef.shape[1]), dtype=np.float64)
    example[1, :] = 1.0 / math.sqrt(probe.coef.shape[1])
    meta = {**meta, "embedding_model": probe.embedding_model, "features": probe.features}
    return mlflow.sklearn.log_model(
        head, name=MODEL_PATH, signature=infer_signature(example, head.predict(example)), input_example=example,
        registered_model_name=name, metadata=meta, pip_requirements=_requirements("scikit-learn"),
    )  # fmt: skip


def _log_lm(folder: Path, name: str, meta: dict, settings: Settings):
    import mlflow
    from mlflow.models import infer_signature
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    prompt = ["What is 2 plus 3 ?"] if settings.train.task != "nli" else ["Premise: a dog runs. Hypothesis: it moves."]
    return mlflow.transformers.log_model(
        {"model": model, "tokenizer": tok}, name=MODEL_PATH, task="text-generation",
        signature=infer_signature(prompt, ["5"]), input_example=prompt, registered_model_name=name,
        metadata={**meta, "chat_template": bool(getattr(tok, "chat_template", None))},
        pip_requirements=_requirements("torch", "transformers", "safetensors"),
    )  # fmt: skip


def _requirements(*packages: str) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in packages:
        try:
            out.append(f"{p}=={version(p)}")
        except PackageNotFoundError:
            out.append(p)
    return out


# ---- loading --------------------------------------------------------------------------------------------------


@dataclass
class Resolved:
    """A model URI resolved: the registered version (None for ``runs:/``), its run and the student's id."""

    uri: str
    name: str | None
    version: str | None
    run_id: str | None
    source: str


def resolve(settings: Settings, uri: str) -> Resolved:
    """``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` → the version; ``runs:/ID/PATH`` as is.

    Raises:
        PrismError: no such model, version or alias.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)
    body = uri.split(":/", 1)[1].lstrip("/")
    if uri.startswith("runs:"):
        return Resolved(uri, None, None, body.split("/", 1)[0], uri)
    try:
        if "@" in body:
            name, alias = body.rsplit("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        elif "/" in body:
            name, ver = body.rsplit("/", 1)
            mv = c.get_model_version(name, ver)
        else:
            raise PrismError(f"{uri}: name a version or an alias", hint="models:/NAME/VERSION or models:/NAME@ALIAS")
    except MlflowException as e:
        raise PrismError(f"cannot resolve {uri}: {e.message}", hint="list versions in the MLflow UI (Models)") from e
    return Resolved(uri, mv.name, str(mv.version), mv.run_id, f"models:/{mv.name}/{mv.version}")


def fetch_registered(settings: Settings, uri: str) -> tuple[Path, dict, Resolved]:
    """The student behind a model URI as a local folder: (folder, manifest, resolution).

    The version's artifacts are materialized once as a student folder under ``<data_root>/cache/registry``; the
    manifest is the ``student.json`` its training run logged (lineage included), or the model's metadata.
    """
    import mlflow

    res = resolve(settings, uri)
    info = mlflow.models.get_model_info(res.source)
    meta = dict(info.metadata or {})
    key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{res.name}-{res.version}" if res.version else res.source)
    folder = settings.root / "cache" / "registry" / key
    if not (folder / MANIFEST).is_file():
        _materialize(res, meta, folder, settings)
    return folder, json.loads((folder / MANIFEST).read_text()), res


def _materialize(res: Resolved, meta: dict, folder: Path, settings: Settings) -> None:
    import mlflow

    tmp = folder.parent / f".{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        kind = meta.get("kind")
        if kind == "probe":
            head = mlflow.sklearn.load_model(res.source)
            probe_from_head(head, meta.get("embedding_model", "builtin:minilm")).save(tmp)
        elif kind == "lm":
            dl = Path(mlflow.artifacts.download_artifacts(artifact_uri=res.source, dst_path=str(tmp / "_dl")))
            for sub in ("model", "components/tokenizer"):
                for f in (dl / sub).iterdir() if (dl / sub).is_dir() else ():
                    shutil.copy2(f, tmp / f.name)
            shutil.rmtree(dl, ignore_errors=True)
        else:
            raise PrismError(f"{res.uri} is not a prismatic student (metadata kind {kind!r})")
        manifest = _logged_manifest(res) or {}
        manifest.update({"student_id": meta.get("student_id") or manifest.get("student_id"), "kind": kind})
        manifest.setdefault("lineage", {})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _logged_manifest(res: Resolved) -> dict | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    if not res.run_id:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=res.run_id, artifact_path="student/student.json")
        return json.loads(Path(path).read_text())
    except (MlflowException, OSError, json.JSONDecodeError):
        return None


# ---- champion -------------------------------------------------------------------------------------------------


def ood_score(rows: Sequence[dict]) -> tuple[float, str] | None:
    """Mean OOD accuracy of eval rows (balanced accuracy where recorded) and the key of what it was measured on
    (sorted ``benchmark:sha:method``); None without an OOD row."""
    ood = sorted((r for r in rows if r.get("split") == "ood"), key=lambda r: r["benchmark"])
    if not ood:
        return None
    vals = [r["balanced_accuracy"] if r.get("balanced_accuracy") is not None else r["accuracy"] for r in ood]
    key = ",".join(f"{r['benchmark']}:{json.loads(r.get('lineage') or '{}').get('benchmark_sha', '')}:"
                   f"{r.get('eval_method')}" for r in ood)  # fmt: skip
    return float(sum(vals) / len(vals)), key


def consider_champion(settings: Settings, name: str, version: str, rows: Sequence[dict]) -> str:
    """Record this version's OOD score and move the champion alias to it when it is better; returns the decision.

    First version scored → champion. Otherwise the alias moves only when the version's score is strictly higher
    than the champion's score on the same OOD benchmarks (same content hash and method); a champion scored on
    other benchmarks is kept (not comparable).
    """
    from mlflow.exceptions import MlflowException

    scored = ood_score(rows)
    alias = settings.train.champion_alias
    if scored is None:
        return f"version {version}: no OOD benchmark evaluated; alias {alias!r} unchanged"
    score, key = scored
    c = client(settings)
    c.set_model_version_tag(name, version, TAG_SCORE, f"{score:.6f}")
    c.set_model_version_tag(name, version, TAG_KEY, key[:5000])
    try:
        champ = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    if champ is None:
        decision, move = f"version {version} is the first scored: {alias} (OOD {score:.4f})", True
    elif str(champ.version) == str(version):
        decision, move = f"version {version} is already {alias} (OOD {score:.4f})", False
    elif champ.tags.get(TAG_KEY) != key[:5000] or TAG_SCORE not in champ.tags:
        decision = f"version {version} (OOD {score:.4f}) not comparable with {alias} v{champ.version}: kept"
        move = False
    else:
        best = float(champ.tags[TAG_SCORE])
        move = score > best
        verb = "beats" if move else "does not beat"
        decision = f"version {version} (OOD {score:.4f}) {verb} {alias} v{champ.version} (OOD {best:.4f})"
        decision += f": {alias} -> v{version}" if move else ": kept"
    if move:
        c.set_registered_model_alias(name, alias, version)
    c.set_model_version_tag(name, version, TAG_DECISION, decision[:5000])
    log.info("%s: %s", name, decision)
    return decision
