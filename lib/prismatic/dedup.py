"""Exact and near-duplicate detection over a Spark DataFrame of samples.

``find_duplicates(samples_df, cfg)`` takes rows with at least ``sample_id, task, prompt, completion`` and returns
one row per sample to remove: ``(sample_id, kept_id, kind, similarity)``. The text of a sample is
``prompt + "\\n" + completion``; duplicates are only looked for within a task. A null prompt, completion or task
counts as the empty string; a null ``sample_id`` is an error.

**Sketch pass.** One ``mapInArrow`` over the input normalizes each text once (``prismatic.normalize``) and emits,
per row, ``(sample_id, task, id, h)`` with ``h`` = the first 16 bytes of its
:func:`~prismatic.normalize.text_hash` digest and ``id = xxhash64(sample_id)`` (a compact 8-byte stand-in used for
grouping only), and, for the near pass, the row's LSH band keys (``prismatic.minhash``: word n-gram shingles,
a ``bands * rows_per_band`` MinHash signature, band keys salted with a hash of the task). Band keys do not become
Spark rows: each Arrow batch packs them, split into ``groups`` by key, into a few binary blobs (keys then ids), so
the shuffle moves bytes, not 20 rows per sample. The pass output is persisted; both stages below read it.

**Exact** (``kind = "exact"``, ``similarity = 1.0``): rows with equal ``(task, h)`` form a group; a hash aggregate
finds the keys held by 2+ rows and only those rows are joined back. The group's smallest ``sample_id`` is its
representative.

**Near** (``kind = "near"``, ``method = "banded"``, the default):

1. The blobs are hash-partitioned by group, so all rows sharing a band key (a bucket) meet in one partition;
   there numpy sorts the keys and every bucket gives candidate pairs: all pairs if it has at most
   ``max_bucket_pairs`` of them, else each member is linked to the bucket's smallest id (a star: a hot bucket
   costs linear, not quadratic, work). Exact duplicates carry their representative's band keys; their ids are
   mapped to the representative's afterwards, self-pairs dropped, pairs de-duplicated across bands.
2. Each candidate pair is joined to its two texts and **verified with the exact Jaccard of the two shingle sets**
   (vectorized per batch); pairs in different tasks or below ``threshold`` are dropped. Precision is therefore
   exact, and the recorded similarity is the true Jaccard; recall is the LSH S-curve, 0.99964 at Jaccard 0.8
   with the default 20 x 5 bands.
3. Connected components of the verified pairs: on the driver in numpy (min-label propagation with pointer
   jumping, :func:`connected_components`) when there are at most ``driver_max_edges`` pairs (default 5M pairs,
   well under 1 GB of driver memory), else in Spark (:func:`_components_spark`, the same algorithm as joins with
   the lineage cut every round).

``method = "mllib"`` replaces steps 1-2 by Spark MLlib: ``HashingTF`` (binary, 2**30 features) of the same
shingle strings, ``MinHashLSH`` with the fewest hash tables that reach a 0.999 candidate probability at the
threshold (5 at 0.8), and ``approxSimilarityJoin``, which keeps pairs by the Jaccard distance of the hashed sets.
It is the reference implementation: OR-only amplification (one hash per table) makes many more candidates, and
its self-join does not know about tasks.

**Groups and what is recorded.** A group is a connected component of the union of the exact and the verified
near relations; it keeps its smallest ``sample_id``, and every other member is reported with ``kept_id`` = that
smallest id, so a ``kept_id`` is never itself removed. A member whose normalized text equals the kept row's is
``exact`` with similarity 1.0; any other member is ``near`` and its similarity is the **largest verified Jaccard
between its representative and any neighbour in the verified-pair graph** (so at least ``threshold``; an exact copy
of a near representative inherits the representative's value). The result is a function of the input rows only:
it does not depend on partitioning, batch sizes or run order.

**Partitioning and scale-out.** Every step is per-partition numpy or a Spark shuffle keyed by a hash: the sketch
pass scales with the input partitions (an input with fewer splits than cores is repartitioned once and
persisted); the band blobs go to ``max(spark.sql.shuffle.partitions, rows * bands / 4M)`` partitions, so one
pair-building task sorts at most ~4M keys (~64 MB); exact groups and candidate pairs are hash aggregates; only
the (small) verified-pair graph may come to the driver, behind ``driver_max_edges``.

The function is eager: it runs its Spark jobs and returns a locally checkpointed DataFrame. The input is read
twice (the sketch pass, then the texts of candidate pairs) plus a row count, so pass a table scan or a persisted
DataFrame. ``run_dedup`` returns the same DataFrame plus counts and timings (:class:`DedupStats`).

Known limits: ``id`` collisions (two sample ids with the same 64-bit xxhash64, about 3e-8 for 1M rows) can hide
the pair between those two rows, nothing else, because pairs are resolved back to sample ids through the texts;
a star bucket links members only through its hub, so in a bucket larger than ``max_bucket_pairs`` two members
that are similar to each other but not to the hub connect only through another band.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pandas.util import hash_array

from prismatic.config import DedupConfig
from prismatic.minhash import band_keys, jaccard_rows, shingle_batch, shingle_hashes, signatures
from prismatic.normalize import TEXT_SEP, normalize_many

log = logging.getLogger(__name__)

__all__ = [
    "DUPLICATES_SCHEMA",
    "DedupStats",
    "bucket_pairs",
    "connected_components",
    "find_duplicates",
    "mllib_hash_tables",
    "run_dedup",
]

DUPLICATES_SCHEMA = "sample_id string, kept_id string, kind string, similarity double"
REQUIRED_COLUMNS = ("sample_id", "task", "prompt", "completion")
_BAND_ROWS_PER_PARTITION = 4_000_000  # (band key, id) rows one pair-building task sorts in memory (~64 MB)
_GROUPS_PER_PARTITION = 4  # band-key groups per pair partition: evens out Spark's hash placement of the groups
_MLLIB_FEATURES = 1 << 30
_SKETCH_COLUMNS = ["sample_id", "task", "id", "h", "p", "blob"]
_SKETCH_SCHEMA = "sample_id string, task string, id long, h binary, p int, blob binary"


@dataclass
class DedupStats:
    """Counts and timings of one ``run_dedup`` call (for logs and MLflow)."""

    rows: int = 0
    exact: int = 0
    near: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    components_on: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------------
# Pure numpy pieces (unit-testable without Spark)
# ------------------------------------------------------------------------------------------------------------------


def bucket_pairs(keys: np.ndarray, ids: np.ndarray, max_bucket_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs from LSH buckets: rows with equal ``keys`` share a bucket.

    A bucket of ``n`` distinct ids gives all ``n (n - 1) / 2`` pairs when that is at most ``max_bucket_pairs``,
    else the ``n - 1`` pairs (smallest id, other id).

    Args:
        keys: int64 band keys.
        ids: int64 row ids, same length.
        max_bucket_pairs: largest bucket (in pairs) that is expanded to all pairs.

    Returns:
        ``(a, b)`` int64 arrays with ``a < b``; a pair may repeat (different bands are not merged here).
    """
    keys = np.asarray(keys, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(keys) < 2:
        return empty
    # almost every key is unique: find the shared ones with one sort of the keys, then order only those by id
    order = np.argsort(keys)
    k = keys[order]
    same = k[1:] == k[:-1]
    shared = np.zeros(len(k), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    sel = order[shared]
    if len(sel) == 0:
        return empty
    order = np.lexsort((ids[sel], keys[sel]))
    k, x = keys[sel][order], ids[sel][order]
    dup = np.zeros(len(k), dtype=bool)
    dup[1:] = (k[1:] == k[:-1]) & (x[1:] == x[:-1])  # the same id twice in one bucket
    if dup.any():
        k, x = k[~dup], x[~dup]
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    size = np.diff(np.r_[start, len(k)])
    multi = size >= 2
    start, size = start[multi], size[multi]
    if len(start) == 0:
        return empty
    out_a, out_b = [], []
    star = size * (size - 1) // 2 > max_bucket_pairs
    for s in np.unique(size[~star]):
        st = start[(size == s) & ~star]
        members = x[st[:, None] + np.arange(s)]  # (buckets, s), ascending ids per row
        iu, ju = np.triu_indices(int(s), 1)
        out_a.append(members[:, iu].ravel())
        out_b.append(members[:, ju].ravel())
    if star.any():
        st, sz = start[star], size[star]
        hub_rows = np.repeat(st, sz - 1)
        others = hub_rows + (np.arange(int((sz - 1).sum())) - np.repeat(np.cumsum(sz - 1) - (sz - 1), sz - 1)) + 1
        out_a.append(x[hub_rows])
        out_b.append(x[others])
    return np.concatenate(out_a), np.concatenate(out_b)


def connected_components(a: np.ndarray, b: np.ndarray, similarity: np.ndarray) -> pd.DataFrame:
    """Components of an undirected graph given as edges between string ids, on the driver.

    Min-label propagation with pointer jumping over numpy arrays: every node starts with its own rank in sorted
    id order; each round takes the minimum label over each edge and then ``label = label[label]``, until nothing
    changes. The fixed point labels every node with the smallest id of its component.

    Args:
        a: edge endpoints (str).
        b: other endpoints (str), same length.
        similarity: weight of each edge (float).

    Returns:
        One row per non-root node: ``sample_id``, ``kept_id`` (smallest id of its component) and ``similarity``
        (largest weight among its edges).
    """
    a = np.asarray(a, dtype=object)
    b = np.asarray(b, dtype=object)
    similarity = np.asarray(similarity, dtype=np.float64)
    if not len(a) == len(b) == len(similarity):
        raise ValueError(f"edge arrays differ in length: {len(a)}, {len(b)}, {len(similarity)}")
    if len(a) == 0:
        return pd.DataFrame({"sample_id": [], "kept_id": [], "similarity": []}).astype(
            {"sample_id": object, "kept_id": object, "similarity": np.float64}
        )
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)  # sorted: rank order == id order
    u, v = inv[: len(a)], inv[len(a) :]
    label = np.arange(len(nodes))
    while True:
        m = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        new = new[new]
        if np.array_equal(new, label):
            break
        label = new
    best = np.full(len(nodes), -np.inf)
    np.maximum.at(best, u, similarity)
    np.maximum.at(best, v, similarity)
    moved = label != np.arange(len(nodes))
    return pd.DataFrame({"sample_id": nodes[moved], "kept_id": nodes[label[moved]], "similarity": best[moved]})


def mllib_hash_tables(threshold: float, recall: float = 0.999) -> int:
    """Fewest MLlib MinHashLSH tables (OR of single hashes) with ``1 - (1 - t)**T >= recall`` at ``t = threshold``."""
    if threshold >= 1.0:
        return 1
    return max(1, math.ceil(math.log1p(-recall) / math.log1p(-threshold)))


# ------------------------------------------------------------------------------------------------------------------
# Batch functions run by mapInArrow on the workers
# ------------------------------------------------------------------------------------------------------------------


def _texts(batch: pa.RecordBatch, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(batch.column("prompt" + suffix), batch.column("completion" + suffix), TEXT_SEP)


def _sketch_batches(
    batches: Iterator[pa.RecordBatch], cfg: DedupConfig, near: bool, groups: int
) -> Iterator[pa.RecordBatch]:
    """One pass over the rows: an exact record per row and, if ``near``, the LSH band keys packed in blobs.

    Output rows have the schema of :data:`_SKETCH_SCHEMA`. Per input row: ``(sample_id, task, id, h)`` where ``h``
    is the first 16 bytes of the :func:`~prismatic.normalize.text_hash` digest. Per input batch and band-key group
    ``p = key mod groups``: one ``(p, blob)`` row whose blob holds the group's int64 band keys followed by the
    int64 ids of their rows. The text is normalized once for both.
    """
    b, r = cfg.bands, cfg.rows_per_band
    ncfg = cfg.normalize
    shingle_cfg = ncfg if ncfg.collapse_whitespace else ncfg.model_copy(update={"collapse_whitespace": True})
    for batch in batches:
        sid = batch.column("sample_id")
        if sid.null_count:
            raise ValueError(f"find_duplicates: {sid.null_count} rows have a null sample_id")
        n = batch.num_rows
        norm = normalize_many(_texts(batch), ncfg)
        digests = pa.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in norm], type=pa.binary())
        task, ids = batch.column("task"), batch.column("id")
        p_col: pa.Array = pa.nulls(n, pa.int32())
        blob_col: pa.Array = pa.nulls(n, pa.binary())
        if near:
            if shingle_cfg is not ncfg:
                norm = normalize_many(norm, shingle_cfg)
            sh = shingle_hashes(norm, cfg.ngram, cfg.shingle)
            has = np.flatnonzero(sh.counts() > 0)  # an empty text has no shingles: never a near duplicate
            if len(has):
                sh = sh.take(has) if len(has) < n else sh
                keys = band_keys(signatures(sh, b * r, cfg.seed), b, r, _task_salt(task)[has]).ravel()
                rows = np.repeat(ids.to_numpy()[has], b)
                group = (keys.view(np.uint64) % np.uint64(groups)).astype(np.int32)
                order = np.argsort(group, kind="stable")
                keys, rows, group = keys[order], rows[order], group[order]
                bounds = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
                blobs = [
                    keys[lo:hi].tobytes() + rows[lo:hi].tobytes()
                    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                ]
                k = len(blobs)
                p_col = pa.concat_arrays([p_col, pa.array(group[bounds[:-1]], type=pa.int32())])
                blob_col = pa.concat_arrays([blob_col, pa.array(blobs, type=pa.binary())])
                sid = pa.concat_arrays([sid, pa.nulls(k, sid.type)])
                task = pa.concat_arrays([task, pa.nulls(k, task.type)])
                ids = pa.concat_arrays([ids, pa.nulls(k, ids.type)])
                digests = pa.concat_arrays([digests, pa.nulls(k, pa.binary())])
        yield pa.RecordBatch.from_arrays([sid, task, ids, digests, p_col, blob_col], names=_SKETCH_COLUMNS)


def _task_salt(tasks: pa.Array) -> np.ndarray:
    return hash_array(np.asarray(tasks.to_pylist(), dtype=object), categorize=True).astype(np.uint64)


def _pair_batches(batches: Iterator[pa.RecordBatch], max_bucket_pairs: int) -> Iterator[pa.RecordBatch]:
    """All band-key blobs of one partition -> candidate id pairs of their buckets (a bucket never spans two
    partitions: all keys of a group ``p`` land in one partition)."""
    keys, ids = [], []
    for batch in batches:
        for blob in batch.column("blob").to_pylist():
            arr = np.frombuffer(blob, dtype=np.int64)
            half = len(arr) // 2
            keys.append(arr[:half])
            ids.append(arr[half:])
    if not keys:
        return
    a, b = bucket_pairs(np.concatenate(keys), np.concatenate(ids), max_bucket_pairs)
    if len(a):
        pairs = np.unique(np.stack([a, b], axis=1), axis=0)
        yield pa.RecordBatch.from_arrays([pa.array(pairs[:, 0]), pa.array(pairs[:, 1])], names=["a", "b"])


def _verify_batches(batches: Iterator[pa.RecordBatch], cfg: DedupConfig) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        sim = jaccard_rows(shingle_batch(_texts(batch, "_a"), cfg), shingle_batch(_texts(batch, "_b"), cfg))
        same_task = pc.equal(batch.column("task_a"), batch.column("task_b")).to_numpy(zero_copy_only=False)
        keep = np.flatnonzero(same_task & (sim >= cfg.threshold))
        if len(keep) == 0:
            continue
        sa = batch.column("sample_id_a").take(keep)
        sb = batch.column("sample_id_b").take(keep)
        swap = pc.greater(sa, sb)
        yield pa.RecordBatch.from_arrays(
            [pc.if_else(swap, sb, sa), pc.if_else(swap, sa, sb), pa.array(sim[keep])],
            names=["a", "b", "similarity"],
        )


def _shingle_string_batches(batches: Iterator[pa.RecordBatch], cfg: DedupConfig) -> Iterator[pa.RecordBatch]:
    """Shingles as strings (tokens joined by one space / concatenated chars), for the MLlib reference path."""
    joiner = " " if cfg.shingle == "word" else ""
    n = cfg.ngram
    ncfg = cfg.normalize.model_copy(update={"collapse_whitespace": True})
    for batch in batches:
        out = []
        for text in normalize_many(_texts(batch), ncfg):
            toks = text.split(" ") if cfg.shingle == "word" else list(text)
            toks = [t for t in toks if t]
            if not toks:
                out.append([])
            elif len(toks) < n:
                out.append([joiner.join(toks)])
            else:
                out.append(sorted({joiner.join(toks[i : i + n]) for i in range(len(toks) - n + 1)}))
        yield pa.RecordBatch.from_arrays(
            [batch.column("sample_id"), batch.column("task"), pa.array(out, type=pa.list_(pa.string()))],
            names=["sample_id", "task", "shingles"],
        )


# ------------------------------------------------------------------------------------------------------------------
# Spark stages
# ------------------------------------------------------------------------------------------------------------------


def _prepare(samples_df):
    from pyspark.sql import functions as F

    missing = [c for c in REQUIRED_COLUMNS if c not in samples_df.columns]
    if missing:
        raise ValueError(
            f"find_duplicates needs columns {', '.join(REQUIRED_COLUMNS)}; missing: {', '.join(missing)} "
            f"(got {', '.join(samples_df.columns)})"
        )
    base = samples_df.select(
        F.col("sample_id").cast("string").alias("sample_id"),
        F.coalesce(F.col("task").cast("string"), F.lit("")).alias("task"),
        F.coalesce(F.col("prompt").cast("string"), F.lit("")).alias("prompt"),
        F.coalesce(F.col("completion").cast("string"), F.lit("")).alias("completion"),
    )
    persisted = False
    try:  # classic Spark only (Spark Connect has no RDDs): spread an input with too few splits over the cores
        cores = samples_df.sparkSession.sparkContext.defaultParallelism
        few = base.rdd.getNumPartitions() < cores
    except Exception:  # noqa: BLE001 - Spark Connect / no SparkContext: keep the input partitioning
        cores, few = 0, False
    if few:
        base = base.repartition(2 * cores).persist()
        persisted = True
    return base, persisted


def _sketch_stage(base, cfg: DedupConfig, groups: int):
    """The sketch pass (:func:`_sketch_batches`) over ``base``; persisted, as exact and near stages both read it."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    near = cfg.near and cfg.method == "banded"
    return (
        base.withColumn("id", F.xxhash64("sample_id"))
        .mapInArrow(lambda it: _sketch_batches(it, cfg, near, groups), _SKETCH_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


def _exact_stage(sketch):
    """(sample_id, rep, id, rep_id) for every row whose normalized text equals that of a smaller sample_id in its
    task (``id`` = xxhash64 of the sample_id).

    A hash aggregate finds the keys held by 2+ rows (no sort of all rows); only those rows are joined back (a
    broadcast join when they are few, AQE decides) and get their group minimum from a window.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rows = sketch.filter(F.col("p").isNull()).select("sample_id", "task", "id", "h")
    dup_keys = rows.groupBy("task", "h").count().filter(F.col("count") > 1).drop("count")
    members = rows.join(dup_keys, ["task", "h"])
    rep = F.min("sample_id").over(Window.partitionBy("task", "h"))
    return (
        members.withColumn("rep", rep)
        .filter(F.col("sample_id") != F.col("rep"))
        .select("sample_id", "rep", "id", F.xxhash64("rep").alias("rep_id"))
    )


def _candidate_pairs_banded(sketch, exact, n_parts: int, cfg: DedupConfig):
    """Distinct candidate id pairs (a < b) between exact-group representatives, from the LSH buckets.

    Exact duplicates have the band keys of their representative, so they sit in its buckets; their ids are
    mapped to the representative's id afterwards (and self-pairs dropped), which keeps a star bucket whose hub
    is an exact duplicate connected.
    """
    from pyspark.sql import functions as F

    max_pairs = cfg.max_bucket_pairs
    raw = (
        sketch.filter(F.col("p").isNotNull())
        .select("p", "blob")
        .repartition(n_parts, "p")
        .mapInArrow(lambda it: _pair_batches(it, max_pairs), "a long, b long")
    )
    to_rep = exact.select(F.col("id").alias("from_id"), F.col("rep_id").alias("to_id"))
    for col in ("a", "b"):
        raw = (
            raw.join(to_rep, F.col(col) == F.col("from_id"), "left")
            .withColumn(col, F.coalesce("to_id", col))
            .drop("from_id", "to_id")
        )
    return (
        raw.filter(F.col("a") != F.col("b"))
        .select(F.least("a", "b").alias("a"), F.greatest("a", "b").alias("b"))
        .distinct()
    )


def _verify_stage(cand, reps, cfg: DedupConfig):
    """Join candidate id pairs to their texts and keep those with exact Jaccard >= threshold (same task)."""
    from pyspark.sql import functions as F

    need = cand.select(F.col("a").alias("id")).union(cand.select(F.col("b").alias("id"))).distinct()
    texts = reps.withColumn("id", F.xxhash64("sample_id")).join(need, "id").persist()

    def side(s: str):
        return texts.select(*[F.col(c).alias(f"{c}_{s}") for c in ("id", "sample_id", "task", "prompt", "completion")])

    joined = cand.join(side("a"), F.col("a") == F.col("id_a")).join(side("b"), F.col("b") == F.col("id_b"))
    cols = [f"{c}_{s}" for s in ("a", "b") for c in ("sample_id", "task", "prompt", "completion")]
    verified = joined.select(*cols).mapInArrow(
        lambda it: _verify_batches(it, cfg), "a string, b string, similarity double"
    )
    return verified, texts


def _mllib_pairs(reps, cfg: DedupConfig):
    """Verified pairs (a < b, same task, Jaccard >= threshold) from Spark MLlib MinHashLSH (reference path)."""
    from pyspark.ml.feature import HashingTF, MinHashLSH
    from pyspark.sql import functions as F

    sh = reps.select("sample_id", "task", "prompt", "completion").mapInArrow(
        lambda it: _shingle_string_batches(it, cfg), "sample_id string, task string, shingles array<string>"
    )
    sh = sh.filter(F.size("shingles") > 0)
    tf = HashingTF(inputCol="shingles", outputCol="features", numFeatures=_MLLIB_FEATURES, binary=True)
    feats = tf.transform(sh).select("sample_id", "task", "features").persist()
    lsh = MinHashLSH(
        inputCol="features", outputCol="hashes", numHashTables=mllib_hash_tables(cfg.threshold), seed=cfg.seed
    )
    model = lsh.fit(feats)
    # MLlib keeps distance < given threshold; widen by a hair and apply the exact >= test on the similarity
    joined = model.approxSimilarityJoin(feats, feats, 1.0 - cfg.threshold + 1e-9, distCol="dist")
    pairs = (
        joined.filter(
            (F.col("datasetA.sample_id") < F.col("datasetB.sample_id"))
            & (F.col("datasetA.task") == F.col("datasetB.task"))
        )
        .select(
            F.col("datasetA.sample_id").alias("a"),
            F.col("datasetB.sample_id").alias("b"),
            (F.lit(1.0) - F.col("dist")).alias("similarity"),
        )
        .filter(F.col("similarity") >= F.lit(cfg.threshold) - F.lit(1e-12))
    )
    return pairs, feats


def _components_spark(edges, max_rounds: int = 10_000):
    """Connected components in Spark: (sample_id, kept_id, similarity) for every non-minimal node.

    Same algorithm as :func:`connected_components` (min-label propagation + pointer jumping), one round per
    iteration with the lineage cut by a local checkpoint; stops when no label changes.
    """
    from pyspark.sql import functions as F

    both = edges.select(F.col("a").alias("src"), F.col("b").alias("dst"), "similarity").union(
        edges.select(F.col("b").alias("src"), F.col("a").alias("dst"), "similarity")
    )
    both = both.localCheckpoint()
    labels = both.groupBy("src").agg(F.least(F.col("src"), F.min("dst")).alias("label"))
    labels = labels.withColumnRenamed("src", "node").localCheckpoint()
    for rounds in range(1, max_rounds + 1):
        nb = (
            both.join(labels.select(F.col("node").alias("dst"), F.col("label").alias("nl")), "dst")
            .groupBy("src")
            .agg(F.min("nl").alias("m"))
        )
        step = labels.join(nb, labels.node == nb.src).select("node", F.least("label", "m").alias("label"))
        jumped = (
            step.alias("x")
            .join(step.alias("y"), F.col("x.label") == F.col("y.node"))
            .select(F.col("x.node").alias("node"), F.col("y.label").alias("label"))
            .localCheckpoint()
        )
        changed = (
            jumped.alias("n")
            .join(labels.alias("o"), "node")
            .filter(F.col("n.label") != F.col("o.label"))
            .limit(1)
            .count()
        )
        labels = jumped
        if changed == 0:
            log.info("spark connected components converged after %d rounds", rounds)
            break
    else:
        raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")
    best = both.groupBy("src").agg(F.max("similarity").alias("similarity"))
    return (
        labels.filter(F.col("node") != F.col("label"))
        .join(best, labels.node == best.src)
        .select(F.col("node").alias("sample_id"), F.col("label").alias("kept_id"), "similarity")
    )


class _Laps:
    """Wall seconds per step into ``seconds`` (rounded to ms): ``lap(name)`` records the time since the last lap."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds
        self.start = self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.tick, 3)
        self.tick = now

    def total(self) -> None:
        self.seconds["total"] = round(time.perf_counter() - self.start, 3)


def _sketch_step(base, cfg: DedupConfig, stats: DedupStats):
    """Count the rows, size the pair-building partitions, run and persist the sketch pass.

    Returns ``(sketch, partitions for the band blobs)``.
    """
    stats.rows = base.count()
    shuffle_parts = int(base.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    n_parts = max(shuffle_parts, math.ceil(stats.rows * cfg.bands / _BAND_ROWS_PER_PARTITION))
    sketch = _sketch_stage(base, cfg, groups=n_parts * _GROUPS_PER_PARTITION)
    sketch.count()
    return sketch, n_parts


def _exact_step(sketch, stats: DedupStats):
    """Exact duplicates (see :func:`_exact_stage`), checkpointed and counted."""
    exact = _exact_stage(sketch).localCheckpoint()
    stats.exact = exact.count()
    log.info("dedup: %d rows, %d exact duplicates", stats.rows, stats.exact)
    return exact


def _near_pairs_step(base, sketch, exact, n_parts: int, cfg: DedupConfig, stats: DedupStats, laps: _Laps):
    """Verified near pairs ``(a, b, similarity)`` among the exact-group representatives: LSH candidates, then
    the exact Jaccard (``method="banded"``), or MLlib's MinHashLSH join (``"mllib"``).

    Returns ``(verified pairs, checkpointed and counted; a persisted DataFrame to unpersist at the end)``.
    """
    reps = base.join(exact.select("sample_id"), "sample_id", "left_anti")
    if cfg.method == "banded":
        cand = _candidate_pairs_banded(sketch, exact, n_parts, cfg).localCheckpoint()
        stats.candidate_pairs = cand.count()
        laps.lap("candidates")
        verified, persisted = _verify_stage(cand, reps, cfg)
    elif cfg.method == "mllib":
        verified, persisted = _mllib_pairs(reps, cfg)
    else:  # pragma: no cover - the config type rules this out
        raise ValueError(f"unknown dedup method {cfg.method!r} (allowed: banded, mllib)")
    verified = verified.localCheckpoint()
    stats.verified_pairs = verified.count()
    laps.lap("verify")
    return verified, persisted


def _components_step(verified, cfg: DedupConfig, stats: DedupStats):
    """Connected components of the verified pairs: ``(sample_id, kept_id, similarity)`` per non-minimal node, on
    the driver when there are at most ``driver_max_edges`` pairs, else in Spark."""
    if stats.verified_pairs <= cfg.driver_max_edges:
        stats.components_on = "driver"
        edges = verified.toArrow()
        comp = connected_components(
            edges.column("a").to_numpy(zero_copy_only=False),
            edges.column("b").to_numpy(zero_copy_only=False),
            edges.column("similarity").to_numpy(),
        )
        near_map = verified.sparkSession.createDataFrame(comp, "sample_id string, kept_id string, similarity double")
    else:
        stats.components_on = "spark"
        near_map = _components_spark(verified)
    return near_map.localCheckpoint()


def _union_step(exact, near_map, stats: DedupStats):
    """The union of the exact and near relations as :data:`DUPLICATES_SCHEMA` rows (see the module docstring);
    an exact copy of a near-duplicate representative points at the near group's root. Counts the kinds."""
    from pyspark.sql import functions as F

    if near_map is None:
        result = exact.select(
            "sample_id", F.col("rep").alias("kept_id"), F.lit("exact").alias("kind"), F.lit(1.0).alias("similarity")
        )
    else:
        nm = near_map.select(F.col("sample_id").alias("nm_id"), F.col("kept_id").alias("root"), F.col("similarity"))
        exact_rows = exact.join(nm, exact.rep == nm.nm_id, "left").select(
            "sample_id",
            F.coalesce("root", "rep").alias("kept_id"),
            F.when(F.col("root").isNull(), F.lit("exact")).otherwise(F.lit("near")).alias("kind"),
            F.when(F.col("root").isNull(), F.lit(1.0)).otherwise(F.col("similarity")).alias("similarity"),
        )
        near_rows = near_map.select("sample_id", "kept_id", F.lit("near").alias("kind"), "similarity")
        result = exact_rows.unionByName(near_rows)
    result = result.select(
        F.col("sample_id").cast("string"),
        F.col("kept_id").cast("string"),
        F.col("kind").cast("string"),
        F.col("similarity").cast("double"),
    ).localCheckpoint()
    kinds = {r["kind"]: r["n"] for r in result.groupBy("kind").agg(F.count("*").alias("n")).collect()}
    stats.exact, stats.near = int(kinds.get("exact", 0)), int(kinds.get("near", 0))
    return result


def run_dedup(samples_df, cfg: DedupConfig):
    """Find exact and near duplicates; see the module docstring for the method and the output contract.

    Steps (their seconds in ``stats.seconds``): sketch, exact, candidates and verify (near pairs), components,
    assemble (the union of the exact and near relations).

    Args:
        samples_df: Spark DataFrame with at least ``sample_id, task, prompt, completion`` (strings).
        cfg: dedup settings.

    Returns:
        ``(duplicates, stats)``: a DataFrame with :data:`DUPLICATES_SCHEMA` (one row per removed sample, locally
        checkpointed) and a :class:`DedupStats`.

    Raises:
        ValueError: a required column is missing (at once) or a sample_id is null (when the job runs).
    """
    stats = DedupStats()
    laps = _Laps(stats.seconds)
    base, base_persisted = _prepare(samples_df)
    sketch, n_parts = _sketch_step(base, cfg, stats)
    laps.lap("sketch")
    exact = _exact_step(sketch, stats)
    laps.lap("exact")
    persisted = [sketch] + ([base] if base_persisted else [])
    near_map = None
    if cfg.near and stats.rows - stats.exact >= 2:
        verified, pairs_persisted = _near_pairs_step(base, sketch, exact, n_parts, cfg, stats, laps)
        persisted.append(pairs_persisted)
        near_map = _components_step(verified, cfg, stats)
        laps.lap("components")
    result = _union_step(exact, near_map, stats)
    laps.lap("assemble")
    for df in persisted:
        df.unpersist()
    laps.total()
    log.info(
        "dedup: %d rows -> %d exact + %d near duplicates (%d candidate, %d verified pairs; components: %s), %.1f s",
        stats.rows, stats.exact, stats.near, stats.candidate_pairs, stats.verified_pairs,
        stats.components_on or "-", stats.seconds["total"],
    )  # fmt: skip
    return result, stats


def find_duplicates(samples_df, cfg: DedupConfig):
    """Exact + near duplicates of ``samples_df`` as ``DataFrame(sample_id, kept_id, kind, similarity)``.

    See the module docstring for the method, the grouping rule (smallest ``sample_id`` kept) and what
    ``similarity`` holds. Eager: runs the Spark jobs and returns a locally checkpointed DataFrame.

    Args:
        samples_df: Spark DataFrame with at least ``sample_id, task, prompt, completion``.
        cfg: dedup settings (threshold, shingles, bands, method, ...).

    Returns:
        One row per sample to remove; samples not listed are kept.
    """
    return run_dedup(samples_df, cfg)[0]
