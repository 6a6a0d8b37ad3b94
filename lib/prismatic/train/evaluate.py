"""Evaluation: accuracy of a student on a benchmark, and the ``eval`` stage (``eval_results`` + MLflow).

Methods (``train.eval_method``; each ``eval_results`` row records the one that produced it in ``eval_method``):

* ``classifier``: the probe predicts a label directly.
* ``loglik`` (lm): the option with the highest log-likelihood given the prompt
  (:mod:`prismatic.train.loglik`, the lm-evaluation-harness way). NLI options are the label words of the pool
  (``ingest.nli_labels``, the words the prompt template asks for); math uses it only when every example of the
  benchmark carries ``choices`` (the gold answer among distractors), otherwise it generates. Nothing is unparsed.
* ``generate`` (lm): greedy answer, parsed. Every unparseable answer counts as wrong, never as skipped:

  * **NLI**: :func:`parse_nli_answer` (the earliest label word, ``non-entailment`` before ``entailment``; a bare
    ``yes`` / ``no``).
  * **Math**: the answer and the gold answer are parsed and compared with math-verify
    (``math_verify.parse`` / ``math_verify.verify``); an answer math-verify cannot parse is wrong.

A 3-way prediction on a 2-way benchmark is folded with :func:`~prismatic.train.benchmarks.collapse_label`.

``eval_results`` is keyed by (run_id = student id, benchmark = name, ``name@n:seed`` when sampled, eval_method), so
the loglik and generate rows of one student coexist. Evaluating the same student on the same content with the same
method again is skipped (no table version, no MLflow run: the row comes back as ``unchanged``); a benchmark whose
content changed is re-evaluated and its row replaced. ``--model models:/NAME@ALIAS`` evaluates a registered student
(:mod:`prismatic.train.registry`); its rows record ``model_uri`` / ``model_version``.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.tables import TableStore, table_def
from prismatic.train.benchmarks import Benchmark, canonical_label, collapse_label, load_benchmark

log = logging.getLogger(__name__)

LOGLIK, GENERATE, CLASSIFIER = "loglik", "generate", "classifier"

_NLI_WORDS = re.compile(
    r"non[\s_-]?entail\w*|not[\s_-]+entail\w*|no[\s_-]+entailment|entail\w*|neutral|contradict\w*", re.IGNORECASE
)


def parse_nli_answer(text: str | None) -> str | None:
    """Canonical NLI label named by a generated answer, or None when it names none.

    The earliest label word wins (``"Entailment."`` → entailment, ``"not entailed"`` → non-entailment,
    ``"it contradicts"`` → contradiction); an answer that is just ``yes`` / ``no`` maps to entailment /
    non-entailment.
    """
    if not isinstance(text, str):
        return None
    m = _NLI_WORDS.search(text)
    if m:
        w = re.sub(r"[\s_]+", "-", m.group(0).lower())
        if w.startswith(("non", "not", "no-")):
            return "non-entailment"
        if w.startswith("entail"):
            return "entailment"
        if w.startswith("contradict"):
            return "contradiction"
        return "neutral"
    bare = re.sub(r"[^a-z]", "", text.strip().lower())
    return {"yes": "entailment", "no": "non-entailment"}.get(bare)


def math_correct(prediction: str | None, gold: str) -> bool | None:
    """True / False by math-verify; None when the prediction cannot be parsed (the caller counts it wrong)."""
    from math_verify import parse, verify

    if not isinstance(prediction, str) or not prediction.strip():
        return None
    pred = parse(prediction)
    if not pred:
        return None
    gold_parsed = parse(gold if "$" in gold or "\\" in gold else f"${gold}$") or parse(gold)
    if not gold_parsed:
        raise PrismError(f"math-verify cannot parse the gold answer {gold!r}", hint="fix the benchmark file")
    return bool(verify(gold_parsed, pred))


@dataclass
class EvalResult:
    """Accuracy of one student on one benchmark. ``unparsed`` predictions are included in ``n`` as wrong."""

    benchmark: str
    split: str
    task: str
    n: int
    correct: int
    unparsed: int
    labels: tuple[str, ...] = ()
    fingerprint: str = ""
    predictions: list = field(default_factory=list, repr=False)

    gold: list = field(default_factory=list, repr=False)
    method: str = GENERATE

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def balanced_accuracy(self) -> float:
        """NLI: the mean over gold labels of the recall of that label (NaN for math, or without predictions).

        Chance-corrected by construction: any constant answer scores 1 / (number of gold labels), whatever the
        label balance of the benchmark, while plain accuracy rewards a constant answer that happens to be the
        benchmark's majority label (``epistemic_reasoning`` is 63 % non-entailment).
        """
        if self.task != "nli" or not self.gold or len(self.gold) != len(self.predictions):
            return float("nan")
        recalls = []
        for lab in sorted(set(self.gold)):
            idx = [i for i, g in enumerate(self.gold) if g == lab]
            recalls.append(sum(1 for i in idx if self.predictions[i] == lab) / len(idx))
        return sum(recalls) / len(recalls)


def score_nli(predicted: Sequence[str | None], bench: Benchmark, method: str = GENERATE) -> EvalResult:
    """Accuracy of predicted labels (any label set; folded into the benchmark's) against the gold labels."""
    if len(predicted) != len(bench.examples):
        raise ValueError(f"{len(predicted)} predictions for {len(bench.examples)} examples")
    folded = [collapse_label(p, bench.labels) for p in predicted]
    correct = sum(1 for p, e in zip(folded, bench.examples, strict=True) if p is not None and p == e["label"])
    unparsed = sum(1 for p in folded if p is None)
    return EvalResult(
        bench.name,
        bench.split,
        "nli",
        len(folded),
        correct,
        unparsed,
        bench.labels,
        bench.fingerprint(),
        folded,
        [e["label"] for e in bench.examples],
        method,
    )


def score_math(answers: Sequence[str | None], bench: Benchmark) -> EvalResult:
    """Accuracy of generated math answers against the gold answers (math-verify; unparseable = wrong)."""
    if len(answers) != len(bench.examples):
        raise ValueError(f"{len(answers)} answers for {len(bench.examples)} examples")
    verdicts = [math_correct(a, e["answer"]) for a, e in zip(answers, bench.examples, strict=True)]
    correct = sum(1 for v in verdicts if v)
    unparsed = sum(1 for v in verdicts if v is None)
    return EvalResult(
        bench.name, bench.split, "math", len(verdicts), correct, unparsed, (), bench.fingerprint(), verdicts
    )


def score_math_choices(picked: Sequence[str], bench: Benchmark) -> EvalResult:
    """Accuracy of chosen options against the gold answers of a multiple-choice math benchmark."""
    if len(picked) != len(bench.examples):
        raise ValueError(f"{len(picked)} choices for {len(bench.examples)} examples")
    verdicts = [p == str(e["answer"]) for p, e in zip(picked, bench.examples, strict=True)]
    return EvalResult(
        bench.name, bench.split, "math", len(verdicts), sum(verdicts), 0, (), bench.fingerprint(), verdicts,
        method=LOGLIK,
    )  # fmt: skip


def has_choices(bench: Benchmark) -> bool:
    """True when every example carries ``choices`` (a multiple-choice benchmark)."""
    return bool(bench.examples) and all(e.get("choices") for e in bench.examples)


def evaluate_student(
    student, bench: Benchmark, settings: Settings, embed=None, method: str | None = None
) -> EvalResult:
    """Accuracy of a loaded student on a benchmark.

    Args:
        student: a :class:`~prismatic.train.probe.ProbeStudent` or :class:`~prismatic.train.lm.LMStudent`.
        bench: the benchmark.
        settings: for the NLI prompt template, the eval method, generation length and batch size.
        embed: text → embedding function for a probe (default: the cached encoder of the settings).
        method: ``loglik`` or ``generate`` for an lm student (default ``train.eval_method``).
    """
    if len(bench) == 0:
        raise PrismError(f"benchmark {bench.name} has no examples")
    kind = getattr(student, "kind", None)
    if kind == "probe":
        return _evaluate_probe(student, bench, settings, embed)
    if kind == "lm":
        method = method or settings.train.eval_method
        if method not in (LOGLIK, GENERATE):
            raise PrismError(f"unknown eval method {method!r}; choose loglik or generate")
        if method == LOGLIK and (bench.task == "nli" or has_choices(bench)):
            return _evaluate_lm_loglik(student, bench, settings)
        return _evaluate_lm_generate(student, bench, settings)
    raise PrismError(f"cannot evaluate a {type(student).__name__}: not a student")


def _evaluate_probe(student, bench: Benchmark, settings: Settings, embed) -> EvalResult:
    if bench.task != "nli":
        raise PrismError(
            f"the probe student answers NLI only; {bench.name} is a {bench.task} benchmark",
            hint="evaluate math benchmarks with an lm student",
        )
    if embed is None:
        from prismatic.train.data import embedder_for

        embed = embedder_for(settings)
    preds = student.predict_nli(
        [e["premise"] for e in bench.examples], [e["hypothesis"] for e in bench.examples], embed
    )
    return score_nli(preds, bench, CLASSIFIER)


def nli_prompts(bench: Benchmark, settings: Settings) -> list[str]:
    template = settings.ingest.nli_prompt_template
    return [template.format(premise=e["premise"], hypothesis=e["hypothesis"]) for e in bench.examples]


def _evaluate_lm_loglik(student, bench: Benchmark, settings: Settings) -> EvalResult:
    from prismatic.train.loglik import choose

    cfg = settings.train
    if bench.task == "nli":
        words = list(settings.ingest.nli_labels)
        prompts, options = nli_prompts(bench, settings), [words] * len(bench)
    else:
        prompts = [e["problem"] for e in bench.examples]
        options = [[str(c) for c in e["choices"]] for e in bench.examples]
    scores = student.option_scores(prompts, options, max_tokens=cfg.max_tokens, batch_size=cfg.eval_batch_size)
    picks = [opts[k] for opts, k in zip(options, choose(scores, cfg.loglik_normalize), strict=True)]
    if bench.task == "nli":
        return score_nli([canonical_label(p) for p in picks], bench, LOGLIK)
    return score_math_choices(picks, bench)


def _evaluate_lm_generate(student, bench: Benchmark, settings: Settings) -> EvalResult:
    cfg = settings.train
    if bench.task == "nli":
        raw = student.predict_nli(
            [e["premise"] for e in bench.examples],
            [e["hypothesis"] for e in bench.examples],
            settings.ingest.nli_prompt_template,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.eval_batch_size,
        )
        return score_nli([parse_nli_answer(t) for t in raw], bench, GENERATE)
    raw = student.generate(
        [e["problem"] for e in bench.examples], max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size
    )
    return score_math(raw, bench)


def load_benchmarks(specs: Sequence[str], limit: int | None, seed: int) -> list[Benchmark]:
    return [load_benchmark(s).sample(limit, seed) for s in specs]


def method_for(kind: str, bench: Benchmark, settings: Settings, method: str | None = None) -> str:
    """The method :func:`evaluate_student` scores a ``kind`` student on ``bench`` with (what its row records)."""
    if kind == "probe":
        return CLASSIFIER
    method = method or settings.train.eval_method
    if method == LOGLIK and not (bench.task == "nli" or has_choices(bench)):
        return GENERATE
    return method


def _load_for_eval(settings: Settings, model_path: str | Path | None):
    """(student, manifest, folder or URI, registered ``{name, version, uri}`` or None) of ``--model``."""
    from prismatic.train.registry import fetch_registered, is_model_uri
    from prismatic.train.students import latest_student, load_student, read_manifest

    if is_model_uri(model_path):
        folder, manifest, res = fetch_registered(settings, str(model_path))
        student = load_student(folder, settings)
        registered = {"name": res.name, "version": res.version, "uri": res.source} if res.version else None
        return student, manifest, res.uri, registered
    folder = Path(model_path).expanduser() if model_path else latest_student(settings)
    student = load_student(folder, settings)
    try:
        manifest = read_manifest(folder)
    except PrismError:
        manifest = {"student_id": folder.resolve().name, "kind": student.kind, "lineage": {}}
    return student, manifest, str(folder), manifest.get("registered")


def _recorded(store: TableStore, student_id: str) -> dict[tuple[str, str], dict]:
    """The ``eval_results`` rows of a student by (benchmark, eval_method)."""
    if not store.exists("eval_results"):
        return {}
    import pyarrow.compute as pc

    t = store.read_arrow("eval_results")
    t = t.filter(pc.equal(t["run_id"], student_id))
    return {(r["benchmark"], r.get("eval_method")): r for r in t.to_pylist()}


def _unchanged(prev: dict | None, bench: Benchmark) -> bool:
    if prev is None:
        return False
    try:
        return json.loads(prev.get("lineage") or "{}").get("benchmark_sha") == bench.fingerprint()
    except json.JSONDecodeError:
        return False


def eval_stage(
    store: TableStore,
    settings: Settings,
    model_path: str | Path | None = None,
    benchmarks: Sequence[str] | None = None,
    method: str | None = None,
) -> list[dict]:
    """Evaluate a student on benchmarks → MERGE rows into ``eval_results`` and log an MLflow run ``eval``.

    Idempotent: a benchmark the same student was already evaluated on with the same method and the same content
    (``benchmark_sha``; a sampled benchmark's name carries its size and seed) is not evaluated again, and when
    nothing is new no table version and no MLflow run is written; its recorded row is returned with
    ``status: unchanged``. A registered student (trained with tracking, or ``--model models:/...``) then has its
    ``champion`` alias reconsidered (:func:`prismatic.train.registry.consider_champion`).

    Args:
        store: the table store.
        settings: ``train.benchmarks`` / ``train.eval_limit`` / ``train.seed`` / ``train.eval_method`` are the
            defaults.
        model_path: a student folder, or a model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
            ``runs:/ID/model``); default the latest student trained under the data root.
        benchmarks: builtin names or JSONL / task.json files (default ``train.benchmarks``).
        method: ``loglik`` or ``generate`` for an lm student (default ``train.eval_method``).

    Returns:
        One row per benchmark (the ``eval_results`` columns, plus ``status``: evaluated / unchanged, and
        ``champion``: the alias decision when the student is registered).
    """
    from prismatic import tracking

    student, manifest, model_ref, registered = _load_for_eval(settings, model_path)
    sid = manifest["student_id"]
    specs = list(benchmarks or settings.train.benchmarks)
    if not specs:
        raise PrismError("no benchmark to evaluate on", hint="pass --benchmark NAME|FILE or set train.benchmarks")
    benches = load_benchmarks(specs, settings.train.eval_limit, settings.train.seed)
    recorded = _recorded(store, sid)
    todo = [
        b for b in benches if not _unchanged(recorded.get((b.name, method_for(student.kind, b, settings, method))), b)
    ]
    new_rows: list[dict] = []
    if todo:
        new_rows = _evaluate_and_log(settings, student, manifest, model_ref, registered, todo, method, tracking)
        store.merge(
            "eval_results", pa.Table.from_pylist(new_rows, schema=table_def("eval_results").schema), update=True
        )
    by_name = {r["benchmark"]: {**r, "status": "evaluated"} for r in new_rows}
    rows = []
    for b in benches:
        if b.name in by_name:
            rows.append(by_name[b.name])
        else:
            prev = recorded[(b.name, method_for(student.kind, b, settings, method))]
            log.info("%s on %s (%s): unchanged, accuracy %.4f", sid, b.name, prev["eval_method"], prev["accuracy"])
            rows.append({**prev, "status": "unchanged"})
    if registered and new_rows and settings.tracking.enabled:
        from prismatic.train.registry import consider_champion

        decision = consider_champion(settings, registered["name"], registered["version"], rows)
        for r in rows:
            r["champion"] = decision
    return rows


def _evaluate_and_log(settings, student, manifest, model_ref, registered, benches, method, tracking) -> list[dict]:
    """Evaluate on ``benches`` under an MLflow run ``eval``; the ``eval_results`` rows."""
    sid = manifest["student_id"]
    nested = False
    if settings.tracking.enabled:
        import mlflow

        nested = mlflow.active_run() is not None
    tags = {"student_id": sid, "student_kind": student.kind, "student_path": model_ref}
    if registered:
        tags.update({"model_uri": registered["uri"], "model_version": registered["version"]})
    params = {"benchmarks": ",".join(b.name for b in benches)}
    if student.kind == "lm":
        params["eval_method"] = method or settings.train.eval_method
    rows: list[dict] = []
    with tracking.run(settings, "eval", nested=nested, tags=tags, params=params) as run:
        for b in benches:
            res = evaluate_student(student, b, settings, method=method)
            log.info(
                "%s on %s: accuracy %.4f (%d / %d, %d unparsed, %s)",
                sid, b.name, res.accuracy, res.correct, res.n, res.unparsed, res.method,
            )  # fmt: skip
            row = eval_row(
                sid, model_ref, student.kind, b, res, manifest.get("lineage", {}),
                run.info.run_id if run is not None else None,
            )  # fmt: skip
            if registered:
                row.update({"model_uri": registered["uri"], "model_version": registered["version"]})
            rows.append(row)
            if run is not None:
                import mlflow

                key = re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", b.name)
                mlflow.log_metrics({f"{key}_accuracy": res.accuracy, f"{key}_unparsed": res.unparsed})
                if b.task == "nli":
                    mlflow.log_metric(f"{key}_balanced_accuracy", res.balanced_accuracy)
    return rows


def eval_row(
    student_id: str, model: str, kind: str, bench: Benchmark, res: EvalResult, lineage: dict,
    mlflow_run_id: str | None, *, with_source: bool = True,
) -> dict:  # fmt: skip
    """One ``eval_results`` row: a student's result on one benchmark, with the method and lineage."""
    bal = res.balanced_accuracy
    extra = {"benchmark_sha": res.fingerprint, **({"source": bench.source} if with_source else {})}
    return {
        "run_id": student_id, "benchmark": bench.name, "model": model, "split": bench.split,
        "accuracy": res.accuracy, "n": res.n, "created_at": datetime.now(UTC), "student_kind": kind,
        "task": bench.task, "labels": ",".join(bench.labels), "n_correct": res.correct, "n_unparsed": res.unparsed,
        "subset_id": lineage.get("subset_id"), "study_id": lineage.get("study_id"), "mlflow_run_id": mlflow_run_id,
        "lineage": json.dumps({**lineage, **extra}, default=str),
        "eval_method": res.method, "balanced_accuracy": None if math.isnan(bal) else bal,
    }  # fmt: skip


def train_and_evaluate(
    store: TableStore, settings: Settings, student: str | None = None, benchmarks: Sequence[str] | None = None
) -> dict:
    """Train a student on the whole pool of ``train.task`` and evaluate it: the end of a synthesis round.

    Both MLflow runs nest under the active run (the round's), so MLflow shows, round by round, G-Vendi next to
    ID and OOD accuracy. Returns ``student_id``, ``n_train``, ``<benchmark>_accuracy`` per benchmark and the means
    ``id_accuracy`` / ``ood_accuracy`` over the benchmarks of each split (absent when a split has none): the metric
    names the notebooks read.
    """
    from prismatic.train.students import train_stage

    rep = train_stage(store, settings, student)
    rows = eval_stage(store, settings, model_path=rep.path, benchmarks=benchmarks)
    out: dict = {"student_id": rep.student_id, "n_train": rep.n_train}
    for r in rows:
        out[f"{r['benchmark']}_accuracy"] = r["accuracy"]
    for split in ("id", "ood"):
        accs = [r["accuracy"] for r in rows if r["split"] == split]
        if accs:
            out[f"{split}_accuracy"] = sum(accs) / len(accs)
    return out
