"""Generate-filter-train: after a round, train the student on the task's pool and evaluate it ID and OOD.

Why: what users of this tool come for is the comparison, round by round, of the pool's diversity with the accuracy
of a model trained on it. With ``synth.train_each_round`` every (round, task) — and round 0, the task's seed pool,
the baseline — trains ``train.student`` on exactly the task's pool rows of rounds <= r (ids passed explicitly, so a
resumed or out-of-order run trains on the same set), then evaluates it on the benchmarks of ``train.benchmarks``
whose task is the round's task (``synth.round_student`` / ``synth.round_benchmarks`` override those two keys, so
the demo can train an lm student on math per round while ``prism train`` keeps its own defaults). The student id
is a hash of the training ids and settings, so a round re-run after a crash reuses the checkpoint; the train and
eval runs nest under the round's MLflow child run. The lm student is scored by ``train.eval_method`` like ``prism
eval`` (option log-likelihood for NLI and multiple-choice math, generation + answer parsing otherwise); each
``eval_results`` row of the round says which.

Everything that can be checked before any work starts is: the probe student answers NLI only, and each task needs
at least one benchmark of its own task (one clear error naming the key, not a failure after an hour of generation).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.tables import TableStore

log = logging.getLogger(__name__)


def resolve_benchmark(spec: str) -> str:
    """A builtin benchmark name unchanged; a relative file path resolved like ``demo.inputs`` (repo root, wheel)."""
    from prismatic.inputs import resolve_input_path
    from prismatic.train.benchmarks import BUILTINS

    if spec in BUILTINS:
        return spec
    name, sep, path = spec.partition("=")
    if sep and not path.startswith("asset:") and "/" not in name:
        return f"{name}={resolve_input_path(path)}"
    return resolve_input_path(spec)


@dataclass(frozen=True)
class RoundTrainer:
    """Which student to train per round and on which benchmarks to evaluate it, per task."""

    student: str
    benchmarks: dict[str, list[str]]  # task -> resolved benchmark specs

    @classmethod
    def plan(cls, settings: Settings, tasks: list[str]) -> RoundTrainer:
        """Check the training config against the synthesized tasks; load each benchmark once to learn its task.

        Raises:
            PrismError: the probe for a non-NLI task, or a task without a benchmark of its task.
        """
        from prismatic.train.benchmarks import load_benchmark

        student = settings.synth.round_student or settings.train.student
        if student == "probe" and any(t != "nli" for t in tasks):
            raise PrismError(
                f"synth.train_each_round trains the probe student (an NLI classifier) on the {tasks} pools",
                hint="set synth.round_student=lm for math, or synth.tasks=[nli]",
            )
        specs = settings.synth.round_benchmarks
        specs, key = (
            (specs, "synth.round_benchmarks") if specs is not None else (settings.train.benchmarks, "train.benchmarks")
        )
        by_task: dict[str, list[str]] = {t: [] for t in tasks}
        splits: dict[str, dict[str, str]] = {t: {} for t in tasks}
        for spec in specs:
            resolved = resolve_benchmark(spec)
            bench = load_benchmark(resolved)
            if bench.task in by_task:
                by_task[bench.task].append(resolved)
                splits[bench.task][bench.name] = bench.split
        missing = [t for t, b in by_task.items() if not b]
        if missing:
            raise PrismError(
                f"synth.train_each_round: {key} {list(specs)} has no benchmark of task {', '.join(missing)}",
                hint="add ID / OOD benchmark files of that task (JSONL {problem, answer} or {premise, hypothesis,"
                f" label}}) to {key}",
            )
        for t in tasks:
            if "ood" not in splits[t].values():
                log.warning("task %s: no OOD benchmark in %s; rounds report ID accuracy only", t, key)
        return cls(student, by_task)

    def train(self, store: TableStore, settings: Settings, rnd: int, task: str, report) -> None:
        """Train on the task's pool rows of rounds <= ``rnd``, evaluate, fill ``report`` (student id, accuracies)."""
        import pyarrow.compute as pc

        from prismatic.train.data import pool_arrow
        from prismatic.train.evaluate import eval_stage
        from prismatic.train.students import train_stage

        t0 = time.perf_counter()
        rows = pool_arrow(store, task=task, columns=["sample_id", "round"])
        ids = rows.filter(pc.less_equal(rows["round"], rnd))["sample_id"].to_pylist()
        tsettings = settings.model_copy(update={"train": settings.train.model_copy(update={"task": task})})
        rep = train_stage(store, tsettings, self.student, ids)
        report.seconds["train"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        results = eval_stage(store, tsettings, model_path=rep.path, benchmarks=self.benchmarks[task])
        report.seconds["eval"] = round(time.perf_counter() - t1, 2)
        report.student_id = rep.student_id
        report.accuracies = {
            r["benchmark"]: {"split": r["split"], "accuracy": r["accuracy"], "n": r["n"]} for r in results
        }
        log.info(
            "round %d (%s): %s student %s on %d samples: %s",
            rnd,
            task,
            rep.kind,
            rep.student_id,
            rep.n_train,
            ", ".join(f"{b} {a['accuracy']:.3f}" for b, a in report.accuracies.items()),
        )
