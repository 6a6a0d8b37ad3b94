"""The equal-budget guidance experiment: does steering synthesis toward sparse regions of gradient space pay?

``prism experiment guidance`` grows one seed pool K ways with the same generator, verification, rounds and
generation budget, one *arm* per way of steering, each in its own data root under
``<data_root>/experiments/guidance/<arm>/seed-<s>`` (the same seed rows, and their vectors, copied into each):

* ``gradient``: exemplars from the sparse clusters of gradient space, candidates kept when nearest a sparse
  cluster (the paper);
* ``embedding``: the same in sentence-embedding space (``cluster.feature_space = embedding``);
* ``unguided``: exemplars drawn uniformly from the pool; candidates verified, deduplicated and decontaminated but
  not filtered by cluster (``synth.exemplar_draw = random``, ``synth.sparse_filter = false``);
* ``random_exemplar``: exemplars drawn uniformly, the gradient sparse filter kept (isolates the filter).

After an arm's rounds the same student (``synth.round_student`` / ``synth.round_benchmarks``, the per-round keys)
is trained on its grown pool and evaluated ID and OOD (:class:`~prismatic.synth.roundtrain.RoundTrainer`). One
row per (arm, seed) goes to the ``guidance`` table of the main data root; MLflow gets one parent run
``guidance`` with one child per arm (the arm's own synthesize, round, train and eval runs nest under it) whose
metrics are the row's values, and a bar plot of OOD accuracy and G-Vendi per arm on the parent.

Budget: ``synth.token_budget`` (the loop stops between rounds once an arm has spent it) or, without one, the
number of generation calls ``rounds * synth.calls_per_round``. Resume: an (arm, seed) with a row is skipped; an arm
killed mid-way resumes through its rounds' own resume (its data root keeps its ``rounds`` table, the generator
cache is shared under ``<data_root>/synth_cache``), and its MLflow child run is found again by its tags.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.stages.base import Context, Option, Stage
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

# arm -> (cluster.feature_space, synth.exemplar_draw, synth.sparse_filter)
ARMS: dict[str, tuple[str, str, bool]] = {
    "gradient": ("gradient", "sparse", True),
    "embedding": ("embedding", "sparse", True),
    "unguided": ("gradient", "random", False),
    "random_exemplar": ("gradient", "random", True),
}
METRICS = (
    "rounds", "budget", "tokens_used", "calls_used", "candidates", "accepted", "accepted_samples", "pool_before",
    "pool_after", "g_vendi_before", "g_vendi_after", "embedding_vendi_after", "id_accuracy", "ood_accuracy",
)  # fmt: skip


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if not arms or unknown or len(set(arms)) != len(arms):
        raise PrismError(
            f"--arms {text!r}: give each arm once, from {', '.join(ARMS)}",
            hint="prism experiment guidance --arms gradient,unguided",
        )
    return arms


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise PrismError(f"--seeds {text!r}: give distinct integers >= 0, comma-separated", hint="--seeds 0,1")
    return seeds


def arm_root(settings: Settings, arm: str, seed: int) -> Path:
    return settings.root / "experiments" / "guidance" / arm / f"seed-{seed}"


def arm_settings(settings: Settings, arm: str, seed: int, task: str, rounds: int, calls: int | None) -> Settings:
    """The main settings with the arm's switches, the seed, one task, and the arm's data root; MLflow stays the main
    root's (the arm's runs nest under its child run), the generator cache is shared."""
    from prismatic import tracking

    space, draw, sparse_filter = ARMS[arm]
    synth = settings.synth.model_copy(
        update={
            "exemplar_draw": draw,
            "sparse_filter": sparse_filter,
            "seed": seed,
            "task": task,
            "tasks": None,
            "rounds": rounds,
            "train_each_round": False,  # the student is trained once, on the grown pool, by the experiment
            **({"calls_per_round": calls} if calls else {}),
        }
    )
    update: dict[str, Any] = {
        "data_root": str(arm_root(settings, arm, seed)),
        "synth": synth,
        "cluster": settings.cluster.model_copy(update={"feature_space": space, "seed": seed}),
        "train": settings.train.model_copy(update={"seed": seed}),
    }
    if settings.tracking.enabled:
        update["tracking"] = settings.tracking.model_copy(update={"tracking_uri": tracking.tracking_uri(settings)})
    return settings.model_copy(update=update)


# ---- the seed pool --------------------------------------------------------------------------------------------


def seed_rows(source: TableStore, task: str) -> tuple[pa.Table, pa.Table | None]:
    """The task's round-0 pool rows of ``source`` and their stored vectors (every spec), as Arrow tables."""
    import pyarrow.compute as pc

    from prismatic.tables import table_def
    from prismatic.train.data import pool_arrow

    if not source.exists("samples"):
        raise PrismError(
            "the seed data root has no samples", hint="ingest a seed pool first (prism ingest ... --task)"
        )
    cols = [f.name for f in table_def("samples").schema]
    rows = pool_arrow(source, task=task, columns=cols)
    rows = rows.filter(pc.equal(pc.fill_null(rows["round"], 0), 0)).select(cols)
    if rows.num_rows == 0:
        raise PrismError(
            f"the seed data root has no {task} rows of round 0", hint=f"prism ingest SEED.jsonl --task {task}"
        )
    vectors = None
    if source.exists("gradients"):
        g = source.read_arrow("gradients")
        vectors = g.filter(pc.is_in(g["sample_id"], value_set=rows["sample_id"].combine_chunks()))
    return rows, vectors


def copy_seed(store: TableStore, rows: pa.Table, vectors: pa.Table | None) -> None:
    """MERGE the seed rows (and their vectors) into an arm's store: a keyed MERGE, so a resumed arm adds nothing."""
    store.merge("samples", rows)
    if vectors is not None and vectors.num_rows:
        store.merge("gradients", vectors)


# ---- one arm ------------------------------------------------------------------------------------------------


@dataclass
class ArmResult:
    arm: str
    seed: int
    row: dict
    skipped: bool = False  # finished before this call (its row was in the table)


def _sum(rows: list[dict], key: str) -> int:
    return int(sum(r[key] or 0 for r in rows))


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def guidance_row(arm: str, seed: int, task: str, budget: tuple[str, int], calls: int, state: dict, report) -> dict:
    """The arm's ``guidance`` row from its ``rounds`` table (``state``: (round, task) -> row) and its student."""
    from prismatic.synth.types import RoundStatus

    done = [r for (rnd, t), r in sorted(state.items()) if t == task and rnd >= 1 and r["status"] == RoundStatus.DONE]
    others = [r for (rnd, t), r in sorted(state.items()) if t == task and rnd >= 1 and r["status"] != RoundStatus.DONE]
    last, first = (done[-1], done[0]) if done else (None, None)
    detail = "; ".join(f"round {r['round']} {r['status']}: {r['detail'] or ''}".strip() for r in others) or None
    return {
        "arm": arm, "seed": seed, "task": task, "rounds": len(done), "budget_kind": budget[0], "budget": budget[1],
        "tokens_used": _sum(done, "tokens"), "calls_used": calls * len(done), "candidates": _sum(done, "candidates"),
        "accepted": _sum(done, "accepted"), "accepted_samples": _sum(done, "accepted_samples"),
        "pool_before": first["pool_before"] if first else None, "pool_after": last["pool_after"] if last else None,
        "g_vendi_before": _num(first["gvendi_before"]) if first else None,
        "g_vendi_after": _num(last["gvendi_after"]) if last else None,
        "embedding_vendi_after": _num(last["emb_vendi_after"]) if last else None,
        "id_accuracy": _num(report.id_accuracy), "ood_accuracy": _num(report.ood_accuracy),
        "accuracies": json.dumps(report.accuracies, sort_keys=True), "student_id": report.student_id,
        "detail": detail,
    }  # fmt: skip


def child_metrics(row: dict) -> dict[str, float]:
    """The MLflow metrics of an arm's child run: the row's numbers, and each benchmark's accuracy."""
    from prismatic.synth.rounds import metric_key

    out = {k: float(row[k]) for k in METRICS if row.get(k) is not None}
    for bench, a in json.loads(row.get("accuracies") or "{}").items():
        out[f"{metric_key(bench)}_accuracy"] = float(a["accuracy"])
    return out


def _find_run(settings: Settings, tags: dict[str, str]) -> str | None:
    """The newest MLflow run carrying all ``tags`` (a parent or child to resume), or None."""
    if not settings.tracking.enabled:
        return None
    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow.search_runs(filter_string=flt, order_by=["attributes.start_time DESC"], output_format="list")
    return runs[0].info.run_id if runs else None


def run_arm(
    main: TableStore,
    settings: Settings,
    arm: str,
    seed: int,
    task: str,
    rounds: int,
    calls: int | None,
    budget: tuple[str, int],
    seed_data: tuple[pa.Table, pa.Table | None],
    generator,
    parent_id: str | None,
    console=None,
) -> dict:
    """Grow the seed pool in the arm's data root, train and evaluate the student, return its ``guidance`` row."""
    from prismatic import tracking
    from prismatic.synth.loop import synthesize
    from prismatic.synth.rounds import RoundReport, round_state
    from prismatic.synth.roundtrain import RoundTrainer
    from prismatic.tables import open_store

    s = arm_settings(settings, arm, seed, task, rounds, calls)
    store = open_store(s, main._spark)
    trainer = RoundTrainer.plan(s, [task])  # checked before any generation
    copy_seed(store, *seed_data)
    tags = {"guidance.arm": arm, "guidance.seed": str(seed), "guidance.parent": parent_id or ""}
    child_id = _find_run(s, tags) if parent_id else None
    space, draw, sparse_filter = ARMS[arm]
    params = {"arm": arm, "seed": seed, "budget": f"{budget[0]}:{budget[1]}", "feature_space": space,
              "exemplar_draw": draw, "sparse_filter": sparse_filter, "task": task}  # fmt: skip
    with tracking.run(
        s, f"arm-{arm}-seed-{seed}", nested=True, stage="experiment.guidance.arm", tags=tags, run_id=child_id
    ) as child:
        if child is not None and child_id is None:
            import mlflow

            mlflow.log_params({k: str(v) for k, v in params.items()})
        token_budget = budget[1] if budget[0] == "tokens" else None
        synthesize(store, s, rounds=rounds, generator=generator, token_budget=token_budget, console=console)
        state = round_state(store)
        done = [r for (rnd, t), r in state.items() if t == task and rnd >= 1 and r["status"] == "done"]
        last = max((r["round"] for r in done), default=0)
        report = RoundReport(last, task)
        trainer.train(store, s, last, task, report)
        row = guidance_row(arm, seed, task, budget, s.synth.calls_per_round, state, report)
        row.update(
            data_root=str(s.root),
            mlflow_run_id=child.info.run_id if child is not None else None,
            mlflow_parent_run_id=parent_id,
            finished_at=datetime.now(UTC),
        )
        if child is not None:
            import mlflow

            if report.student_id:
                mlflow.set_tag("student_id", report.student_id)
            mlflow.log_metrics(child_metrics(row))
    main.merge("guidance", pa.Table.from_pylist([row]), update=True)
    return row


# ---- the experiment -----------------------------------------------------------------------------------------


@dataclass
class GuidanceReport:
    """What one ``prism experiment guidance`` call did: one result per (arm, seed), the ones run and the skipped."""

    results: list[ArmResult] = field(default_factory=list)
    parent_run_id: str | None = None

    def rows(self) -> list[dict]:
        return [{**{k: v for k, v in r.row.items() if k != "finished_at"}, "skipped": r.skipped} for r in self.results]

    def summary(self) -> str:
        ran = sum(not r.skipped for r in self.results)
        return f"guidance: {ran} arm run(s) done, {len(self.results) - ran} already in the table"


def experiment_guidance(
    ctx: Context,
    arms: list[str],
    seeds: list[int],
    rounds: int | None = None,
    calls: int | None = None,
    token_budget: int | None = None,
    seed_root: Path | None = None,
    task: str | None = None,
    generator=None,
    console=None,
) -> GuidanceReport:
    """Run every (seed, arm) not in the ``guidance`` table yet; see the module docstring.

    Args:
        rounds: synthesis rounds per arm (default ``synth.rounds``).
        calls: generation calls per round (default ``synth.calls_per_round``).
        token_budget: generated tokens per arm (default ``synth.token_budget``); the loop stops between rounds.
        seed_root: the data root whose round-0 pool of ``task`` seeds every arm (default: the main one).
        generator: a ``Generator`` (tests); default ``synth.generator`` with the cache under ``<data_root>``.
    """
    from prismatic import tracking
    from prismatic.synth.cache import SQLiteRequestCache
    from prismatic.synth.generators import make_generator
    from prismatic.synth.roundtrain import RoundTrainer
    from prismatic.tables import open_store

    settings, main = ctx.settings, ctx.store
    task = task or settings.synth.task
    rounds = rounds or settings.synth.rounds
    calls = calls or settings.synth.calls_per_round
    token_budget = token_budget or settings.synth.token_budget
    budget = ("tokens", int(token_budget)) if token_budget else ("calls", rounds * calls)
    RoundTrainer.plan(settings, [task])  # a missing benchmark fails now, not after an hour of generation
    done = set()
    if main.exists("guidance"):
        done = {(r["arm"], r["seed"]): r for r in main.read_arrow("guidance").to_pylist()}
    report = GuidanceReport()
    todo = [(a, s) for s in seeds for a in arms if (a, s) not in done]
    if not todo:
        report.results = [ArmResult(a, s, done[(a, s)], skipped=True) for s in seeds for a in arms]
        return report
    if seed_root is None:
        source = main
        _score_seed(ctx, task)  # once here instead of once per arm (the arms get the vectors)
    else:
        source = open_store(settings.model_copy(update={"data_root": str(seed_root)}), main._spark)
    seed_data = seed_rows(source, task)
    if generator is None:
        generator = make_generator(settings.synth.generator, SQLiteRequestCache(settings.root / "synth_cache"))
    parent_tags = {"guidance.task": task, "guidance.budget": f"{budget[0]}:{budget[1]}"}
    parent_id = _find_run(settings, {**parent_tags, "prismatic.stage": "experiment.guidance"})
    params = {"task": task, "budget": f"{budget[0]}:{budget[1]}", "rounds": rounds, "calls_per_round": calls,
              "arms": ",".join(arms), "seeds": ",".join(map(str, seeds)),
              "generator": f"{generator.backend}:{generator.model}"}  # fmt: skip
    with tracking.run(
        settings, "guidance", stage="experiment.guidance", tags=parent_tags, params=None, run_id=parent_id
    ) as parent:
        pid = parent.info.run_id if parent is not None else None
        if parent is not None and parent_id is None:
            import mlflow

            mlflow.log_params({k: str(v) for k, v in params.items()})
        for seed in seeds:
            for arm in arms:
                if (arm, seed) in done:
                    report.results.append(ArmResult(arm, seed, done[(arm, seed)], skipped=True))
                    continue
                log.info("guidance: arm %s, seed %d", arm, seed)
                row = run_arm(
                    main, settings, arm, seed, task, rounds, calls, budget, seed_data, generator, pid, console
                )
                report.results.append(ArmResult(arm, seed, row))
                if console is not None:
                    console.print(_line(row))
        if parent is not None:
            import mlflow

            fig = guidance_figure(main.read_arrow("guidance").to_pylist())
            if fig is not None:
                mlflow.log_figure(fig, "guidance.png")
    report.parent_run_id = pid
    return report


def _score_seed(ctx: Context, task: str) -> None:
    from prismatic.stages.common import PoolFilter
    from prismatic.stages.score import score_pool

    score_pool(ctx, PoolFilter(task=task, round_below=1))


def _line(row: dict) -> str:
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    return (
        f"guidance {row['arm']} (seed {row['seed']}): {row['rounds']} round(s), {row['tokens_used']} tokens,"
        f" accepted {row['accepted']}/{row['candidates']}; pool {row['pool_before']} -> {row['pool_after']};"
        f" G-Vendi {f(row['g_vendi_after'])}, emb Vendi {f(row['embedding_vendi_after'])};"
        f" ID {f(row['id_accuracy'])}, OOD {f(row['ood_accuracy'])}"
    )


def guidance_figure(rows: list[dict]):
    """Two bar panels, one bar per arm (mean over seeds, each seed a dot): OOD accuracy and pool G-Vendi."""
    if not rows:
        return None
    from prismatic.synth.rounds import _figure, _finish

    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
    fig, ax = _figure(9.0, 3.6)
    fig.clf()
    axes = fig.subplots(1, 2)
    for panel, (key, label) in zip(
        axes, (("ood_accuracy", "OOD accuracy"), ("g_vendi_after", "G-Vendi")), strict=True
    ):
        for i, arm in enumerate(arms):
            vals = [r[key] for r in rows if r["arm"] == arm and r[key] is not None]
            if vals:
                panel.bar(i, sum(vals) / len(vals), color="#1f77b4" if arm != "gradient" else "#d62728")
                panel.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        panel.set_xticks(range(len(arms)), arms, rotation=20)
        panel.set(title=f"{label} per arm (bar: mean over seeds)", ylabel=label)
    return _finish(fig, axes[0])


def guidance_table(report: GuidanceReport):
    """A rich table of the report's rows."""
    from rich.table import Table

    t = Table(title="guidance experiment: one row per arm and seed")
    cols = ("arm", "seed", "rounds", "tokens", "accepted", "pool", "G-Vendi", "emb Vendi", "ID acc", "OOD acc", "")
    for col in cols:
        t.add_column(col, justify="left" if col in ("arm", "") else "right")

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    for r in report.results:
        row = r.row
        t.add_row(
            row["arm"],
            str(row["seed"]),
            str(row["rounds"]),
            str(row["tokens_used"]),
            f"{row['accepted']}/{row['candidates']}",
            f"{row['pool_before']} -> {row['pool_after']}",
            f(row["g_vendi_after"]),
            f(row["embedding_vendi_after"]),
            f(row["id_accuracy"]),
            f(row["ood_accuracy"]),
            "(done before)" if r.skipped else "",
        )
    return t


class GuidanceExperiment(Stage):
    """``prism experiment guidance``: a command built like a stage's (its options, ``--format``), not a pipeline
    stage (not in the registry, so ``prism run`` and the jobs do not run it)."""

    name = "guidance"
    help = (
        "Equal-budget guidance experiment: grow one seed pool per arm (gradient, embedding, unguided,"
        " random_exemplar) with the same generator and budget, train and evaluate the same student on each;"
        " writes the `guidance` table; resumable."
    )
    section = "synth"
    reads = ("samples", "gradients", "guidance")
    writes = ("guidance", "gradients", "projection_specs")
    options = (
        Option("arms", default=",".join(ARMS), help=f"comma-separated arms from {', '.join(ARMS)}"),
        Option("seeds", default="0", help="comma-separated seeds; each arm runs once per seed"),
        Option("rounds", kind=int, min=1, help="synthesis rounds per arm (default synth.rounds)"),
        Option("calls", kind=int, min=1, help="generation calls per round (default synth.calls_per_round)"),
        Option("token_budget", kind=int, min=1, help="generated tokens per arm (default synth.token_budget)"),
        Option("seed_root", kind=Path, help="data root whose round-0 pool seeds the arms (default: data_root)"),
        Option("task", choices=("math", "nli"), help="the task grown (default synth.task)"),
    )

    def check(self, settings: Settings, *, arms, seeds, seed_root=None, **_: Any) -> None:
        """Usage errors before Spark starts."""
        parse_arms(arms)
        parse_seeds(seeds)
        if seed_root is not None and not (Path(seed_root) / "tables").is_dir():
            raise PrismError(f"--seed-root {seed_root}: no tables folder there", hint="give a data root (data_root=)")

    def run(self, ctx: Context, *, arms, seeds, rounds, calls, token_budget, seed_root, task):
        return experiment_guidance(
            ctx,
            parse_arms(arms),
            parse_seeds(seeds),
            rounds=rounds,
            calls=calls,
            token_budget=token_budget,
            seed_root=seed_root,
            task=task,
            console=ctx.console,
        )
