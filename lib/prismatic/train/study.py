"""The diversity-vs-OOD study: does the more gradient-diverse training set give the better OOD student?

Prismatic Synthesis (https://arxiv.org/abs/2505.20161) reports, over 300+ training runs, Spearman ρ ≈ 0.9 between
G-Vendi of a training set and the OOD accuracy of the model trained on it, against ≈ 0.75 for embedding Vendi.
This module runs that experiment on a user's own pool:

1. **Pool**: scored pool rows of ``study.task`` (vectors of the current projection spec), the same quality filter
   for every subset (not truncated while scoring; scoring loss ≤ the ``max_loss_quantile`` quantile), optionally
   a seeded ``pool_limit``.
2. **Subsets**: K subsets of ``subset_size`` rows whose diversity is varied in a controlled way. The pool's
   gradient vectors are clustered with spherical k-means (``prismatic.cluster.lloyd``, k = ``study.clusters``);
   a *c-cluster* subset is drawn uniformly from the union of c clusters chosen at random (more clusters are
   added, in the same random order, while the union is smaller than the subset), for c in 1, 2, 4, …, k; a
   share ``random_fraction`` of the K subsets is drawn uniformly from the whole pool. Equal size, same filter.
3. **Metrics** of each subset: G-Vendi and mean pairwise cosine of its gradient vectors, embedding Vendi and mean
   cosine of its texts (MiniLM), n-gram entropy and distinct-n (``diversity.ngram``), and, for NLI, the entropy
   of its label distribution (a control: a subset of one label cannot teach three); for every task the mean text
   length and the mean proxy loss (controls too: :data:`CONTROLS`).
4. **Students**: one per subset (``probe`` by default, ``lm`` at small K), evaluated on the ID benchmark
   (``study.id_benchmark``, sampled to ``id_size``) and the OOD benchmarks (BIG-bench NLI tasks when that asset is
   fetched, plus ``ood_files``). The target is the unweighted mean OOD accuracy.
   For NLI every accuracy also has a *balanced* twin (mean recall per gold label,
   :attr:`~prismatic.train.evaluate.EvalResult.balanced_accuracy`): a constant answer scores 1 / labels on it
   whatever the benchmark's label balance, while plain accuracy rewards a constant answer that happens to be a
   benchmark's majority label — on the BIG-bench NLI tasks that alone beats a weak probe.
5. **Correlations**: Spearman ρ (scipy) of each metric against mean OOD accuracy (and against ID accuracy and,
   for NLI, mean OOD balanced accuracy), with a percentile bootstrap interval over the K subsets and the
   two-sided p-value.

Outputs: ``study`` rows (design, metric and accuracy rows per subset — ``<benchmark>_accuracy``, ``id_accuracy``,
``ood_accuracy`` (the target), ``train_accuracy``, for NLI ``<benchmark>_balanced_accuracy``,
``id_balanced_accuracy``, ``ood_balanced_accuracy``; one ``rho.<metric>`` / ``rho_id.<metric>`` /
``rho_bal.<metric>`` row per metric with ``subset_id = '*'``), ``eval_results`` rows of every subset's student,
and MLflow: a parent run ``study`` with one child run ``study-subset-<id>`` per subset, a scatter plot per metric
(``scatter/<metric>.png``; ``scatter_balanced/`` against the balanced target), ``rho_by_metric.png`` (and
``rho_by_metric_balanced.png``) and the ranked table (``ranked_metrics.json`` / ``.md``).

``study_id`` hashes the study and student settings, the spec and the table versions: running the same study
again returns the recorded result (``force=True`` recomputes); students are reused by id either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.tables import TableStore, table_def

log = logging.getLogger(__name__)

ALL_SUBSETS = "*"
TARGET = "ood_accuracy"  # the names the notebooks and sql/study_correlations.sql read
ID_TARGET = "id_accuracy"
BAL_TARGET = "ood_balanced_accuracy"  # NLI: mean over the OOD benchmarks of the mean recall per gold label
ID_BAL = "id_balanced_accuracy"
SUMMARY_KEYS = (TARGET, ID_TARGET, BAL_TARGET, ID_BAL, "train_accuracy")
PREFIX = {TARGET: "rho", ID_TARGET: "rho_id", BAL_TARGET: "rho_bal"}  # correlation rows: <prefix>.<metric>
CONTROLS = ("label_entropy", "mean_chars", "mean_loss")  # not diversity: what a diversity metric must beat
Progress = Callable[[int, int], None]


# ---- subset design (pure numpy) ------------------------------------------------------------------------------


def cluster_levels(k: int, levels: Sequence[int] | None = None) -> list[int]:
    """Clusters per subset: the given levels, or 1, 2, 4, … up to k (k itself included)."""
    if levels:
        return sorted(set(int(x) for x in levels))
    out, c = [], 1
    while c < k:
        out.append(c)
        c *= 2
    return out + [k]


@dataclass
class SubsetPlan:
    """One subset: how it was drawn and which rows (positions in the pool arrays) it holds."""

    subset_id: str
    strategy: str  # "clusters" or "random"
    n_clusters: int  # clusters asked for (0 for random)
    clusters: list[int]  # clusters the rows were drawn from (all for random)
    rows: np.ndarray  # int positions into the pool

    def design(self, cluster_of: np.ndarray) -> dict[str, float]:
        return {
            "n_clusters": float(self.n_clusters),
            "clusters_used": float(len(self.clusters)),
            "clusters_touched": float(len(np.unique(cluster_of[self.rows]))),
        }


def _draw(rng: np.random.Generator, members: np.ndarray, size: int, labels: np.ndarray | None) -> np.ndarray:
    """``size`` distinct members, uniformly, or (with labels) as equal per label as the members allow."""
    if labels is None:
        return np.sort(rng.choice(members, size=size, replace=False))
    groups = [members[labels[members] == lab] for lab in np.unique(labels[members])]
    groups = [rng.permutation(g) for g in groups]
    take, left = [0] * len(groups), size
    while left:  # round-robin: one more from every label that still has members
        moved = False
        for i, g in enumerate(groups):
            if left and take[i] < len(g):
                take[i] += 1
                left -= 1
                moved = True
        if not moved:
            raise ValueError("not enough members to draw from")
    return np.sort(np.concatenate([g[:t] for g, t in zip(groups, take, strict=True)]))


def plan_subsets(
    cluster_of: np.ndarray, size: int, k: int, n_subsets: int, levels: Sequence[int] | None = None,
    random_fraction: float = 0.25, seed: int = 0, labels: np.ndarray | None = None,
) -> list[SubsetPlan]:  # fmt: skip
    """K subsets of ``size`` pool rows: c-cluster subsets for c in ``levels`` (round robin) plus random ones.

    Args:
        cluster_of: (n,) cluster id of each pool row, in [0, k).
        size: rows per subset (≤ n).
        k: number of clusters.
        n_subsets: K.
        levels: clusters per subset (default :func:`cluster_levels`).
        random_fraction: share of K drawn uniformly from the whole pool (at least one when > 0 and K ≥ 2).
        seed: the draw's seed (each subset uses its own child stream, so plans do not depend on K).
        labels: (n,) label codes to balance within each subset, or None for uniform draws.

    Returns:
        K plans, cluster subsets first (by level), then random ones.
    """
    cluster_of = np.asarray(cluster_of)
    n = cluster_of.shape[0]
    if size > n:
        raise ValueError(f"subset size {size} exceeds the pool ({n} rows)")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    lv = cluster_levels(k, levels)
    n_random = int(round(n_subsets * random_fraction))
    if random_fraction > 0 and n_random == 0 and n_subsets >= 2:
        n_random = 1
    n_random = min(n_random, n_subsets)
    n_cluster = n_subsets - n_random
    members = [np.flatnonzero(cluster_of == c) for c in range(k)]
    plans: list[SubsetPlan] = []
    seeds = np.random.SeedSequence(seed).spawn(n_subsets)
    for i in range(n_cluster):
        c = lv[i % len(lv)]
        rng = np.random.default_rng(seeds[i])
        order = [int(x) for x in rng.permutation(k) if len(members[x])]
        chosen = order[:c]
        while sum(len(members[x]) for x in chosen) < size and len(chosen) < len(order):
            chosen.append(order[len(chosen)])
        pool = np.concatenate([members[x] for x in chosen])
        rows = _draw(rng, pool, size, labels)
        plans.append(SubsetPlan(f"s{i:02d}-c{c}", "clusters", c, sorted(chosen), rows))
    for j in range(n_random):
        i = n_cluster + j
        rng = np.random.default_rng(seeds[i])
        rows = _draw(rng, np.arange(n), size, labels)
        plans.append(SubsetPlan(f"s{i:02d}-random", "random", 0, list(range(k)), rows))
    return plans


# ---- metrics and correlations (pure numpy / scipy) ------------------------------------------------------------


def label_entropy(labels: Sequence[str]) -> float:
    """Shannon entropy (nats) of the label distribution."""
    from prismatic.vendi import entropy_from_counts

    vals, counts = np.unique(np.asarray(list(labels), dtype=object).astype(str), return_counts=True)
    return entropy_from_counts(counts) if len(vals) else math.nan


def subset_metrics(
    vectors: np.ndarray, embeddings: np.ndarray | None, texts: Sequence[str], labels: Sequence[str] | None,
    ngram: int = 2, loss: np.ndarray | None = None,
) -> dict[str, float]:  # fmt: skip
    """Every diversity metric of one subset (see the module docstring); names as in the ``diversity`` table.

    Controls come last (:data:`CONTROLS`): ``label_entropy`` (NLI), ``mean_chars`` (the mean length of the training
    texts: longer texts carry more tokens of signal) and ``mean_loss`` (the proxy's mean completion NLL: harder or
    noisier rows). A diversity metric that ranks students no better than a control explains nothing beyond it.
    """
    from prismatic.vendi import distinct_n, g_vendi, mean_pairwise_cosine, ngram_entropy

    out = {"g_vendi": g_vendi(vectors), "g_mean_cosine": mean_pairwise_cosine(vectors)}
    if embeddings is not None:
        out["emb_vendi"] = g_vendi(embeddings)
        out["emb_mean_cosine"] = mean_pairwise_cosine(embeddings)
    out[f"ngram_entropy_{ngram}"] = ngram_entropy(texts, ngram)
    out[f"distinct_{ngram}"] = distinct_n(texts, ngram)
    if labels is not None:
        out["label_entropy"] = label_entropy(labels)
    out["mean_chars"] = float(np.mean([len(t) for t in texts])) if len(texts) else math.nan
    if loss is not None:
        out["mean_loss"] = float(np.mean(loss)) if len(loss) else math.nan
    return {k: float(v) for k, v in out.items()}


def spearman_ci(
    x: Sequence[float], y: Sequence[float], n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float, float]:
    """Spearman ρ of (x, y), its percentile bootstrap interval over the pairs, and the two-sided p-value.

    Resamples that make either variable constant (ρ undefined) are dropped. Returns NaNs when ρ is undefined
    (fewer than 3 pairs, or a constant variable).

    Returns:
        (rho, ci_low, ci_high, p_value).
    """
    from scipy.stats import spearmanr

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    nan = (math.nan,) * 4
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    res = spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    if n_boot <= 0:
        return rho, math.nan, math.nan, p
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = []
    for row in idx:
        bx, by = x[row], y[row]
        if np.ptp(bx) == 0 or np.ptp(by) == 0:
            continue
        boots.append(float(spearmanr(bx, by).statistic))
    boots_arr = np.asarray([b for b in boots if np.isfinite(b)])
    if boots_arr.size == 0:
        return rho, math.nan, math.nan, p
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(boots_arr, [a, 1.0 - a])
    return rho, float(lo), float(hi), p


# ---- the pool ------------------------------------------------------------------------------------------------


@dataclass
class StudyPool:
    """Scored, filtered pool rows of one task, aligned arrays sorted by sample id."""

    ids: list[str]
    vectors: np.ndarray
    loss: np.ndarray
    texts: list[str]
    labels: list[str] | None
    pairs: Any = None  # NliPairs for NLI pools
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def load_study_pool(store: TableStore, settings: Settings, spec_id: str) -> StudyPool:
    """Pool rows of ``study.task`` with vectors under ``spec_id``, after the quality filter and ``pool_limit``."""
    from prismatic.diversity import vectors_from_arrow
    from prismatic.train.data import nli_pairs, pool_arrow, subset_pairs

    cfg = settings.study
    dropped: dict[str, int] = {}
    grads = store.read_arrow("gradients", columns=["sample_id", "spec_id", "vector", "loss", "truncated"])
    grads = grads.filter(pc.equal(grads["spec_id"], spec_id))
    if cfg.task == "nli":
        pairs = nli_pairs(store, settings)
        ids, texts, labels = pairs.sample_ids, pairs.texts, pairs.labels
        if pairs.unparsed:
            dropped["nli_pair_not_recovered"] = len(pairs.unparsed)
    else:
        rows = pool_arrow(store, task=cfg.task, columns=["sample_id", "prompt", "completion"]).to_pylist()
        pairs, labels = None, None
        ids = [r["sample_id"] for r in rows]
        texts = [f"{r['prompt']}\n{r['completion']}" for r in rows]
    pos = {s: i for i, s in enumerate(grads["sample_id"].to_pylist())}
    keep = [i for i, s in enumerate(ids) if s in pos]
    if len(keep) < len(ids):
        dropped["not_scored"] = len(ids) - len(keep)
    if not keep:
        raise PrismError(
            f"no scored {cfg.task} pool rows under spec {spec_id}",
            hint="run `prism score` first (or set study.score_missing=true)",
        )
    g_rows = pa.array([pos[ids[i]] for i in keep], pa.int64())
    g = grads.take(g_rows)
    vectors = vectors_from_arrow(g["vector"])
    loss = np.asarray(g["loss"].to_numpy(zero_copy_only=False), dtype=np.float64)
    trunc = np.asarray(g["truncated"].fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    mask = np.ones(len(keep), dtype=bool)
    if cfg.drop_truncated and trunc.any():
        dropped["truncated"] = int(trunc.sum())
        mask &= ~trunc
    if cfg.max_loss_quantile < 1.0:
        thr = float(np.quantile(loss[mask], cfg.max_loss_quantile))
        high = mask & (loss > thr)
        dropped["loss_above_quantile"] = int(high.sum())
        mask &= ~high
    sel = np.flatnonzero(mask)
    if cfg.pool_limit is not None and sel.size > cfg.pool_limit:
        rng = np.random.default_rng(cfg.seed)
        sel = np.sort(rng.choice(sel, size=cfg.pool_limit, replace=False))
        dropped["pool_limit"] = int(mask.sum()) - cfg.pool_limit
    keep_arr = np.asarray(keep)[sel]
    out_ids = [ids[i] for i in keep_arr]
    return StudyPool(
        out_ids, vectors[sel], loss[sel], [texts[i] for i in keep_arr],
        None if labels is None else [labels[i] for i in keep_arr],
        subset_pairs(pairs, out_ids) if pairs is not None else None, dropped,
    )  # fmt: skip


# ---- benchmarks ----------------------------------------------------------------------------------------------


def study_benchmarks(settings: Settings):
    """(ID benchmark, OOD benchmarks): BIG-bench NLI tasks when their asset is fetched, plus ``ood_files``."""
    from prismatic.train.benchmarks import BIGBENCH_NLI, bigbench_available, load_benchmark

    cfg = settings.study
    idb = load_benchmark(cfg.id_benchmark)
    idb.split = "id"
    idb = idb.sample(cfg.id_size, cfg.seed)
    specs = []
    for b in cfg.ood_benchmarks:
        if b in BIGBENCH_NLI and not bigbench_available():
            log.warning("BIG-bench asset not fetched: OOD benchmark %s skipped", b)
            continue
        specs.append(b)
    specs += list(cfg.ood_files)
    if not specs:
        raise PrismError(
            "no OOD benchmark: the BIG-bench asset is not fetched and study.ood_files is empty",
            hint="run `prism assets fetch bigbench` or set study.ood_files=[path.jsonl, ...]",
        )
    ood = []
    for s in specs:
        b = load_benchmark(s)
        b.split = "ood"
        ood.append(b.sample(cfg.ood_size, cfg.seed))
    for b in (idb, *ood):
        if cfg.task in ("nli", "math") and b.task != cfg.task:
            raise PrismError(f"benchmark {b.name} is a {b.task} benchmark but study.task is {cfg.task}")
    return idb, ood


# ---- the study -----------------------------------------------------------------------------------------------


@dataclass
class StudyReport:
    """The study's result: one dict per subset and one per (metric, target) correlation."""

    study_id: str
    spec_id: str
    student: str
    pool_size: int
    subsets: list[dict]
    correlations: list[dict]
    metrics: list[str]
    benchmarks: dict[str, str] = field(default_factory=dict)  # name -> split
    mlflow_run_id: str | None = None
    reused: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def ranked(self, target: str = TARGET) -> list[dict]:
        rows = [c for c in self.correlations if c["target"] == target]
        return sorted(rows, key=lambda c: (-(c["rho"] if np.isfinite(c["rho"]) else -9), c["metric"]))

    def rho(self, metric: str, target: str = TARGET) -> float:
        for c in self.correlations:
            if c["metric"] == metric and c["target"] == target:
                return c["rho"]
        raise KeyError(metric)

    def summary(self) -> str:
        head = (
            f"study {self.study_id}: {len(self.subsets)} subsets of the {self.pool_size}-row pool, {self.student}"
            f" students{' (recorded result)' if self.reused else ''}"
        )
        bal = any(c["target"] == BAL_TARGET for c in self.correlations)
        ci = "95% CI"
        lines = [
            head,
            f"{'metric':<16}{'rho OOD':>7} {ci:^13} {'p':>7} {'rho ID':>7}"
            + (f" {'rho bal':>7} {ci:^13}" if bal else ""),
            "(rho bal: vs mean OOD balanced accuracy, the chance-corrected target)" if bal else "",
        ]
        lines = [x for x in lines if x]
        for c in self.ranked():
            name = f"{c['metric']}*" if c["metric"] in CONTROLS else c["metric"]
            line = (
                f"{name:<16}{c['rho']:>7.3f} [{c['ci_low']:>5.2f},{c['ci_high']:>5.2f}]"
                f" {c['p_value']:>7.2g} {self._get(c['metric'], ID_TARGET).get('rho', math.nan):>7.3f}"
            )
            if bal:
                b = self._get(c["metric"], BAL_TARGET)
                line += (
                    f" {b.get('rho', math.nan):>7.3f} [{b.get('ci_low', math.nan):>5.2f},"
                    f"{b.get('ci_high', math.nan):>5.2f}]"
                )
            lines.append(line)
        lines.append("(* a control, not a diversity metric)")
        return "\n".join(lines)

    def _get(self, metric: str, target: str) -> dict:
        return next((d for d in self.correlations if d["metric"] == metric and d["target"] == target), {})


def study_id_for(settings: Settings, spec_id: str, versions: dict, kind: str, k: int) -> str:
    from prismatic.train.students import LM_KEYS, PROBE_KEYS

    train = settings.train.model_dump(mode="json")
    ident = {
        "study": settings.study.model_dump(mode="json"), "subsets": k, "student": kind, "spec": spec_id,
        "versions": versions, "train": {key: train[key] for key in (PROBE_KEYS if kind == "probe" else LM_KEYS)},
        "ngram": settings.diversity.ngram, "embedding": settings.diversity.embedding_model,
    }  # fmt: skip
    if kind == "lm":  # how the lm students are scored changes the result (probe study ids stay as they were)
        ident["eval"] = {key: train[key] for key in ("eval_method", "loglik_normalize")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", name)


def bench_key(name: str) -> str:
    """The study metric of one benchmark's accuracy: ``<name>_accuracy`` (never one of the summary names)."""
    key = f"{name}_accuracy"
    return f"{name}_bench_accuracy" if key in SUMMARY_KEYS else key


def bench_bal_key(name: str) -> str:
    """The study metric of one NLI benchmark's balanced accuracy: ``<name>_balanced_accuracy``."""
    key = f"{name}_balanced_accuracy"
    return f"{name}_bench_balanced_accuracy" if key in SUMMARY_KEYS else key


def _report_from_table(store: TableStore, study_id: str) -> StudyReport | None:
    if not store.exists("study"):
        return None
    t = store.read_arrow("study")
    rows = t.filter(pc.equal(t["study_id"], study_id)).to_pylist()
    corr = [r for r in rows if r["kind"] == "correlation"]
    if not corr:
        return None
    detail0 = json.loads(corr[0]["detail"] or "{}")
    subsets: dict[str, dict] = {}
    for r in rows:
        if r["subset_id"] == ALL_SUBSETS:
            continue
        d = subsets.setdefault(r["subset_id"], {"subset_id": r["subset_id"]})
        if r["kind"] == "design" and r["detail"]:
            d.update(json.loads(r["detail"]))
        d[r["metric"]] = r["value"]
    correlations = []
    for r in corr:
        prefix, metric = r["metric"].split(".", 1)
        target = {p: t for t, p in PREFIX.items()}.get(prefix)
        if target is None:
            continue
        correlations.append(
            {
                "metric": metric,
                "target": target,
                "rho": r["value"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "p_value": r["p_value"],
                "n": r["n"],
            }
        )
    return StudyReport(
        study_id,
        corr[0]["spec_id"] or "",
        detail0.get("student", ""),
        detail0.get("pool_size", 0),
        [subsets[k] for k in sorted(subsets)],
        correlations,
        detail0.get("metrics", []),
        detail0.get("benchmarks", {}),
        corr[0]["mlflow_run_id"],
        reused=True,
    )


def _scatter(report: StudyReport, metric: str, target: str = TARGET):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = next(c for c in report.correlations if c["metric"] == metric and c["target"] == target)
    fig, ax = plt.subplots(figsize=(5.2, 4.0), dpi=110)
    for strategy, marker in (("clusters", "o"), ("random", "^")):
        pts = [s for s in report.subsets if s.get("strategy") == strategy]
        if not pts:
            continue
        sc = ax.scatter(
            [s[metric] for s in pts],
            [s[target] for s in pts],
            marker=marker,
            s=36,
            c=[s.get("n_clusters", 0) or 0 for s in pts],
            cmap="viridis",
            vmin=0,
            vmax=max(1, max((s.get("n_clusters", 0) or 0) for s in report.subsets)),
            edgecolors="black",
            linewidths=0.4,
            label=strategy,
        )
    if report.subsets:
        fig.colorbar(sc, ax=ax, label="clusters drawn from (0 = random)")
    ax.set_xlabel(metric)
    ax.set_ylabel(
        {TARGET: "mean OOD accuracy", ID_TARGET: "ID accuracy", BAL_TARGET: "mean OOD balanced accuracy"}.get(
            target, target
        )
    )
    ax.set_title(f"{metric}: Spearman ρ = {c['rho']:.3f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _rho_bars(report: StudyReport, target: str = TARGET):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = report.ranked(target)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(ranked) + 1.2), dpi=110)
    names = [c["metric"] for c in ranked][::-1]
    rho = np.array([c["rho"] for c in ranked][::-1])
    lo = np.array([c["ci_low"] for c in ranked][::-1])
    hi = np.array([c["ci_high"] for c in ranked][::-1])
    err = np.vstack([np.nan_to_num(rho - lo), np.nan_to_num(hi - rho)])
    ax.barh(names, rho, xerr=err, color=["tab:orange" if n == "g_vendi" else "tab:blue" for n in names], capsize=3)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlim(-1.05, 1.05)
    what = "mean OOD balanced accuracy" if target == BAL_TARGET else "mean OOD accuracy"
    ax.set_xlabel(f"Spearman ρ vs {what} (bootstrap CI)")
    fig.tight_layout()
    return fig


def _log_outputs(report: StudyReport) -> None:
    import matplotlib.pyplot as plt
    import mlflow
    import pandas as pd

    for c in report.correlations:
        key = _metric_key(c["metric"])
        prefix = PREFIX[c["target"]]
        vals = {
            f"{prefix}.{key}": c["rho"],
            f"{prefix}_ci_low.{key}": c["ci_low"],
            f"{prefix}_ci_high.{key}": c["ci_high"],
        }
        mlflow.log_metrics({k: v for k, v in vals.items() if np.isfinite(v)})
    bal = any(c["target"] == BAL_TARGET for c in report.correlations)
    for m in report.metrics:
        fig = _scatter(report, m)
        mlflow.log_figure(fig, f"scatter/{_metric_key(m)}.png")
        plt.close(fig)
        if bal:
            fig = _scatter(report, m, BAL_TARGET)
            mlflow.log_figure(fig, f"scatter_balanced/{_metric_key(m)}.png")
            plt.close(fig)
    fig = _rho_bars(report)
    mlflow.log_figure(fig, "rho_by_metric.png")
    plt.close(fig)
    if bal:
        fig = _rho_bars(report, BAL_TARGET)
        mlflow.log_figure(fig, "rho_by_metric_balanced.png")
        plt.close(fig)
    ranked = pd.DataFrame([
        {"rank": i + 1, "metric": c["metric"], "rho": c["rho"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
         "p_value": c["p_value"], "rho_id": report.rho(c["metric"], ID_TARGET),
         "rho_bal": report._get(c["metric"], BAL_TARGET).get("rho", math.nan),
         "rho_bal_ci_low": report._get(c["metric"], BAL_TARGET).get("ci_low", math.nan),
         "rho_bal_ci_high": report._get(c["metric"], BAL_TARGET).get("ci_high", math.nan), "n": c["n"]}
        for i, c in enumerate(report.ranked())
    ])  # fmt: skip
    mlflow.log_table(ranked, artifact_file="ranked_metrics.json")
    mlflow.log_text(report.summary() + "\n", "ranked_metrics.md")
    mlflow.log_table(pd.DataFrame(report.subsets), artifact_file="subsets.json")


@dataclass
class StudyDesign:
    """What every subset of one study shares: the filtered pool, its clusters, the plans and the benchmarks."""

    pool: StudyPool
    k: int
    cluster_of: np.ndarray
    plans: list[SubsetPlan]
    id_bench: Any = None
    ood: list = field(default_factory=list)
    embed: Any = None  # the probe's encoder
    emb_all: np.ndarray | None = None  # diversity-encoder embeddings of the rows some subset uses

    @property
    def benches(self) -> list:
        return [self.id_bench, *self.ood]


def study_stage(
    store: TableStore,
    settings: Settings,
    subsets: int | None = None,
    student: str | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> StudyReport:
    """Run the diversity-vs-OOD study (see the module docstring) and write ``study``, ``eval_results``, MLflow.

    Steps: check the arguments → score missing rows and resolve the spec → return a recorded study of the same id
    → design (pool, clusters, subset plans) → benchmarks and embeddings → per subset: metrics, train, evaluate →
    correlations → MLflow outputs and tables.

    Args:
        store: the table store (gradients of the pool must exist under the scoring config's spec, unless
            ``study.score_missing`` scores them first).
        settings: the ``study``, ``train``, ``scoring``, ``diversity`` and ``cluster`` sections.
        subsets: K (default ``study.subsets``).
        student: ``probe`` or ``lm`` (default ``study.student``).
        force: recompute even when this study (same ``study_id``) is already recorded.
        progress: called with (subsets done, K).

    Returns:
        The :class:`StudyReport`.
    """
    from prismatic import tracking
    from prismatic.stages.base import Context
    from prismatic.stages.common import PoolFilter
    from prismatic.stages.score import score_pool

    cfg = settings.study
    k_subsets = int(subsets or cfg.subsets)
    kind = student or cfg.student
    _check_study_args(cfg, kind, k_subsets)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    ctx = Context(settings, store)  # the scoring spec resolved (and recorded) once
    if cfg.score_missing:
        score_pool(ctx, PoolFilter(task=cfg.task))
        seconds["score"] = time.perf_counter() - t0
    spec = ctx.spec()
    versions = {t: store.version(t) for t in ("samples", "duplicates", "gradients")}
    sid = study_id_for(settings, spec.spec_id, versions, kind, k_subsets)
    if not force:
        done = _report_from_table(store, sid)
        if done is not None:
            log.info("study %s already recorded; returning it (force=True recomputes)", sid)
            return done
    t1 = time.perf_counter()
    design = design_study(store, settings, spec.spec_id, k_subsets)
    seconds["pool_and_clusters"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    prepare_evaluation(settings, design, kind)
    seconds["embed"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    report = StudyReport(
        sid, spec.spec_id, kind, len(design.pool), [], [], [], {b.name: b.split for b in design.benches},
        dropped=design.pool.dropped,
    )  # fmt: skip
    tags = {"study_id": sid, **{f"versions.{t}": v for t, v in versions.items() if v is not None}}
    with tracking.run(
        settings, "study", params=_parent_params(settings, design, kind, k_subsets, spec.spec_id), tags=tags
    ) as parent:
        report.mlflow_run_id = parent.info.run_id if parent is not None else None
        eval_rows = _run_subsets(store, settings, design, kind, report, progress)
        seconds["train_and_eval"] = time.perf_counter() - t3
        report.correlations = correlate(report.subsets, report.metrics, cfg)
        seconds["total"] = time.perf_counter() - t0
        report.seconds = seconds
        if parent is not None:
            import mlflow

            _log_outputs(report)
            mlflow.log_metrics({f"seconds.{k2}": v for k2, v in seconds.items()})
            mlflow.log_dict(report.dropped, "pool_dropped.json")
    _write_tables(store, report, eval_rows)
    return report


def _run_subsets(
    store: TableStore, settings: Settings, design: StudyDesign, kind: str, report: StudyReport, progress
) -> list[dict]:
    """Every subset in turn (:func:`run_subset`) into ``report.subsets``; returns their ``eval_results`` rows."""
    eval_rows: list[dict] = []
    for i, plan in enumerate(design.plans):
        row, metric_names, rows = run_subset(store, settings, design, plan, kind, report.study_id)
        if not report.metrics:
            report.metrics = metric_names
        report.subsets.append(row)
        eval_rows += rows
        if progress is not None:
            progress(i + 1, len(design.plans))
        log.info(
            "subset %s (%d/%d): g_vendi %.2f, ood %.4f, id %.4f",
            plan.subset_id, i + 1, len(design.plans), row["g_vendi"], row[TARGET], row[ID_TARGET],
        )  # fmt: skip
    return eval_rows


def _check_study_args(cfg, kind: str, k_subsets: int) -> None:
    if kind == "probe" and cfg.task != "nli":
        raise PrismError(
            f"the probe student is an NLI classifier; study.task is {cfg.task}",
            hint="use --student lm for math / generic pools",
        )
    if k_subsets < 3:
        raise PrismError(f"a Spearman correlation needs at least 3 subsets, got K={k_subsets}")


def design_study(store: TableStore, settings: Settings, spec_id: str, k_subsets: int) -> StudyDesign:
    """The filtered pool, its spherical k-means clusters and the K subset plans.

    Raises:
        PrismError: the filtered pool is smaller than one subset.
    """
    from prismatic.cluster import lloyd

    cfg = settings.study
    pool = load_study_pool(store, settings, spec_id)
    if len(pool) < cfg.subset_size:
        raise PrismError(
            f"the filtered pool has {len(pool)} rows, fewer than study.subset_size={cfg.subset_size}",
            hint="score more of the pool or lower study.subset_size",
        )
    k = min(cfg.clusters, len(pool))
    km = lloyd(pool.vectors, k=k, iterations=settings.cluster.iterations, seed=cfg.seed)
    label_codes = None
    if cfg.balance_labels and pool.labels is not None:
        label_codes = np.unique(np.asarray(pool.labels), return_inverse=True)[1]
    plans = plan_subsets(
        km.labels, cfg.subset_size, k, k_subsets, cfg.cluster_levels, cfg.random_fraction, cfg.seed, label_codes
    )
    return StudyDesign(pool, k, km.labels, plans)


def prepare_evaluation(settings: Settings, design: StudyDesign, kind: str) -> None:
    """Load the benchmarks and embed what the subsets need: texts for embedding Vendi (the diversity stage's
    encoder, as the ``diversity`` table does) and, for the probe, every sentence once (later calls hit the cache)."""
    from prismatic.train.data import embedder_for

    design.id_bench, design.ood = study_benchmarks(settings)
    design.embed = embedder_for(settings)  # the probe's encoder
    pool = design.pool
    used = sorted(set(np.concatenate([p.rows for p in design.plans]).tolist()))
    design.emb_all = np.zeros((len(pool), 0), np.float32)
    if used:
        e = embedder_for(settings, settings.diversity.embedding_model)([pool.texts[i] for i in used])
        design.emb_all = np.zeros((len(pool), e.shape[1]), np.float32)
        design.emb_all[used] = e
    if kind == "probe":
        design.embed(pool.pairs.premises)
        design.embed(pool.pairs.hypotheses)
        for b in design.benches:
            design.embed([x["premise"] for x in b.examples])
            design.embed([x["hypothesis"] for x in b.examples])


def _parent_params(settings: Settings, design: StudyDesign, kind: str, k_subsets: int, spec_id: str) -> dict:
    cfg = settings.study
    params = {
        "K": k_subsets, "subset_size": cfg.subset_size, "clusters": design.k,
        "levels": cluster_levels(design.k, cfg.cluster_levels), "random_fraction": cfg.random_fraction,
        "balance_labels": cfg.balance_labels, "student": kind, "pool_size": len(design.pool),
        "spec_id": spec_id, "id_benchmark": design.id_bench.name,
        "ood_benchmarks": ",".join(b.name for b in design.ood), "bootstrap": cfg.bootstrap, "seed": cfg.seed,
        "max_loss_quantile": cfg.max_loss_quantile, "drop_truncated": cfg.drop_truncated,
    }  # fmt: skip
    if kind == "lm":
        params["eval_method"] = settings.train.eval_method
    return params


def run_subset(
    store: TableStore, settings: Settings, design: StudyDesign, plan: SubsetPlan, kind: str, sid: str
) -> tuple[dict, list[str], list[dict]]:
    """Metrics of one subset, its student trained and evaluated in a child MLflow run.

    Returns:
        (the subset's row: design, metrics, accuracies; the metric names in order; its ``eval_results`` rows).
    """
    from prismatic import tracking

    pool, rows = design.pool, plan.rows
    ids = [pool.ids[r] for r in rows]
    metrics = subset_metrics(
        pool.vectors[rows],
        design.emb_all[rows] if design.emb_all.shape[1] else None,
        [pool.texts[r] for r in rows],
        None if pool.labels is None else [pool.labels[r] for r in rows],
        settings.diversity.ngram,
        pool.loss[rows],
    )
    child_params = {
        "subset_id": plan.subset_id, "strategy": plan.strategy, "n_clusters": plan.n_clusters,
        "clusters": plan.clusters, "size": len(ids),
    }  # fmt: skip
    tags = {"study_id": sid, "subset_id": plan.subset_id}
    with tracking.run(
        settings, f"study-subset-{plan.subset_id}", nested=True, params=child_params, tags=tags
    ) as child:
        child_id = child.info.run_id if child is not None else None
        rep, accs, bal, eval_rows = train_and_score_subset(store, settings, design, plan, ids, kind, sid, child_id)
        balanced = _balanced(design, bal)
        row = _subset_row(design, plan, ids, rep, metrics, accs, balanced)
        if child is not None:
            _log_subset(plan, ids, rep, {**metrics, **plan.design(design.cluster_of)}, row, accs, balanced)
    return row, list(metrics), eval_rows


def train_and_score_subset(
    store: TableStore, settings: Settings, design: StudyDesign, plan: SubsetPlan, ids: list[str], kind: str,
    sid: str, mlflow_run_id: str | None,
):  # fmt: skip
    """Train (or reuse) the subset's student and evaluate it on every benchmark.

    Returns:
        (train report, accuracy by benchmark, balanced accuracy by NLI benchmark, ``eval_results`` rows).
    """
    from prismatic.train.data import subset_pairs
    from prismatic.train.evaluate import eval_row, evaluate_student
    from prismatic.train.students import load_student, train_stage

    rep = train_stage(
        store, settings, kind, ids, subset_id=plan.subset_id, study_id=sid, track=False,
        pairs=subset_pairs(design.pool.pairs, ids) if kind == "probe" else None,
    )  # fmt: skip
    stud = load_student(rep.path, settings)
    accs, bal, eval_rows = {}, {}, []
    for b in design.benches:
        res = evaluate_student(stud, b, settings, embed=design.embed if kind == "probe" else None)
        accs[b.name] = res.accuracy
        if b.task == "nli":
            bal[b.name] = res.balanced_accuracy
        row = eval_row(rep.student_id, rep.path, kind, b, res, rep.lineage, mlflow_run_id, with_source=False)
        row.update(subset_id=plan.subset_id, study_id=sid)
        eval_rows.append(row)
    return rep, accs, bal, eval_rows


def _balanced(design: StudyDesign, bal: dict) -> dict:
    """Balanced accuracies per benchmark, ID and mean OOD, when every benchmark is NLI (else none)."""
    if len(bal) != len(design.benches):
        return {}
    return {
        **{bench_bal_key(n): a for n, a in bal.items()},
        ID_BAL: bal[design.id_bench.name],
        BAL_TARGET: float(np.mean([bal[b.name] for b in design.ood])),
    }


def _subset_row(design: StudyDesign, plan: SubsetPlan, ids, rep, metrics: dict, accs: dict, balanced: dict) -> dict:
    idb, ood = design.id_bench, design.ood
    return {
        "subset_id": plan.subset_id,
        "strategy": plan.strategy,
        "n_clusters": plan.n_clusters,
        "clusters": plan.clusters,
        "size": len(ids),
        "student_id": rep.student_id,
        **plan.design(design.cluster_of),
        **metrics,
        **{bench_key(n): a for n, a in accs.items()},
        ID_TARGET: accs[idb.name],
        TARGET: float(np.mean([accs[b.name] for b in ood])),
        "train_accuracy": rep.metrics.get("train_accuracy", math.nan),
        **balanced,
    }


def _log_subset(
    plan: SubsetPlan, ids: list[str], rep, metrics_and_design: dict, row: dict, accs: dict, balanced: dict
) -> None:
    import mlflow

    mlflow.set_tag("student_id", rep.student_id)
    mlflow.log_dict({"subset_id": plan.subset_id, "sample_ids": ids}, "subset_ids.json")
    vals = {
        **metrics_and_design,
        **{_metric_key(bench_key(n)): a for n, a in accs.items()},
        ID_TARGET: row[ID_TARGET],
        TARGET: row[TARGET],
        **{_metric_key(kk): v for kk, v in balanced.items()},
    }
    mlflow.log_metrics({_metric_key(kk): float(v) for kk, v in vals.items() if np.isfinite(v)})


def correlate(subsets: list[dict], metrics: list[str], cfg) -> list[dict]:
    """Spearman ρ with bootstrap interval of every metric against each target (OOD, ID, and balanced OOD for NLI)."""
    out = []
    targets = [TARGET, ID_TARGET] + ([BAL_TARGET] if all(BAL_TARGET in s for s in subsets) else [])
    for target in targets:
        y = [s[target] for s in subsets]
        for m in metrics:
            rho, lo, hi, p = spearman_ci([s[m] for s in subsets], y, cfg.bootstrap, cfg.ci, cfg.seed)
            out.append(
                {"metric": m, "target": target, "rho": rho, "ci_low": lo, "ci_high": hi, "p_value": p, "n": len(y)}
            )
    return out


def _write_tables(store: TableStore, report: StudyReport, eval_rows: list[dict]) -> None:
    now = datetime.now(UTC)
    base = {
        "study_id": report.study_id,
        "created_at": now,
        "spec_id": report.spec_id,
        "mlflow_run_id": report.mlflow_run_id,
    }
    rows = [r for s in report.subsets for r in _subset_rows(base, s, report)] + _correlation_rows(base, report)
    # an explicit schema: from_pylist would infer the columns from the first row only (dropping ci_low, p_value...)
    store.merge("study", pa.Table.from_pylist(rows, schema=table_def("study").schema), update=True)
    if eval_rows:
        for r in eval_rows:
            r["created_at"] = now
        store.merge(
            "eval_results", pa.Table.from_pylist(eval_rows, schema=table_def("eval_results").schema), update=True
        )


def _subset_rows(base: dict, s: dict, report: StudyReport) -> list[dict]:
    """``study`` rows of one subset: its design, its diversity metrics and its accuracies."""
    head = {**base, "subset_id": s["subset_id"], "n": s["size"]}
    design = json.dumps({"strategy": s["strategy"], "clusters": s["clusters"], "student_id": s["student_id"]})
    rows = [
        {**head, "metric": name, "value": float(s[name]), "kind": "design", "detail": design}
        for name in ("n_clusters", "clusters_used", "clusters_touched", "size")
    ]
    rows += [{**head, "metric": m, "value": s[m], "kind": "diversity"} for m in report.metrics]
    keys = [bench_key(b) for b in report.benchmarks] + [ID_TARGET, TARGET, "train_accuracy"]
    keys += [k for k in [bench_bal_key(b) for b in report.benchmarks] + [ID_BAL, BAL_TARGET] if k in s]
    rows += [{**head, "metric": key, "value": s[key], "kind": "accuracy"} for key in keys]
    return rows


def _correlation_rows(base: dict, report: StudyReport) -> list[dict]:
    """One ``study`` row per (target, metric) correlation, ``subset_id = '*'``, the study's detail attached."""
    detail = json.dumps(
        {
            "student": report.student,
            "pool_size": report.pool_size,
            "metrics": report.metrics,
            "benchmarks": report.benchmarks,
            "dropped": report.dropped,
            "seconds": report.seconds,
        }
    )
    return [
        {
            **base, "subset_id": ALL_SUBSETS, "metric": f"{PREFIX[c['target']]}.{c['metric']}", "value": c["rho"],
            "kind": "correlation", "n": c["n"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
            "p_value": c["p_value"], "detail": detail,
        }
        for c in report.correlations
    ]  # fmt: skip
