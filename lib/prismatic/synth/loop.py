"""The Prismatic Synthesis round, run N times unattended, resumable after a crash; one task at a time.

Rounds work within a task (``synth.tasks``, default ``[synth.task]``): each round r runs one sub-round per task,
and a sub-round (r, task) only ever looks at the pool rows of its task, so a sparse region of the math pool is
never hidden by a dense NLI cluster. One (round, task), paper defaults, every one configurable in ``synth`` /
``cluster``:

1. score and cluster the task's pool of rounds < r (spherical k-means on the vectors of ``cluster.feature_space``:
   the projected gradients, or sentence embeddings for the embedding-diversity baseline; ``clusters`` /
   ``assignments`` keyed by (round, task)); a task with fewer than ``2 * cluster.k_min`` rows, or whose sparse
   clusters have no members, is *skipped* with a one-line reason (log, report, ``rounds.detail``), never silently
   widened to another pool;
2. draw few-shot exemplars from the members of the task's *sparse* clusters (``synth.exemplars`` per call;
   ``synth.exemplar_draw = random``: from the whole task pool, uniformly);
3. generate new problems (``synth.problems_per_call`` per call, T 1.0, top-p 0.95), parse them defensively;
4. sample ``n_solutions`` solutions (T 0.75) and keep a candidate when ``tau`` of them agree;
5. drop exact / near duplicates of the task's pool, decontaminate against the eval sets (word n-gram overlap);
6. score the survivors with the pool's projection spec; keep the samples whose nearest centroid is sparse
   (with ``feature_space = embedding``: embed them, keep those nearest a sparse cluster, then score those;
   ``synth.sparse_filter = false``: score them and keep them all, the unguided arm of
   :mod:`prismatic.synth.guidance`);
7. MERGE accepted samples into ``samples`` (origin ``synthetic``, round r), every candidate into
   ``synth_candidates`` with its status and reason, and the round into ``rounds``; log it to MLflow;
8. with ``synth.train_each_round``: train the student on the task's pool and evaluate it ID / OOD
   (:mod:`prismatic.synth.roundtrain`); round 0 does this for the seed pool, the baseline.

In code, :func:`run_round` is step 1 (``_prepare``) and then named steps over ``list[Candidate]``:
:func:`draw_exemplars` (2) -> :func:`generate_candidates` (3) -> :func:`solve_and_vote` (4) -> :func:`screen` (5)
-> :func:`filter_sparse` (6) -> :func:`write_round` (7). Each step accepts or rejects the pending candidates with a
:class:`~prismatic.synth.types.Reason`, the code stored in ``synth_candidates.reason``.

Tokens: a generation call's completion tokens are split over the candidates it produced (integer shares, the
remainder to the first; the one rejected row that stands for the call when it produced none gets them all), a
candidate's solution tokens go to that candidate; so ``sum(synth_candidates.tokens)`` of a round equals its
``rounds.tokens`` and the MLflow metric ``tokens_generated``, and each call is counted once.

Resume: everything a round reads is the task's pool of rounds < r, exemplars are drawn with a seed derived from
(seed, r), generator requests are cached by hash, and every write is a keyed MERGE; so a round re-run after a
crash recomputes the same candidates (from the cache) and writes nothing twice. A (round, task) is finished when
its row in ``rounds`` says ``done``; ``synthesize`` runs every one that is not (a ``skipped`` one is retried).

Feature space: the pool G-Vendi before / after a round is always computed on the gradient vectors of the scoring
spec, whichever space guides clustering and filtering, so a gradient-guided and an embedding-guided run are
compared on the same metric (MLflow params ``feature_space`` and ``cluster_spec_id`` tell them apart); the
embedding Vendi of the task's pool is reported next to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from prismatic.config import Settings
from prismatic.errors import PrismError
from prismatic.ingest import SAMPLE_ID_NORMALIZATION, bucket_of
from prismatic.normalize import sample_id as make_sample_id
from prismatic.normalize import text_hash
from prismatic.stages.base import Context
from prismatic.synth.decontam import hits_detail
from prismatic.synth.rounds import (
    FINISHED,
    ROUND_READS,
    RoundReport,
    log_parent,
    log_round,
    round_run,
    round_state,
    rounds_row,
    started_row,
)
from prismatic.synth.types import Reason, RoundStatus, Status
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

NLI_PROMPT_RE = re.compile(r"Premise: (?P<premise>.*?)\nHypothesis: (?P<hypothesis>.*?)\n", re.S)


def _now() -> datetime:
    return datetime.now(UTC)


def _hid(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


@dataclass
class Candidate:
    """One proposed problem (or one rejected generation call) on its way through the round's steps: ``pending``
    until a step accepts or rejects it, with a :class:`~prismatic.synth.types.Reason` either way."""

    candidate_id: str
    prompt: str
    exemplar_ids: list[str]
    item: Any = None
    completion: str = ""
    answers: list[str] = field(default_factory=list)
    status: Status = Status.PENDING
    reason: Reason | None = None
    detail: str = ""
    cluster_id: int | None = None
    tokens: int = 0
    samples: list[dict] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return self.status is Status.PENDING

    def reject(self, reason: Reason, detail: str = "") -> None:
        self.status, self.reason, self.detail = Status.REJECTED, Reason(reason), detail[:500]

    def accept(self) -> None:
        self.status, self.reason = Status.ACCEPTED, Reason.ACCEPTED


class RoundSkipped(PrismError):
    """A (round, task) cannot run: too few rows to cluster, or no member in its sparse clusters."""


# ---- pieces -----------------------------------------------------------------------------------------------


def nli_fields(prompt: str, label: str | None) -> dict | None:
    m = NLI_PROMPT_RE.search(prompt + "\n")
    if not m or not label:
        return None
    return {"premise": m["premise"].strip(), "hypothesis": m["hypothesis"].strip(), "label": label}


def load_eval_texts(paths: list[str]) -> dict[str, list[str]]:
    """Texts of the configured eval sets (JSONL files) for decontamination: problem / question / prompt, or
    premise + hypothesis."""
    from prismatic.inputs import resolve_input_path

    out: dict[str, list[str]] = {}
    for p in paths:
        path = resolve_input_path(p)
        texts = []
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if "premise" in row or "sentence1" in row:
                        texts.append(
                            f"{row.get('premise', row.get('sentence1', ''))}\n"
                            f"{row.get('hypothesis', row.get('sentence2', ''))}"
                        )
                    else:
                        texts.append(str(row.get("problem") or row.get("question") or row.get("prompt") or ""))
        except (OSError, json.JSONDecodeError) as e:
            raise PrismError(f"cannot read eval set {p}: {e}", hint="synth.eval_sets takes JSONL files") from None
        out[p] = [t for t in texts if t.strip()]
    return out


class PoolIndex:
    """Exact (normalized text hash) and near (MinHash LSH + exact Jaccard) lookup of texts in the pool."""

    def __init__(self, texts: list[str], settings: Settings):
        from prismatic.minhash import band_keys, shingle_batch, signatures

        self.cfg = settings.dedup
        self.norm = settings.dedup.normalize
        self.hashes = {text_hash(t, "", self.norm) for t in texts}
        self.texts = texts
        self._sb, self._sig, self._bk = shingle_batch, signatures, band_keys
        self.buckets: dict[int, list[int]] = {}
        if texts:
            sh = shingle_batch(texts, self.cfg)
            keys = band_keys(signatures(sh, self.cfg.num_perm, self.cfg.seed), self.cfg.bands, self.cfg.rows_per_band)
            for i, row in enumerate(keys):
                for k in row.tolist():
                    self.buckets.setdefault(k, []).append(i)
            self.shingles = [set(sh.row(i).tolist()) for i in range(len(texts))]

    def duplicate_of(self, text: str) -> tuple[str, float] | None:
        if text_hash(text, "", self.norm) in self.hashes:
            return "exact", 1.0
        if not self.texts or not self.cfg.near:
            return None
        sh = self._sb([text], self.cfg)
        mine = set(sh.row(0).tolist())
        keys = self._bk(self._sig(sh, self.cfg.num_perm, self.cfg.seed), self.cfg.bands, self.cfg.rows_per_band)[0]
        best = 0.0
        for k in keys.tolist():
            for i in self.buckets.get(k, ()):
                other = self.shingles[i]
                j = len(mine & other) / max(1, len(mine | other))
                best = max(best, j)
        return ("near", best) if best >= self.cfg.threshold else None


# ---- the round: named steps over one task's pool ---------------------------------------------------------


def _pool_rows(store: TableStore, rnd: int, task: str) -> list[dict]:
    from prismatic.stages.common import PoolFilter

    df = PoolFilter(task=task, round_below=rnd).apply(store.pool())
    return [r.asDict() for r in df.select("sample_id", "prompt", "completion", "label").collect()]


def _gvendi(store: TableStore, spec_id: str, max_round: int, task: str | None = None) -> tuple[float, int]:
    """Vendi score (G-Vendi for a gradient spec, embedding Vendi for an embedding spec) of the pool of rounds
    <= ``max_round`` (of ``task`` when given) and the number of vectors it saw."""
    from pyspark.sql import functions as F

    from prismatic.diversity import gradient_diversity
    from prismatic.stages.common import PoolFilter

    pool = PoolFilter(task=task, round_at_most=max_round).apply(store.pool())
    df = pool.select("sample_id").join(store.read("gradients").where(F.col("spec_id") == spec_id), "sample_id")
    res = gradient_diversity(df, None, vector_col="vector", spec_col="spec_id").rows
    row = res[res["metric"] == "g_vendi"]
    if row.empty:
        return float("nan"), 0
    return float(row["value"].iloc[0]), int(row["n"].iloc[0])


def _emb_vendi(ctx: Context, rnd: int, task: str) -> tuple[float, float]:
    """Embedding Vendi of the task's pool before and after round ``rnd`` (round 0: both the seed pool); embeds
    only the rows not embedded yet (``diversity.embedding_model``, stored in ``gradients`` under its spec)."""
    from prismatic.stages.common import PoolFilter
    from prismatic.stages.embed import embed_pool

    rep = embed_pool(ctx, PoolFilter(task=task, round_at_most=rnd))
    after = _gvendi(ctx.store, rep.spec_id, rnd, task)[0]
    return (after if rnd == 0 else _gvendi(ctx.store, rep.spec_id, rnd - 1, task)[0]), after


@dataclass
class RoundClusters:
    """The clustering a round works in: the clusters, their centroids and sparse ids, the scoring spec and the spec
    of the clustered vectors."""

    clusters: list
    centroids: np.ndarray
    sparse_ids: set[int]
    spec: Any = None
    cluster_spec_id: str = ""


def _sparse_members(store: TableStore, rnd: int, task: str, clusters: list, report: RoundReport) -> set[str]:
    """Sample ids in the task's sparse clusters; empty sparse clusters get a note, none at all skips the round."""
    from pyspark.sql import functions as F

    sparse_ids = sorted(c["cluster_id"] for c in clusters if c["sparse"])
    sizes = sorted((c["size"] for c in clusters), reverse=True)
    if not sparse_ids:
        raise RoundSkipped(
            f"task {task}: no sparse cluster among k={len(clusters)} (sizes {sizes}): nothing is"
            f" strictly below the size at cluster.sparse_quantile"
        )
    rows = (
        store.read("assignments")
        .where((F.col("round") == rnd) & (F.col("task") == task) & F.col("cluster_id").isin(sparse_ids))
        .select("sample_id", "cluster_id")
        .collect()
    )
    empty = sorted(set(sparse_ids) - {r["cluster_id"] for r in rows})
    if empty:
        note = f"task {task}: sparse clusters {empty} of round {rnd} have no members (no exemplars drawn from them)"
        log.warning(note)
        report.notes.append(note)
    if not rows:
        raise RoundSkipped(f"task {task}: its {len(sparse_ids)} sparse clusters have no members (sizes {sizes})")
    return {r["sample_id"] for r in rows}


def _prepare(ctx: Context, rnd: int, task: str, report: RoundReport) -> RoundClusters:
    """Score and cluster the task's pool of rounds < rnd and read its clusters (the sparse ones flagged)."""
    from pyspark.sql import functions as F

    from prismatic.stages.cluster import TooFewToCluster, check_round_spec, cluster_task
    from prismatic.stages.common import PoolFilter
    from prismatic.stages.score import score_pool

    store, settings = ctx.store, ctx.settings
    t0 = time.perf_counter()
    spec = ctx.spec()
    # the task's pool of rounds < rnd must be scored before it is clustered (and for G-Vendi in either space)
    score_pool(ctx, PoolFilter(task=task, round_below=rnd))
    report.gvendi_before, report.pool_before = _gvendi(store, spec.spec_id, rnd - 1, task)
    report.spec_id, report.feature_space = spec.spec_id, settings.cluster.feature_space
    report.seconds["score"] = round(time.perf_counter() - t0, 2)
    try:
        crep = cluster_task(ctx, round=rnd, task=task)  # embedding space: embeds missing rows first
    except TooFewToCluster as e:
        raise RoundSkipped(str(e), hint=e.hint) from None
    report.cluster_spec_id, report.k, report.sparse_k = crep.spec_id, crep.k, crep.sparse
    clusters = (
        store.read("clusters").where((F.col("round") == rnd) & (F.col("task") == task)).orderBy("cluster_id").collect()
    )
    check_round_spec(rnd, {c["spec_id"] for c in clusters}, crep.spec_id, report.feature_space)
    report.seconds["cluster"] = round(time.perf_counter() - t0 - report.seconds["score"], 2)
    centroids = np.asarray([c["centroid"] for c in clusters], dtype=np.float32)
    return RoundClusters(clusters, centroids, {c["cluster_id"] for c in clusters if c["sparse"]}, spec, crep.spec_id)


# ---- the steps of a round: draw exemplars -> generate -> solve and vote -> screen -> filter -> write ----------
# Each step takes the round's candidates and returns them with its outcome marked: it works on the pending ones
# and accepts or rejects them with a Reason, which a rejected candidate keeps all the way to `synth_candidates`.


@dataclass
class RoundWork:
    """What the steps of one (round, task) share: the stages' context, the round, the task (name and object), the
    generator, the decontamination index and the report they fill."""

    ctx: Context
    rnd: int
    task: str
    task_obj: Any
    generator: Any
    decontam: Any
    report: RoundReport

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def store(self) -> TableStore:
        return self.ctx.store


def exemplar_source(pool: list[dict], members: set[str] | None) -> list[dict]:
    """The pool rows exemplars are drawn from: the sparse-cluster ``members``, or (``None``: ``synth.exemplar_draw
    = random``) the whole pool, whatever its clusters."""
    return list(pool) if members is None else [p for p in pool if p["sample_id"] in members]


def draw_exemplars(w: RoundWork, rc: RoundClusters) -> tuple[list[dict], list[list[dict]]]:
    """The task's pool of rounds < r, and ``synth.calls_per_round`` groups of ``synth.exemplars`` few-shot exemplars
    drawn (seeded by (seed, r)) from the members of its sparse clusters (``synth.exemplar_draw = random``: from the
    whole pool, uniformly; the clusters are not looked at).

    Raises:
        RoundSkipped: the sparse clusters have no member, or none with the prompt form the task's template needs.
    """
    from prismatic.synth.tasks import sample_exemplar_groups

    cfg = w.settings.synth
    members = None if cfg.exemplar_draw == "random" else _sparse_members(w.store, w.rnd, w.task, rc.clusters, w.report)
    pool = _pool_rows(w.store, w.rnd, w.task)
    chosen = exemplar_source(pool, members)
    if w.task == "nli":
        chosen = [dict(m, **f) for m in chosen if (f := nli_fields(m["prompt"], m["label"]))]
    else:
        chosen = [dict(m, problem=m["prompt"]) for m in chosen]
    if not chosen:
        where = "pool rows" if members is None else "sparse-cluster members"
        raise RoundSkipped(
            f"task {w.task}: none of the {len(pool if members is None else members)} {where} has the {w.task}"
            " prompt form the exemplar template needs"
        )
    ordered = sorted(chosen, key=lambda m: m["sample_id"])  # sorted input gives stable draws
    return pool, sample_exemplar_groups(ordered, cfg.exemplars, cfg.calls_per_round, cfg.seed * 1_000_003 + w.rnd)


def generate_candidates(w: RoundWork, groups: list[list[dict]]) -> list[Candidate]:
    """One generation call per exemplar group (T ``problem_temperature``) -> the candidates it proposes."""
    cfg = w.settings.synth
    gens = w.generator.generate(
        w.task_obj.generation_prompts(groups),
        n=1,
        temperature=cfg.problem_temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.generator.max_new_tokens,
        seed=cfg.seed * 1000 + w.rnd,
    )
    candidates: list[Candidate] = []
    for g_idx, (group, out) in enumerate(zip(groups, gens, strict=True)):
        w.report.tokens += out[0].completion_tokens
        candidates += _call_candidates(w, g_idx, [m["sample_id"] for m in group], out[0])
    return candidates


def _call_candidates(w: RoundWork, g_idx: int, ex_ids: list[str], gen) -> list[Candidate]:
    """The candidates of one generation call: one per parsed problem (at most ``problems_per_call``; the call's
    tokens split over them by :func:`token_shares`), or one rejected row that stands for the call (failed or
    unreadable)."""
    if not gen.ok:
        c = Candidate(_hid(w.rnd, w.task, g_idx, Reason.GENERATOR_ERROR), "", ex_ids, tokens=gen.completion_tokens)
        c.reject(Reason.GENERATOR_ERROR, gen.error or "")
        return [c]
    parsed = w.task_obj.parse_generation(gen.text, truncated=gen.finish_reason == "length")
    items = parsed[: w.settings.synth.problems_per_call] if isinstance(parsed, list) else []
    if not items:
        c = Candidate(
            _hid(w.rnd, w.task, g_idx, Reason.UNPARSEABLE), gen.text[:2000], ex_ids, tokens=gen.completion_tokens
        )
        if isinstance(parsed, list):
            c.reject(Reason.UNPARSEABLE, "no problem in the generation")
        else:
            c.reject(parsed.reason, parsed.detail)
        return [c]
    out = []
    shares = token_shares(gen.completion_tokens, len(items))
    for i_idx, (item, tokens) in enumerate(zip(items, shares, strict=True)):
        text = w.task_obj.candidate_text(item)
        out.append(Candidate(_hid(w.rnd, w.task, g_idx, i_idx, text), text, ex_ids, item=item, tokens=tokens))
    return out


def token_shares(total: int, n: int) -> list[int]:
    """``total`` tokens of one call over its ``n`` candidates: equal integer shares, the remainder to the first, so
    the shares add up to ``total`` exactly (``token_shares(7, 3) == [3, 2, 2]``)."""
    base, rest = divmod(int(total), n)
    return [base + rest] + [base] * (n - 1)


def solve_and_vote(w: RoundWork, candidates: list[Candidate]) -> list[Candidate]:
    """Solve each pending candidate ``n_solutions`` times (T ``solution_temperature``); keep it when ``tau``
    answers agree (its agreeing solutions become its samples), else reject it with the vote's reason."""
    cfg = w.settings.synth
    live = [c for c in candidates if c.pending]
    if not live:
        return candidates
    sols = w.generator.generate(
        w.task_obj.solution_prompts([c.item for c in live]),
        n=cfg.n_solutions,
        temperature=cfg.solution_temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.generator.max_new_tokens,
        seed=cfg.seed * 1000 + w.rnd + 7,
    )
    for c, outs in zip(live, sols, strict=True):
        spent = sum(o.completion_tokens for o in outs)
        c.tokens += spent
        w.report.tokens += spent
        if not any(o.ok for o in outs):
            c.reject(Reason.GENERATOR_ERROR, next((o.error for o in outs if o.error), ""))
            continue
        texts = [o.text if o.ok else "" for o in outs]
        verdict = w.task_obj.verify(c.item, texts)
        c.answers = [a.raw or "" for a in verdict.vote.answers]
        if not verdict.accepted:
            c.reject(verdict.rejected.reason, verdict.rejected.detail)
            continue
        c.samples = w.task_obj.samples(c.item, verdict, texts)
        c.completion = c.samples[0]["completion"] if c.samples else ""
    return candidates


def screen(w: RoundWork, candidates: list[Candidate], pool: list[dict]) -> list[Candidate]:
    """Reject duplicates of the task's pool (exact or near, by prompt or by prompt + solution) and of each other,
    and candidates that share a word n-gram with an eval set (decontamination)."""
    index = PoolIndex([p["prompt"] + "\n" + p["completion"] for p in pool], w.settings)
    prompt_index = PoolIndex([p["prompt"] for p in pool], w.settings)
    seen: set[str] = set()
    for c in candidates:
        if not c.pending:
            continue
        if prompt_index.duplicate_of(c.prompt) or any(
            index.duplicate_of(s["prompt"] + "\n" + s["completion"]) for s in c.samples
        ):
            c.reject(Reason.DUPLICATE, "same or near-same text as a pool sample")
            continue
        if c.prompt in seen:
            c.reject(Reason.DUPLICATE, "same text as another candidate of this round")
            continue
        seen.add(c.prompt)
        hit, hits = w.decontam.contaminated(c.prompt) if w.decontam is not None else (False, [])
        if hit:
            c.reject(Reason.CONTAMINATED, hits_detail(hits))
            w.report.contamination_hits += len(hits)
    return candidates


def filter_sparse(w: RoundWork, candidates: list[Candidate], rc: RoundClusters) -> list[Candidate]:
    """The sparse-cluster filter in the round's feature space: accept a pending candidate whose samples' nearest
    centroid is sparse (``dense_cluster`` otherwise); accepted samples get their sample ids. With
    ``synth.sparse_filter = false`` every pending candidate whose samples score is accepted (its nearest cluster
    still recorded in gradient space), so the pool's G-Vendi stays measurable."""
    from prismatic.gradients.udf import get_scorer

    live = [c for c in candidates if c.pending]
    scorer = get_scorer(w.settings.scoring)
    if not w.settings.synth.sparse_filter:
        gradient_space = w.settings.cluster.feature_space != "embedding"
        _filter_by_gradient(live, rc.centroids if gradient_space else None, rc.sparse_ids, scorer, keep_dense=True)
    elif w.settings.cluster.feature_space == "embedding":
        _filter_by_embedding(live, rc.centroids, rc.sparse_ids, scorer, w.settings)
    else:
        _filter_by_gradient(live, rc.centroids, rc.sparse_ids, scorer)
    for c in live:
        if c.status is not Status.ACCEPTED:
            continue
        # agreeing solutions with the same text are one sample (one row in `samples`, counted once)
        unique: dict[str, dict] = {}
        for s in c.samples:
            sid = make_sample_id(w.task, s["prompt"], s["completion"], SAMPLE_ID_NORMALIZATION)
            unique.setdefault(sid, {**s, "sample_id": sid})
        c.samples = list(unique.values())
    return candidates


def write_round(w: RoundWork, rc: RoundClusters, candidates: list[Candidate]) -> list[dict]:
    """MERGE the accepted samples into ``samples`` (and their vectors into ``gradients``) and every candidate into
    ``synth_candidates``; returns the accepted samples."""
    if w.report.resumed:
        _drop_failed_calls(w)
    now = _now()
    accepted = [s for c in candidates if c.status is Status.ACCEPTED for s in c.samples]
    if accepted:
        space = w.settings.cluster.feature_space
        w.store.merge(
            "gradients", pa.Table.from_pylist(_vector_rows(accepted, rc.spec.spec_id, rc.cluster_spec_id, space, now))
        )
        w.store.merge("samples", pa.Table.from_pylist(_sample_rows(w, accepted, now)))
    w.store.merge("synth_candidates", pa.Table.from_pylist(_candidate_rows(w, candidates, now)))
    return accepted


def _drop_failed_calls(w: RoundWork) -> None:
    """A retried round: the calls that failed last time were asked again (errors are never cached), so their
    generator_error rows give way to what the calls returned now (ids of real candidates differ)."""
    if not w.store.exists("synth_candidates"):
        return
    dropped = w.store.delete(
        "synth_candidates", {"round": int(w.rnd), "task": w.task, "reason": Reason.GENERATOR_ERROR.value}
    )
    if dropped:
        log.info("round %d (%s): replaced %d generator_error rows of the last try", w.rnd, w.task, dropped)


def _vector_rows(accepted: list[dict], spec_id: str, cluster_spec_id: str, space: str, now) -> list[dict]:
    rows = [
        {
            "sample_id": s["sample_id"],
            "spec_id": spec_id,
            "vector": np.asarray(s["vector"]).tolist(),
            "loss": s["loss"],
            "n_tokens": s["n_tokens"],
            "truncated": s["truncated"],
            "created_at": now,
        }
        for s in accepted
    ]
    if space == "embedding":  # the vectors the next round clusters: no need to embed them again
        rows += [
            {
                "sample_id": s["sample_id"],
                "spec_id": cluster_spec_id,
                "vector": np.asarray(s["embedding"]).tolist(),
                "loss": None,
                "n_tokens": s["embedding_tokens"],
                "truncated": s["embedding_truncated"],
                "created_at": now,
            }
            for s in accepted
        ]
    return rows


def _sample_rows(w: RoundWork, accepted: list[dict], now) -> list[dict]:
    task, rnd, buckets = w.task, w.rnd, w.settings.ingest.buckets
    return [
        {"sample_id": s["sample_id"], "task": task, "source": "synthetic", "prompt": s["prompt"],
         "completion": s["completion"], "messages": None, "label": s["completion"] if task == "nli" else None,
         "origin": "synthetic", "round": rnd, "bucket": bucket_of(s["sample_id"], buckets),
         "file": "", "line": 0, "batch_id": f"round-{rnd}", "created_at": now}
        for s in accepted
    ]  # fmt: skip


def _candidate_rows(w: RoundWork, candidates: list[Candidate], now) -> list[dict]:
    generator = w.generator.backend + ":" + w.generator.model
    return [
        {"round": w.rnd, "candidate_id": c.candidate_id, "task": w.task, "prompt": c.prompt,
         "completion": c.completion, "generator": generator, "exemplar_ids": c.exemplar_ids,
         "answers": c.answers, "status": c.status, "reason": c.reason, "detail": c.detail,
         "cluster_id": c.cluster_id, "tokens": c.tokens, "created_at": now}
        for c in candidates
    ]  # fmt: skip


@contextmanager
def _timed(report: RoundReport, step: str) -> Iterator[None]:
    """Add the wall time of the block (when it finishes) to ``report.seconds[step]``."""
    t0 = time.perf_counter()
    yield
    report.seconds[step] = round(report.seconds.get(step, 0.0) + time.perf_counter() - t0, 2)


def run_round(ctx: Context, rnd: int, generator, task, decontam, report: RoundReport):
    """Run round ``rnd`` of ``report.task`` end to end (see the module docstring); fills ``report``.

    Args:
        task: the task object (:func:`prismatic.synth.tasks.get_task`) of ``report.task``.

    Returns:
        (candidates, clusters) of the round.

    Raises:
        RoundSkipped: the task cannot run this round (too few rows to cluster, no sparse-cluster member).
    """
    w = RoundWork(ctx, rnd, report.task, task, generator, decontam, report)
    t0 = time.perf_counter()
    rc = _prepare(ctx, rnd, w.task, report)
    with _timed(report, "cluster"):
        pool, groups = draw_exemplars(w, rc)
    with _timed(report, "generate"):
        candidates = generate_candidates(w, groups)
    with _timed(report, "solve"):
        candidates = solve_and_vote(w, candidates)
    with _timed(report, "filter"):
        candidates = filter_sparse(w, screen(w, candidates, pool), rc)
    accepted = write_round(w, rc, candidates)
    report.generated = len(candidates)
    report.accepted_candidates = sum(c.status is Status.ACCEPTED for c in candidates)
    report.accepted_samples = len(accepted)
    report.reasons.update(c.reason for c in candidates)
    report.gvendi_after, report.pool_after = _gvendi(ctx.store, rc.spec.spec_id, rnd, w.task)
    report.seconds["total"] = round(time.perf_counter() - t0, 2)
    return candidates, rc.clusters


def _filter_by_gradient(
    survivors: list[Candidate],
    centroids: np.ndarray | None,
    sparse_ids: set[int],
    scorer,
    keep_dense: bool = False,
) -> None:
    """Score each candidate's samples (projected gradients), keep those whose nearest centroid is sparse
    (``keep_dense``: keep every scored sample; ``centroids`` None: no nearest cluster is recorded)."""
    from prismatic.cluster import assign

    for c in survivors:
        scored = scorer.score([(s["prompt"], s["completion"]) for s in c.samples])
        good = [(s, r) for s, r in zip(c.samples, scored, strict=True) if r.error is None]
        if not good:
            c.reject(Reason.SCORE_FAILED, "; ".join(r.error or "" for r in scored))
            continue
        if centroids is None:
            labels = [-1] * len(good)
        else:
            labels = [int(lab) for lab in assign(np.stack([r.vector for _, r in good]), centroids)[0]]
        kept = [(s, r, lab) for (s, r), lab in zip(good, labels, strict=True) if keep_dense or lab in sparse_ids]
        c.cluster_id = None if centroids is None else labels[0]
        if not kept:
            c.reject(Reason.DENSE_CLUSTER, f"nearest cluster {int(labels[0])} is not sparse")
            continue
        c.accept()
        c.samples = [_with_gradient(s, r, lab) for s, r, lab in kept]


def _filter_by_embedding(
    survivors: list[Candidate], centroids: np.ndarray, sparse_ids: set[int], scorer, settings: Settings
) -> None:
    """Embed every survivor's samples at once, keep those whose nearest (embedding) centroid is sparse, then score
    the kept ones: their gradient vectors go to ``gradients`` so the pool's G-Vendi stays comparable."""
    from prismatic.cluster import assign
    from prismatic.embeddings import embed_samples

    flat = [(c, s) for c in survivors for s in c.samples]
    if not flat:
        return
    dcfg = settings.diversity
    vecs, n_tok, trunc = embed_samples(
        [s["prompt"] for _, s in flat],
        [s["completion"] for _, s in flat],
        dcfg.embedding_model,
        dcfg.embedding_device,
        dcfg.embedding_batch_size,
        dcfg.embedding_max_tokens,
    )
    labels, _ = assign(vecs, centroids)
    per_candidate: dict[str, list[tuple[dict, int]]] = {}
    for (c, s), v, nt, tr, lab in zip(flat, vecs, n_tok, trunc, labels, strict=True):
        s.update(embedding=v, embedding_tokens=int(nt), embedding_truncated=bool(tr))
        per_candidate.setdefault(c.candidate_id, []).append((s, int(lab)))
    for c in survivors:
        mine = per_candidate.get(c.candidate_id, [])
        if not mine:  # a candidate without samples cannot pass the filter
            c.reject(Reason.SCORE_FAILED, "no samples to embed")
            continue
        c.cluster_id = mine[0][1]
        kept = [(s, lab) for s, lab in mine if lab in sparse_ids]
        if not kept:
            c.reject(Reason.DENSE_CLUSTER, f"nearest cluster {c.cluster_id} (embedding space) is not sparse")
            continue
        scored = scorer.score([(s["prompt"], s["completion"]) for s, _ in kept])
        good = [(s, r, lab) for (s, lab), r in zip(kept, scored, strict=True) if r.error is None]
        if not good:
            c.reject(Reason.SCORE_FAILED, "; ".join(r.error or "" for r in scored))
            continue
        c.accept()
        c.samples = [_with_gradient(s, r, lab) for s, r, lab in good]


def _with_gradient(sample: dict, result, cluster_id: int) -> dict:
    return {
        **sample,
        "vector": result.vector,
        "loss": result.loss,
        "n_tokens": result.n_tokens,
        "truncated": result.truncated,
        "cluster_id": cluster_id,
    }


# ---- the loop ---------------------------------------------------------------------------------------------


@dataclass
class LoopContext:
    """What every (round, task) of one ``synthesize`` call shares."""

    store: TableStore
    settings: Settings
    generator: Any
    tasks: dict[str, Any]  # task name -> task object
    decontam: Any
    trainer: Any  # RoundTrainer or None
    parent: Any  # the parent MLflow run or None
    state: dict = field(default_factory=dict)  # (round, task) -> rounds row
    stages: Context | None = None  # the stages' context of this call: specs resolved (and recorded) once


def _task_object(settings: Settings, name: str):
    from prismatic.synth.tasks import get_task

    kwargs = (
        {"labels": settings.ingest.nli_labels, "sample_template": settings.ingest.nli_prompt_template}
        if name == "nli"
        else {}
    )
    return get_task(settings.synth.for_task(name), **kwargs)


def _stop_reason(ctx: LoopContext, target_pool_size: int | None, token_budget: int | None, spent: int) -> str:
    if target_pool_size:
        pool_size = ctx.store.pool().count()
        if pool_size >= target_pool_size:
            return f"pool has {pool_size} >= target {target_pool_size} samples: stopping"
    if token_budget and spent >= token_budget:
        return f"token budget {token_budget} spent: stopping"
    return ""


def _run_one(ctx: LoopContext, rnd: int, task: str) -> RoundReport:
    """One (round, task) in its MLflow child run: round 0 measures and trains on the seed pool, a round r >= 1
    synthesizes; then the student (``train_each_round``); then its ``rounds`` row."""
    store, settings = ctx.store, ctx.settings
    prev = ctx.state.get((rnd, task))
    run_id = prev["mlflow_run_id"] if prev else None
    report = RoundReport(rnd, task, resumed=prev is not None)
    versions_read = (
        json.loads(prev["versions_read"]) if prev and prev["versions_read"] else store.versions(ROUND_READS)
    )
    candidates: list[Candidate] = []
    clusters: list = []
    with round_run(settings, rnd, task, run_id, ctx.parent) as child:
        child_id = child.info.run_id if child is not None else None
        if child is not None:
            from prismatic import tracking

            tracking.log_table_versions(versions_read, "versions_read")
        if prev is None or prev["status"] != RoundStatus.STARTED:
            store.merge("rounds", pa.Table.from_pylist([started_row(rnd, task, child_id, versions_read)]), update=True)
        try:
            if rnd == 0:
                _measure_seed_pool(ctx.stages, task, report)
            else:
                candidates, clusters = run_round(ctx.stages, rnd, ctx.generator, ctx.tasks[task], ctx.decontam, report)
            if ctx.trainer is not None:
                ctx.trainer.train(store, settings, rnd, task, report)
        except RoundSkipped as e:
            report.status, report.detail = RoundStatus.SKIPPED, e.args[0] + (f" ({e.hint})" if e.hint else "")
            log.warning("round %d (%s) skipped: %s", rnd, task, report.detail)
        _mark_incomplete(report)
        if report.status in (RoundStatus.DONE, RoundStatus.INCOMPLETE):
            t0 = time.perf_counter()
            report.emb_vendi_before, report.emb_vendi_after = _emb_vendi(ctx.stages, rnd, task)
            report.seconds["emb_vendi"] = round(time.perf_counter() - t0, 2)
        if child is not None:
            log_round(report, candidates, clusters, store, settings)
    row = rounds_row(report, child_id, versions_read, store.versions())
    store.merge("rounds", pa.Table.from_pylist([row]), update=True)
    if ctx.parent is not None:
        log_parent(store)
    return report


def _mark_incomplete(report: RoundReport) -> None:
    """A done round that lost candidates to generator errors is not finished: the next ``prism synthesize`` runs it
    again and asks only the failed calls anew."""
    failed = report.reasons.get(Reason.GENERATOR_ERROR, 0)
    if report.status == RoundStatus.DONE and failed:
        report.status = RoundStatus.INCOMPLETE
        report.detail = (
            f"{failed} candidates lost to generator errors; run `prism synthesize` again to retry "
            "them (answered calls come from the request cache)"
        )
        log.warning("round %d (%s): %s", report.round, report.task, report.detail)


def _measure_seed_pool(ctx: Context, task: str, report: RoundReport) -> None:
    """Round 0: score the task's seed pool and measure it (no generation); the student comes after."""
    from prismatic.stages.cluster import min_cluster_rows
    from prismatic.stages.common import PoolFilter
    from prismatic.stages.score import score_pool

    settings = ctx.settings
    spec = ctx.spec()
    score_pool(ctx, PoolFilter(task=task, round_below=1))
    report.gvendi_after, report.pool_after = _gvendi(ctx.store, spec.spec_id, 0, task)
    report.gvendi_before, report.pool_before = report.gvendi_after, report.pool_after
    report.spec_id, report.feature_space = spec.spec_id, settings.cluster.feature_space
    if report.pool_after == 0:
        raise RoundSkipped(
            f"task {task}: no scored seed rows (round 0) to measure or train on",
            hint=f"ingest {task} seed data first (prism ingest ... --task {task})",
        )
    if report.pool_after < min_cluster_rows(settings.cluster):
        report.notes.append(
            f"task {task}: {report.pool_after} seed rows, fewer than the"
            f" {min_cluster_rows(settings.cluster)} a round needs to cluster"
        )


def _decontam_index(settings: Settings):
    """The n-gram index of the configured eval sets (``synth.eval_sets``), or None when there are none."""
    from prismatic.synth.decontam import DecontamIndex

    cfg = settings.synth
    eval_texts = load_eval_texts(cfg.eval_sets)
    if not eval_texts:
        return None
    return DecontamIndex.build(eval_texts, n=cfg.decontam_ngram, min_words=cfg.decontam_min_words)


def synthesize(
    store: TableStore,
    settings: Settings,
    rounds: int | None = None,
    generator=None,
    target_pool_size: int | None = None,
    token_budget: int | None = None,
    console=None,
) -> list[RoundReport]:
    """Run synthesis rounds until ``rounds`` are done (counting finished ones), the pool reaches
    ``target_pool_size`` or ``token_budget`` generated tokens are spent; resumes at the first unfinished round.

    Each round runs one sub-round per task of ``synth.tasks`` (in order); with ``synth.train_each_round`` a round 0
    per task (the seed pool, trained and evaluated, no generation) comes first.

    Args:
        generator: a ``prismatic.synth.generators.Generator``; default from ``synth.generator`` with the request
            cache under ``<data_root>/synth_cache``.
        console: a rich console that gets each round's one-line summary.

    Returns:
        The reports of the (round, task) pairs run by this call, in order (done and skipped ones).
    """
    from prismatic import tracking
    from prismatic.synth.cache import SQLiteRequestCache
    from prismatic.synth.generators import make_generator
    from prismatic.synth.roundtrain import RoundTrainer
    from prismatic.synth.secrets import install_redaction

    install_redaction()
    cfg = settings.synth
    rounds = rounds or cfg.rounds
    target_pool_size = target_pool_size or cfg.target_pool_size
    token_budget = token_budget or cfg.token_budget
    trainer = RoundTrainer.plan(settings, cfg.task_list) if cfg.train_each_round else None  # checked before work
    if generator is None:
        generator = make_generator(cfg.generator, SQLiteRequestCache(settings.root / "synth_cache"))
    decontam = _decontam_index(settings)
    state = round_state(store)
    todo = [
        (r, t)
        for r in range(0 if trainer else 1, rounds + 1)
        for t in cfg.task_list
        if state.get((r, t), {}).get("status") not in FINISHED
    ]
    spent = sum(json.loads(r["counts"] or "{}").get("tokens", 0) for r in state.values() if r["status"] in FINISHED)
    params = {
        **tracking.safe_params(settings),
        "generator": f"{generator.backend}:{generator.model}",
        "tau": cfg.tau,
        "n_solutions": cfg.n_solutions,
    }
    reports: list[RoundReport] = []
    if not todo:
        return reports
    with tracking.run(settings, "synthesize", params=params, tags={"rounds": rounds}) as parent:
        ctx = LoopContext(
            store,
            settings,
            generator,
            {t: _task_object(settings, t) for t in cfg.task_list},
            decontam,
            trainer,
            parent,
            state,
            Context(settings, store),
        )
        for rnd, task in todo:
            stop = _stop_reason(ctx, target_pool_size, token_budget, spent) if rnd > 0 else ""
            if stop:
                log.info(stop)
                break
            report = _run_one(ctx, rnd, task)
            spent += report.tokens
            reports.append(report)
            if console is not None:
                console.print(report.summary())
    return reports
