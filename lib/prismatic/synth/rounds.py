"""The record of a round: its report, its ``rounds`` row, its MLflow child run, the plots and the round table.

A round here is one round number for one task (``synth.tasks``; round 0 is a task's seed pool when
``synth.train_each_round`` is on). Its figures go to three places that must agree: the ``rounds`` table, the round's
MLflow child run and the table that ``prism run`` / ``prism synthesize`` print. One :class:`RoundReport` feeds all
three, so what MLflow shows is exactly what the table holds.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prismatic.config import Settings
from prismatic.synth.types import RoundStatus, Status
from prismatic.tables import TableStore

# The tables a round reads, whose versions at its start are its ``rounds.versions_read`` map (and the child run's
# ``versions_read.*`` tags): the pool and its vectors, the previous clustering, the candidates of a retried round.
ROUND_READS = ("samples", "duplicates", "gradients", "clusters", "assignments", "synth_candidates")
FINISHED = (RoundStatus.DONE,)  # statuses a later call does not redo ("skipped" is retried: the pool may have grown)


def _now() -> datetime:
    return datetime.now(UTC)


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def metric_key(name: str) -> str:
    """An MLflow-safe metric name for a benchmark (``snli_test@1000:0`` → ``snli_test@1000_0``)."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


@dataclass
class RoundReport:
    """What one (round, task) did; ``status`` is ``done``, ``incomplete`` or ``skipped`` (``detail`` says why)."""

    round: int
    task: str = "math"
    status: RoundStatus = RoundStatus.DONE
    detail: str = ""
    generated: int = 0
    accepted_candidates: int = 0
    accepted_samples: int = 0
    reasons: Counter = field(default_factory=Counter)
    tokens: int = 0
    contamination_hits: int = 0
    gvendi_before: float = float("nan")
    gvendi_after: float = float("nan")
    emb_vendi_before: float = float("nan")
    emb_vendi_after: float = float("nan")
    pool_before: int = 0
    pool_after: int = 0
    k: int = 0
    sparse_k: int = 0
    seconds: dict = field(default_factory=dict)
    resumed: bool = False
    feature_space: str = "gradient"
    spec_id: str = ""  # the scoring (gradient) spec: G-Vendi and the vectors written for accepted samples
    cluster_spec_id: str = ""  # the spec of the vectors clustered and filtered in (= spec_id for gradient)
    student_id: str | None = None
    accuracies: dict[str, dict] = field(default_factory=dict)  # benchmark -> {split, accuracy, n}
    notes: list[str] = field(default_factory=list)  # clear one-line remarks (e.g. an empty sparse cluster)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_candidates / self.generated if self.generated else 0.0

    def split_accuracy(self, split: str) -> float:
        """Mean accuracy over the benchmarks of ``split`` (``id`` / ``ood``); NaN when there is none."""
        accs = [a["accuracy"] for a in self.accuracies.values() if a["split"] == split]
        return sum(accs) / len(accs) if accs else float("nan")

    @property
    def id_accuracy(self) -> float:
        return self.split_accuracy("id")

    @property
    def ood_accuracy(self) -> float:
        return self.split_accuracy("ood")

    def summary(self) -> str:
        head = f"round {self.round} ({self.task})"
        if self.status == RoundStatus.SKIPPED:
            return f"{head}: skipped: {self.detail}"
        if self.round == 0:
            text = f"{head}: seed pool {self.pool_after}; G-Vendi {self.gvendi_after:.3f}"
        else:
            why = ", ".join(f"{k}: {v}" for k, v in sorted((str(k), v) for k, v in self.reasons.items()))
            text = (
                f"{head}: {self.generated} candidates -> {self.accepted_candidates} accepted"
                f" ({self.accepted_samples} samples); pool {self.pool_before} -> {self.pool_after};"
                f" G-Vendi {self.gvendi_before:.3f} -> {self.gvendi_after:.3f}; reasons {{{why}}}"
            )
        if self.student_id:
            accs = ", ".join(f"{b} {a['accuracy']:.3f}" for b, a in self.accuracies.items())
            text += f"; student {self.student_id}: {accs}"
        return text


# ---- the rounds table ---------------------------------------------------------------------------------------


def round_state(store: TableStore) -> dict[tuple[int, str], dict]:
    """Rows of ``rounds`` by (round, task)."""
    if not store.exists("rounds"):
        return {}
    return {(r["round"], r["task"]): r for r in store.read_arrow("rounds").to_pylist()}


def started_row(rnd: int, task: str, run_id: str | None, versions_read: dict) -> dict:
    return {
        "round": rnd,
        "task": task,
        "status": RoundStatus.STARTED,
        "mlflow_run_id": run_id,
        "versions_read": json.dumps(versions_read),
        "created_at": _now(),
    }


def rounds_row(report: RoundReport, run_id: str | None, versions_read: dict, versions_written: dict) -> dict:
    """The ``rounds`` row of a finished (done or skipped) round: the same figures the MLflow child run gets."""
    counts = {
        "generated": report.generated,
        "accepted_candidates": report.accepted_candidates,
        "accepted_samples": report.accepted_samples,
        "tokens": report.tokens,
        "contamination_hits": report.contamination_hits,
        **dict(report.reasons),
    }
    return {
        "round": report.round, "task": report.task, "status": report.status, "mlflow_run_id": run_id,
        "versions_read": json.dumps(versions_read), "versions_written": json.dumps(versions_written),
        "counts": json.dumps(counts), "gvendi_before": _num(report.gvendi_before),
        "gvendi_after": _num(report.gvendi_after), "created_at": _now(),
        "detail": "; ".join([report.detail, *report.notes]).strip("; ") or None,
        "pool_before": report.pool_before, "pool_after": report.pool_after,
        "emb_vendi_before": _num(report.emb_vendi_before), "emb_vendi_after": _num(report.emb_vendi_after),
        "candidates": report.generated, "accepted": report.accepted_candidates,
        "accepted_samples": report.accepted_samples, "tokens": report.tokens, "student_id": report.student_id,
        "id_accuracy": _num(report.id_accuracy), "ood_accuracy": _num(report.ood_accuracy),
        "accuracies": json.dumps(report.accuracies) if report.accuracies else None,
    }  # fmt: skip


def round_table(store: TableStore):
    """A rich table of every finished round: round, task, pool size, G-Vendi, accepted, ID / OOD accuracy."""
    from rich.table import Table

    t = Table(title="synthesis rounds (G-Vendi of the task's pool after the round)")
    for col in ("round", "task", "status", "pool", "G-Vendi", "emb Vendi", "accepted", "ID acc", "OOD acc"):
        t.add_column(col, justify="left" if col in ("task", "status") else "right")

    def f(x: float | None, digits: int) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    for (rnd, task), r in sorted(round_state(store).items()):
        accepted = "-" if rnd == 0 or r["candidates"] is None else f"{r['accepted'] or 0}/{r['candidates']}"
        t.add_row(
            str(rnd),
            task,
            r["status"],
            "-" if r["pool_after"] is None else str(r["pool_after"]),
            f(r["gvendi_after"], 3),
            f(r["emb_vendi_after"], 3),
            accepted,
            f(r["id_accuracy"], 3),
            f(r["ood_accuracy"], 3),
        )
    return t


# ---- MLflow ---------------------------------------------------------------------------------------------------


def round_run(settings: Settings, rnd: int, task: str, run_id: str | None, parent):
    """The round's MLflow child run (resumed by id after a crash), tagged like every other run."""
    if parent is None:
        return contextlib.nullcontext(None)
    from prismatic import tracking

    return tracking.run(
        settings,
        f"round-{rnd}-{task}",
        nested=True,
        stage="synthesize.round",
        run_id=run_id,
        tags={"round": rnd, "task": task},
    )


def round_metrics(report: RoundReport) -> dict[str, float]:
    """The child run's metrics (NaN ones left out), named as the notebooks read them."""
    metrics = {
        "gvendi_before": report.gvendi_before, "gvendi_after": report.gvendi_after, "g_vendi": report.gvendi_after,
        "emb_vendi_before": report.emb_vendi_before, "emb_vendi_after": report.emb_vendi_after,
        "pool_before": report.pool_before, "pool_after": report.pool_after, "candidates": report.generated,
        "accepted": report.accepted_candidates, "accepted_samples": report.accepted_samples,
        "acceptance_rate": report.acceptance_rate, "rejected": report.generated - report.accepted_candidates,
        "tokens_generated": report.tokens, "contamination_hits": report.contamination_hits,
        "id_accuracy": report.id_accuracy, "ood_accuracy": report.ood_accuracy,
    }  # fmt: skip
    metrics.update({f"reason.{k}": v for k, v in report.reasons.items()})
    metrics.update({f"seconds.{k}": v for k, v in report.seconds.items()})
    metrics.update({f"{metric_key(b)}_accuracy": a["accuracy"] for b, a in report.accuracies.items()})
    return {k: float(v) for k, v in metrics.items() if v == v}


def log_round(report: RoundReport, candidates: list, clusters: list, store: TableStore, settings: Settings) -> None:
    """Params, metrics, tags and artifacts of the round into the active (child) run."""
    import mlflow

    from prismatic import tracking

    cfg = settings.synth
    params = {
        "round": report.round,
        "task": report.task,
        "k": report.k,
        "tau": cfg.tau,
        "n_solutions": cfg.n_solutions,
        "spec_id": report.spec_id,
        "feature_space": report.feature_space,
        "cluster_spec_id": report.cluster_spec_id,
    }
    if report.student_id:
        params["student_id"] = report.student_id
    mlflow.log_params(params)
    mlflow.log_metrics(round_metrics(report))
    tags = {"round.status": report.status}
    if report.detail:
        tags["round.detail"] = report.detail[:5000]
    if report.student_id:
        tags["student_id"] = report.student_id
    mlflow.set_tags(tags)
    tracking.log_table_versions(store.versions(), "versions_written")
    if clusters:
        mlflow.log_figure(cluster_sizes_figure(report, clusters), "cluster_sizes.png")
    mlflow.log_figure(gvendi_by_round_figure(report, store), "gvendi_by_round.png")
    if report.round > 0:
        sample = {
            "accepted": [c.prompt for c in candidates if c.status == Status.ACCEPTED][:20],
            "rejected": [{"reason": c.reason, "prompt": c.prompt[:300], "detail": c.detail}
                         for c in candidates if c.status != Status.ACCEPTED][:40],
            "notes": report.notes,
        }  # fmt: skip
        mlflow.log_dict(sample, "candidates_sample.json")


def _figure(width: float = 6.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _finish(fig, ax, integer_x: bool = False):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()  # labels are never cut
    plt.close(fig)
    return fig


def cluster_sizes_figure(report: RoundReport, clusters: list):
    """Cluster sizes of the round, largest first; red = the stored ``sparse`` flag."""
    rows = sorted(clusters, key=lambda c: (-c["size"], c["cluster_id"]))
    fig, ax = _figure()
    ax.bar(range(len(rows)), [c["size"] for c in rows], color=["#d62728" if c["sparse"] else "#1f77b4" for c in rows])
    ax.set(
        title=f"round {report.round} ({report.task}): {report.feature_space} cluster sizes (red = sparse)",
        xlabel="cluster (largest first)",
        ylabel="samples",
    )
    return _finish(fig, ax, integer_x=True)


def gvendi_by_round_figure(report: RoundReport, store: TableStore):
    """The task's pool G-Vendi after each finished round up to this one (round 0 = the seed pool)."""
    rows = {
        r["round"]: r
        for (_, task), r in round_state(store).items()
        if task == report.task and r["status"] == RoundStatus.DONE and r["gvendi_after"] is not None
    }
    points = {rnd: r["gvendi_after"] for rnd, r in rows.items() if rnd < report.round}
    if 0 not in points and report.round > 0 and report.gvendi_before == report.gvendi_before:
        points[0] = report.gvendi_before  # the pool before round 1 when round 0 was not recorded
    if report.gvendi_after == report.gvendi_after:
        points[report.round] = report.gvendi_after
    xs = sorted(points)
    fig, ax = _figure(5.2, 3.6)
    ax.plot(xs, [points[x] for x in xs], marker="o")
    ax.set(title=f"{report.task}: pool G-Vendi by round", xlabel="round (0 = seed pool)", ylabel="G-Vendi")
    return _finish(fig, ax, integer_x=True)


def gvendi_vs_ood_figure(store: TableStore):
    """One point per finished round and task that has an OOD accuracy: pool G-Vendi against OOD accuracy."""
    by_task: dict[str, list[dict]] = {}
    for (_, task), r in sorted(round_state(store).items()):
        if r["status"] == RoundStatus.DONE and r["ood_accuracy"] is not None and r["gvendi_after"] is not None:
            by_task.setdefault(task, []).append(r)
    if not by_task:
        return None
    fig, ax = _figure(5.6, 4.0)
    for task, rows in by_task.items():
        xs, ys = [r["gvendi_after"] for r in rows], [r["ood_accuracy"] for r in rows]
        ax.plot(xs, ys, marker="o", label=task)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(f"r{r['round']}", (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(
        title="pool G-Vendi vs OOD accuracy, one point per round",
        xlabel="pool G-Vendi (after the round)",
        ylabel="OOD accuracy (mean over benchmarks)",
    )
    ax.legend(fontsize="small")
    ax.margins(x=0.15, y=0.2)
    return _finish(fig, ax)


def log_parent(store: TableStore) -> None:
    """Refresh the parent run's G-Vendi-vs-OOD plot (after every round, so a crash still leaves it current)."""
    import mlflow

    fig = gvendi_vs_ood_figure(store)
    if fig is not None:
        mlflow.log_figure(fig, "gvendi_vs_ood.png")
