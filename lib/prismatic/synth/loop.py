"""The Prismatic Synthesis round, run N times unattended, resumable after a crash.

One round r (paper defaults, every one configurable in ``synth`` / ``cluster``):

1. cluster the pool of rounds < r (spherical k-means on the vectors of ``cluster.feature_space``: the projected
   gradients, or sentence embeddings for the embedding-diversity baseline; ``clusters`` / ``assignments``);
2. draw few-shot exemplars from the pool's *sparse* clusters (``synth.exemplars`` per call);
3. generate new problems (``synth.problems_per_call`` per call, T 1.0, top-p 0.95), parse them defensively;
4. sample ``n_solutions`` solutions (T 0.75) and keep a candidate when ``tau`` of them agree;
5. score the survivors with the pool's projection spec; keep the samples whose nearest centroid is sparse
   (with ``feature_space = embedding``: embed them, keep those nearest a sparse cluster, then score those);
6. drop exact / near duplicates of the pool, decontaminate against the eval sets (word n-gram overlap);
7. MERGE accepted samples into ``samples`` (origin ``synthetic``, round r), every candidate into
   ``synth_candidates`` with its status and reason, and the round into ``rounds``; log it to MLflow.

Resume: everything a round reads is the pool of rounds < r, exemplars are drawn with a seed derived from
(seed, r), generator requests are cached by hash, and every write is a keyed MERGE; so a round re-run after a
crash recomputes the same candidates (from the cache) and writes nothing twice. A round is done when its row
in ``rounds`` says so; ``synthesize`` starts at the first round that is not.

Feature space: the pool G-Vendi before / after a round is always computed on the gradient vectors of the scoring
spec, whichever space guides clustering and filtering, so a gradient-guided and an embedding-guided run are
compared on the same metric (MLflow params ``feature_space`` and ``cluster_spec_id`` tell them apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections import Counter
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
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

REASONS = (
    "accepted",
    "no_consensus",
    "unparseable",
    "too_long",
    "dense_cluster",
    "duplicate",
    "contaminated",
    "generator_error",
    "score_failed",
)
NLI_PROMPT_RE = re.compile(r"Premise: (?P<premise>.*?)\nHypothesis: (?P<hypothesis>.*?)\n", re.S)


def _now() -> datetime:
    return datetime.now(UTC)


def _hid(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:20]


@dataclass
class Candidate:
    candidate_id: str
    prompt: str
    exemplar_ids: list[str]
    item: Any = None
    completion: str = ""
    answers: list[str] = field(default_factory=list)
    status: str = "pending"
    reason: str = ""
    detail: str = ""
    cluster_id: int | None = None
    tokens: int = 0
    samples: list[dict] = field(default_factory=list)

    def reject(self, reason: str, detail: str = "") -> None:
        self.status, self.reason, self.detail = "rejected", reason, detail[:500]


@dataclass
class RoundReport:
    round: int
    generated: int = 0
    accepted_candidates: int = 0
    accepted_samples: int = 0
    reasons: Counter = field(default_factory=Counter)
    tokens: int = 0
    contamination_hits: int = 0
    gvendi_before: float = float("nan")
    gvendi_after: float = float("nan")
    pool_before: int = 0
    pool_after: int = 0
    seconds: dict = field(default_factory=dict)
    resumed: bool = False
    feature_space: str = "gradient"
    spec_id: str = ""  # the scoring (gradient) spec: G-Vendi and the vectors written for accepted samples
    cluster_spec_id: str = ""  # the spec of the vectors clustered and filtered in (= spec_id for gradient)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_candidates / self.generated if self.generated else 0.0

    def summary(self) -> str:
        return (
            f"round {self.round}: {self.generated} candidates -> {self.accepted_candidates} accepted"
            f" ({self.accepted_samples} samples); pool {self.pool_before} -> {self.pool_after};"
            f" G-Vendi {self.gvendi_before:.3f} -> {self.gvendi_after:.3f}; reasons {dict(self.reasons)}"
        )


# ---- pieces -----------------------------------------------------------------------------------------------


def exemplar_groups(members: list[dict], calls: int, k: int, seed: int) -> list[list[dict]]:
    """``calls`` groups of ``k`` exemplars drawn (seeded) from ``members``; sorted input gives stable draws."""
    if not members:
        return []
    rng = random.Random(seed)
    ordered = sorted(members, key=lambda m: m["sample_id"])
    return [rng.sample(ordered, min(k, len(ordered))) for _ in range(calls)]


def nli_fields(prompt: str, label: str | None) -> dict | None:
    m = NLI_PROMPT_RE.search(prompt + "\n")
    if not m or not label:
        return None
    return {"premise": m["premise"].strip(), "hypothesis": m["hypothesis"].strip(), "label": label}


def load_eval_texts(paths: list[str]) -> dict[str, list[str]]:
    """Texts of the configured eval sets (JSONL files) for decontamination: problem / question / prompt, or
    premise + hypothesis."""
    from prismatic.pipeline import resolve_input_path

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


# ---- the round --------------------------------------------------------------------------------------------


def _pool_rows(store: TableStore, rnd: int, task: str) -> list[dict]:
    from pyspark.sql import functions as F

    df = store.pool().where((F.col("round") < rnd) & (F.col("task") == task))
    return [r.asDict() for r in df.select("sample_id", "prompt", "completion", "label").collect()]


def _gvendi(store: TableStore, spec_id: str, max_round: int) -> tuple[float, int]:
    from pyspark.sql import functions as F

    from prismatic.diversity import gradient_diversity

    df = (
        store.pool()
        .where(F.col("round") <= max_round)
        .select("sample_id")
        .join(store.read("gradients").where(F.col("spec_id") == spec_id), "sample_id")
    )
    res = gradient_diversity(df, None, vector_col="vector", spec_col="spec_id").rows
    row = res[res["metric"] == "g_vendi"]
    if row.empty:
        return float("nan"), 0
    return float(row["value"].iloc[0]), int(row["n"].iloc[0])


def run_round(store: TableStore, settings: Settings, rnd: int, generator, task, decontam, report: RoundReport):
    """Run round ``rnd`` end to end (see the module docstring); fills ``report``."""
    from pyspark.sql import functions as F

    from prismatic.gradients.udf import get_scorer
    from prismatic.stages import check_round_spec, cluster_stage, register_spec, score_stage

    cfg = settings.synth
    space = settings.cluster.feature_space
    t0 = time.perf_counter()
    spec = register_spec(store, settings)
    # the pool of rounds < rnd must be scored before it is clustered (and for G-Vendi in either feature space)
    score_stage(store, settings, where=f"round < {int(rnd)}")
    report.gvendi_before, report.pool_before = _gvendi(store, spec.spec_id, rnd - 1)
    crep = cluster_stage(store, settings, round=rnd)  # embedding space: embeds the pool's missing rows first
    report.feature_space, report.spec_id, report.cluster_spec_id = space, spec.spec_id, crep.spec_id
    report.seconds["cluster"] = round(time.perf_counter() - t0, 2)
    clusters = store.read("clusters").where(F.col("round") == rnd).orderBy("cluster_id").collect()
    check_round_spec(rnd, {c["spec_id"] for c in clusters}, crep.spec_id, space)
    centroids = np.asarray([c["centroid"] for c in clusters], dtype=np.float32)
    sparse_ids = {c["cluster_id"] for c in clusters if c["sparse"]}
    sparse_members = {
        r["sample_id"]
        for r in store.read("assignments")
        .where((F.col("round") == rnd) & F.col("cluster_id").isin(list(sparse_ids) or [-1]))
        .select("sample_id")
        .collect()
    }
    pool = _pool_rows(store, rnd, cfg.task)
    members = [p for p in pool if p["sample_id"] in sparse_members] or pool
    if cfg.task == "nli":
        members = [dict(m, **f) for m in members if (f := nli_fields(m["prompt"], m["label"]))]
    else:
        members = [dict(m, problem=m["prompt"]) for m in members]
    groups = exemplar_groups(members, cfg.calls_per_round, cfg.exemplars, cfg.seed * 1_000_003 + rnd)
    if not groups:
        raise PrismError(
            f"no {cfg.task} samples in the pool to draw exemplars from",
            hint=f"ingest {cfg.task} seed data first (prism ingest ... --task {cfg.task})",
        )

    # generate problems
    t1 = time.perf_counter()
    prompts = task.generation_prompts(groups)
    gens = generator.generate(
        prompts,
        n=1,
        temperature=cfg.problem_temperature,
        top_p=cfg.top_p,
        max_tokens=settings.synth.generator.max_new_tokens,
        seed=cfg.seed * 1000 + rnd,
    )
    candidates: list[Candidate] = []
    for g_idx, (group, out) in enumerate(zip(groups, gens, strict=True)):
        gen = out[0]
        report.tokens += gen.completion_tokens
        ex_ids = [m["sample_id"] for m in group]
        if not gen.ok:
            c = Candidate(_hid(rnd, g_idx, "generator_error"), "", ex_ids, tokens=gen.completion_tokens)
            c.reject("generator_error", gen.error or "")
            candidates.append(c)
            continue
        parsed = task.parse_generation(gen.text, truncated=gen.finish_reason == "length")
        if not isinstance(parsed, list):
            c = Candidate(_hid(rnd, g_idx, "unparseable"), gen.text[:2000], ex_ids, tokens=gen.completion_tokens)
            c.reject(parsed.reason, parsed.detail)
            candidates.append(c)
            continue
        for i_idx, item in enumerate(parsed[: cfg.problems_per_call]):
            text = task.candidate_text(item)
            candidates.append(Candidate(_hid(rnd, g_idx, i_idx, text), text, ex_ids, item=item,
                                        tokens=gen.completion_tokens))
    report.seconds["generate"] = round(time.perf_counter() - t1, 2)

    # solve n times, vote
    t2 = time.perf_counter()
    live = [c for c in candidates if c.status == "pending"]
    if live:
        sols = generator.generate(
            task.solution_prompts([c.item for c in live]),
            n=cfg.n_solutions,
            temperature=cfg.solution_temperature,
            top_p=cfg.top_p,
            max_tokens=settings.synth.generator.max_new_tokens,
            seed=cfg.seed * 1000 + rnd + 7,
        )
        for c, outs in zip(live, sols, strict=True):
            c.tokens += sum(o.completion_tokens for o in outs)
            report.tokens += sum(o.completion_tokens for o in outs)
            if not any(o.ok for o in outs):
                c.reject("generator_error", next((o.error for o in outs if o.error), ""))
                continue
            texts = [o.text if o.ok else "" for o in outs]
            verdict = task.verify(c.item, texts)
            c.answers = [a.raw or "" for a in verdict.vote.answers]
            if not verdict.accepted:
                c.reject(verdict.rejected.reason, verdict.rejected.detail)
                continue
            c.samples = task.samples(c.item, verdict, texts)
            c.completion = c.samples[0]["completion"] if c.samples else ""
    report.seconds["solve"] = round(time.perf_counter() - t2, 2)

    # dedup against the pool, decontaminate, then score + sparse-cluster filter in the chosen feature space
    t3 = time.perf_counter()
    index = PoolIndex([p["prompt"] + "\n" + p["completion"] for p in pool], settings)
    prompt_index = PoolIndex([p["prompt"] for p in pool], settings)
    scorer = get_scorer(settings.scoring)
    seen: set[str] = set()
    survivors: list[Candidate] = []
    for c in [c for c in candidates if c.status == "pending"]:
        if prompt_index.duplicate_of(c.prompt) or any(
            index.duplicate_of(s["prompt"] + "\n" + s["completion"]) for s in c.samples
        ):
            c.reject("duplicate", "same or near-same text as a pool sample")
            continue
        if c.prompt in seen:
            c.reject("duplicate", "same text as another candidate of this round")
            continue
        seen.add(c.prompt)
        hit, hits = decontam.contaminated(c.prompt) if decontam is not None else (False, [])
        if hit:
            from prismatic.synth.decontam import hits_detail

            c.reject("contaminated", hits_detail(hits))
            report.contamination_hits += len(hits)
            continue
        survivors.append(c)
    if space == "embedding":
        _filter_by_embedding(survivors, centroids, sparse_ids, scorer, settings)
    else:
        _filter_by_gradient(survivors, centroids, sparse_ids, scorer)
    for c in survivors:
        if c.status != "accepted":
            continue
        # agreeing solutions with the same text are one sample (one row in `samples`, counted once)
        unique: dict[str, dict] = {}
        for s in c.samples:
            sid = make_sample_id(cfg.task, s["prompt"], s["completion"], SAMPLE_ID_NORMALIZATION)
            unique.setdefault(sid, {**s, "sample_id": sid})
        c.samples = list(unique.values())
    report.seconds["filter"] = round(time.perf_counter() - t3, 2)

    # write: gradients of accepted samples, samples, candidates
    now = _now()
    accepted = [s for c in candidates if c.status == "accepted" for s in c.samples]
    if accepted:
        vector_rows = [
            {
                "sample_id": s["sample_id"],
                "spec_id": spec.spec_id,
                "vector": np.asarray(s["vector"]).tolist(),
                "loss": s["loss"],
                "n_tokens": s["n_tokens"],
                "truncated": s["truncated"],
                "created_at": now,
            }
            for s in accepted
        ]
        if space == "embedding":  # the vectors the next round clusters: no need to embed them again
            vector_rows += [
                {
                    "sample_id": s["sample_id"],
                    "spec_id": crep.spec_id,
                    "vector": np.asarray(s["embedding"]).tolist(),
                    "loss": None,
                    "n_tokens": s["embedding_tokens"],
                    "truncated": s["embedding_truncated"],
                    "created_at": now,
                }
                for s in accepted
            ]
        store.merge("gradients", pa.Table.from_pylist(vector_rows))
        store.merge(
            "samples",
            pa.Table.from_pylist(
                [
                    {
                        "sample_id": s["sample_id"],
                        "task": cfg.task,
                        "source": "synthetic",
                        "prompt": s["prompt"],
                        "completion": s["completion"],
                        "messages": None,
                        "label": s["completion"] if cfg.task == "nli" else None,
                        "origin": "synthetic",
                        "round": rnd,
                        "bucket": bucket_of(s["sample_id"], settings.ingest.buckets),
                        "file": "",
                        "line": 0,
                        "batch_id": f"round-{rnd}",
                        "created_at": now,
                    }
                    for s in accepted
                ]
            ),
        )
    store.merge(
        "synth_candidates",
        pa.Table.from_pylist(
            [
                {
                    "round": rnd,
                    "candidate_id": c.candidate_id,
                    "task": cfg.task,
                    "prompt": c.prompt,
                    "completion": c.completion,
                    "generator": generator.backend + ":" + generator.model,
                    "exemplar_ids": c.exemplar_ids,
                    "answers": c.answers,
                    "status": c.status,
                    "reason": c.reason,
                    "detail": c.detail,
                    "cluster_id": c.cluster_id,
                    "tokens": c.tokens,
                    "created_at": now,
                }
                for c in candidates
            ]
        ),
    )
    report.generated = len(candidates)
    report.accepted_candidates = sum(c.status == "accepted" for c in candidates)
    report.accepted_samples = len(accepted)
    report.reasons.update(c.reason for c in candidates)
    report.gvendi_after, report.pool_after = _gvendi(store, spec.spec_id, rnd)
    report.seconds["total"] = round(time.perf_counter() - t0, 2)
    return candidates, clusters


def _filter_by_gradient(survivors: list[Candidate], centroids: np.ndarray, sparse_ids: set[int], scorer) -> None:
    """Score each candidate's samples (projected gradients), keep those whose nearest centroid is sparse."""
    from prismatic.cluster import assign

    for c in survivors:
        scored = scorer.score([(s["prompt"], s["completion"]) for s in c.samples])
        good = [(s, r) for s, r in zip(c.samples, scored, strict=True) if r.error is None]
        if not good:
            c.reject("score_failed", "; ".join(r.error or "" for r in scored))
            continue
        labels, _ = assign(np.stack([r.vector for _, r in good]), centroids)
        kept = [(s, r, int(lab)) for (s, r), lab in zip(good, labels, strict=True) if int(lab) in sparse_ids]
        c.cluster_id = int(labels[0])
        if not kept:
            c.reject("dense_cluster", f"nearest cluster {int(labels[0])} is not sparse")
            continue
        c.status, c.reason = "accepted", "accepted"
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
        [s["prompt"] for _, s in flat], [s["completion"] for _, s in flat], dcfg.embedding_model,
        dcfg.embedding_device, dcfg.embedding_batch_size, dcfg.embedding_max_tokens,
    )
    labels, _ = assign(vecs, centroids)
    per_candidate: dict[str, list[tuple[dict, int]]] = {}
    for (c, s), v, nt, tr, lab in zip(flat, vecs, n_tok, trunc, labels, strict=True):
        s.update(embedding=v, embedding_tokens=int(nt), embedding_truncated=bool(tr))
        per_candidate.setdefault(c.candidate_id, []).append((s, int(lab)))
    for c in survivors:
        mine = per_candidate.get(c.candidate_id, [])
        if not mine:  # a candidate without samples cannot pass the filter
            c.reject("score_failed", "no samples to embed")
            continue
        c.cluster_id = mine[0][1]
        kept = [(s, lab) for s, lab in mine if lab in sparse_ids]
        if not kept:
            c.reject("dense_cluster", f"nearest cluster {c.cluster_id} (embedding space) is not sparse")
            continue
        scored = scorer.score([(s["prompt"], s["completion"]) for s, _ in kept])
        good = [(s, r, lab) for (s, lab), r in zip(kept, scored, strict=True) if r.error is None]
        if not good:
            c.reject("score_failed", "; ".join(r.error or "" for r in scored))
            continue
        c.status, c.reason = "accepted", "accepted"
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


def _round_state(store: TableStore) -> dict[int, dict]:
    if not store.exists("rounds"):
        return {}
    return {r["round"]: r for r in store.read_arrow("rounds").to_pylist()}


def _rounds_row(rnd: int, status: str, run_id: str | None, store: TableStore, report: RoundReport | None) -> dict:
    counts = (
        {}
        if report is None
        else {
            "generated": report.generated,
            "accepted_candidates": report.accepted_candidates,
            "accepted_samples": report.accepted_samples,
            "tokens": report.tokens,
            **dict(report.reasons),
        }
    )
    return {
        "round": rnd,
        "status": status,
        "mlflow_run_id": run_id,
        "versions_read": None,
        "versions_written": json.dumps(store.versions()) if report is not None else None,
        "counts": json.dumps(counts),
        "gvendi_before": None if report is None else report.gvendi_before,
        "gvendi_after": None if report is None else report.gvendi_after,
        "created_at": _now(),
    }


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

    Args:
        generator: a ``prismatic.synth.generators.Generator``; default from ``synth.generator`` with the request
            cache under ``<data_root>/synth_cache``.
    """
    from prismatic import tracking
    from prismatic.synth.cache import SQLiteRequestCache
    from prismatic.synth.decontam import DecontamIndex
    from prismatic.synth.generators import make_generator
    from prismatic.synth.secrets import install_redaction
    from prismatic.synth.tasks import get_task

    install_redaction()
    cfg = settings.synth
    rounds = rounds or cfg.rounds
    target_pool_size = target_pool_size or cfg.target_pool_size
    token_budget = token_budget or cfg.token_budget
    if generator is None:
        generator = make_generator(cfg.generator, SQLiteRequestCache(settings.root / "synth_cache"))
    kwargs = (
        {"labels": settings.ingest.nli_labels, "sample_template": settings.ingest.nli_prompt_template}
        if cfg.task == "nli"
        else {}
    )
    task = get_task(cfg, **kwargs)
    eval_texts = load_eval_texts(cfg.eval_sets)
    decontam = (
        DecontamIndex.build(eval_texts, n=cfg.decontam_ngram, min_words=cfg.decontam_min_words) if eval_texts else None
    )
    state = _round_state(store)
    done = sorted(r for r, s in state.items() if s["status"] == "done")
    reports: list[RoundReport] = []
    tokens_spent = sum(json.loads(state[r]["counts"] or "{}").get("tokens", 0) for r in done)
    params = {
        **tracking.safe_params(settings),
        "generator": f"{generator.backend}:{generator.model}",
        "tau": cfg.tau,
        "n_solutions": cfg.n_solutions,
    }
    first = (max(done) + 1) if done else 1
    with tracking.run(settings, "synthesize", params=params, tags={"rounds": rounds}) as parent:
        for rnd in range(first, rounds + 1):
            pool_size = store.pool().count()
            if target_pool_size and pool_size >= target_pool_size:
                log.info("pool has %d >= target %d samples: stopping", pool_size, target_pool_size)
                break
            if token_budget and tokens_spent >= token_budget:
                log.info("token budget %d spent: stopping", token_budget)
                break
            prev = state.get(rnd)
            run_id = prev["mlflow_run_id"] if prev else None
            report = RoundReport(rnd, resumed=prev is not None)
            with _round_run(settings, rnd, run_id, parent) as child:
                child_id = child.info.run_id if child is not None else None
                store.merge("rounds", pa.Table.from_pylist([_rounds_row(rnd, "started", child_id, store, None)]))
                candidates, clusters = run_round(store, settings, rnd, generator, task, decontam, report)
                if child is not None:
                    _log_round(report, candidates, clusters, store, settings)
            store.merge(
                "rounds", pa.Table.from_pylist([_rounds_row(rnd, "done", child_id, store, report)]), update=True
            )
            tokens_spent += report.tokens
            reports.append(report)
            if console is not None:
                console.print(report.summary())
    return reports


def _round_run(settings: Settings, rnd: int, run_id: str | None, parent):
    import contextlib

    if parent is None:
        return contextlib.nullcontext(None)
    import mlflow

    if run_id:
        return mlflow.start_run(run_id=run_id, nested=True)
    return mlflow.start_run(run_name=f"round-{rnd}", nested=True, tags={"round": str(rnd)})


def _log_round(
    report: RoundReport, candidates: list[Candidate], clusters: list, store: TableStore, settings: Settings
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    from prismatic import tracking

    cfg = settings.synth
    mlflow.log_params(
        {
            "round": report.round,
            "k": len(clusters),
            "tau": cfg.tau,
            "n_solutions": cfg.n_solutions,
            "spec_id": report.spec_id,
            "feature_space": report.feature_space,
            "cluster_spec_id": report.cluster_spec_id,
        }
    )
    metrics = {
        "gvendi_before": report.gvendi_before,
        "gvendi_after": report.gvendi_after,
        "pool_before": report.pool_before,
        "pool_after": report.pool_after,
        "candidates": report.generated,
        "accepted": report.accepted_candidates,
        "accepted_samples": report.accepted_samples,
        "acceptance_rate": report.acceptance_rate,
        "rejected": report.generated - report.accepted_candidates,
        "tokens_generated": report.tokens,
        "contamination_hits": report.contamination_hits,
    }
    metrics.update({f"reason.{k}": v for k, v in report.reasons.items()})
    metrics.update({f"seconds.{k}": v for k, v in report.seconds.items()})
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})
    tracking.log_table_versions(store.versions(), "versions_written")
    sizes = sorted((c["size"] for c in clusters), reverse=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(range(len(sizes)), sizes, color=["#d62728" if s < np.median(sizes) else "#1f77b4" for s in sizes])
    ax.set(title=f"round {report.round}: {report.feature_space} cluster sizes (red = sparse)",
           xlabel="cluster (by size)", ylabel="samples")
    mlflow.log_figure(fig, "cluster_sizes.png")
    plt.close(fig)
    hist = [r for r in store.read_arrow("rounds").to_pylist() if r["gvendi_after"] is not None]
    xs = [0] + [r["round"] for r in sorted(hist, key=lambda r: r["round"])] + [report.round]
    ys = [report.gvendi_before if not hist else sorted(hist, key=lambda r: r["round"])[0]["gvendi_before"]]
    ys += [r["gvendi_after"] for r in sorted(hist, key=lambda r: r["round"])] + [report.gvendi_after]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.set(title="pool G-Vendi by round", xlabel="round (0 = seed pool)", ylabel="G-Vendi")
    mlflow.log_figure(fig, "gvendi_by_round.png")
    plt.close(fig)
    sample = {
        "accepted": [c.prompt for c in candidates if c.status == "accepted"][:20],
        "rejected": [
            {"reason": c.reason, "prompt": c.prompt[:300], "detail": c.detail}
            for c in candidates
            if c.status != "accepted"
        ][:40],
    }
    mlflow.log_dict(sample, "candidates_sample.json")
