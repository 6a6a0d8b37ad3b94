"""Distributed diversity metrics: grouped G-Vendi from covariance sums, embedding Vendi, n-gram baselines.

G-Vendi needs only S = Σ g gᵀ (d × d), Σ g and n per group (see :mod:`prismatic.vendi`). One pass over the vectors:

1. ``mapInArrow``: each partition accumulates, per group, float64 ``Xᵀ X`` of its unit-normalized rows (float32 in,
   float64 sums) and emits one partial per (partition, group): n, Σ g and the upper triangle of S (4.2 MB at d = 1024).
   When the DataFrame is a plain scan of local parquet files (how :mod:`prismatic.tables` reads a delta-rs table),
   the rows need not travel from the JVM to Python at all: the file list is cut into row-range slices, dealt to
   ``spark.range(tasks)``, and each task reads its slices with pyarrow and does the same sums ("direct read"; the
   JVM → Python Arrow transfer of the vectors otherwise costs about as much as the sums).
2. Tree levels (only when there are more than ``fanout`` input partitions): partials are summed in groups of
   ``fanout`` partitions (``groupBy(group, partition // fanout).applyInArrow``), so no task holds more than ``fanout``
   partials and the driver never receives one partial per partition.
3. ``groupBy(group).applyInArrow``: the last sum per group, then ``eigvalsh`` of Σ = S / n on the executors; only the
   metrics (or, for :func:`group_sums`, the sums for storing) travel to the driver. Without grouping there is one
   group and at most ``fanout`` partials: the driver collects and sums them (no extra shuffle) and runs ``eigvalsh``.

The steps have names: :func:`group_sums` computes each group's sums (:class:`GroupSums`), :func:`add_sums` adds
stored sums of earlier rows, :func:`diversity_from_sums` turns sums into metrics; :func:`gradient_diversity` is the
one-pass path. A new round costs O(new · d²): keep the sums and add the new rows' sums to them. Vectors of two
projection specs are never pooled: a group whose rows carry more than one ``spec_id`` raises
:class:`~prismatic.errors.SpecMismatchError` (group by ``spec_id`` to score several specs side by side).

Text baselines (n-gram entropy, distinct-n) count n-grams per group with Spark; embedding Vendi embeds the texts with
:mod:`prismatic.embeddings` in ``mapInPandas`` and reuses the covariance path. Every function takes a DataFrame and
returns rows ``(scope, group, metric, value, n, spec_id)`` as a pandas DataFrame; writing tables is the caller's job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from prismatic.errors import SpecMismatchError
from prismatic.vendi import (
    CovarianceSums,
    mean_pairwise_cosine_from_sums,
    ngrams,
    normalize_q,
    tokenize,
    vendi_from_eigenvalues,
)

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["scope", "group", "metric", "value", "n", "spec_id"]
ALL = "all"  # scope and group name when nothing is grouped
NULL_GROUP = "null"  # how a null group value is written in `group`
TEXT_SPEC_ID = "text"  # spec_id of the n-gram baselines (they depend on no projection)
EMBEDDING_SPEC_PREFIX = "embedding:"

# metric names
G_VENDI = "g_vendi"
G_MEAN_COSINE = "g_mean_cosine"
EMB_VENDI = "emb_vendi"
EMB_MEAN_COSINE = "emb_mean_cosine"

_P = "__prism_"  # prefix of internal columns
_PART, _N, _D, _VSUM, _COV, _SPECS = (f"{_P}part", f"{_P}n", f"{_P}d", f"{_P}vsum", f"{_P}cov", f"{_P}specs")
_VENDI, _VENDI_Q, _MCOS = f"{_P}vendi", f"{_P}vendi_q", f"{_P}mean_cos"
_NGRAM_SEP = "\x1f"  # tokens never contain it: tokenize() treats it as whitespace


def vendi_metric(prefix: str, q: float) -> str:
    """Metric name of a Vendi score of order q: ``g_vendi`` at q = 1, else e.g. ``g_vendi_q2`` / ``g_vendi_qinf``."""
    q = normalize_q(q)
    return prefix if q == 1.0 else f"{prefix}_q{'inf' if math.isinf(q) else format(q, 'g')}"


def ngram_metrics(n: int) -> tuple[str, str]:
    """Names of the n-gram entropy and distinct-n metrics, e.g. ``ngram_entropy_2`` and ``distinct_2``."""
    return f"ngram_entropy_{n}", f"distinct_{n}"


def embedding_spec_id(model: str) -> str:
    """``spec_id`` written on embedding-Vendi rows: the embedding model id, e.g. ``embedding:builtin:minilm``."""
    return EMBEDDING_SPEC_PREFIX + model


@dataclass
class DiversityResult:
    """Rows of metrics plus, when asked for, each group's covariance sums (to store and extend next round).

    Attributes:
        rows: pandas DataFrame with columns ``scope, group, metric, value, n, spec_id``.
        sums: group key (tuple of the group columns' values) → :class:`CovarianceSums`; empty unless kept.
        spec_ids: group key → the single spec_id its vectors carry (the ``spec_id`` argument without a spec column).
    """

    rows: pd.DataFrame
    sums: dict[tuple, CovarianceSums] = field(default_factory=dict)
    spec_ids: dict[tuple, str | None] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# helpers shared by the workers


def _as_cols(group_cols: str | Sequence[str] | None) -> list[str]:
    if group_cols is None:
        return []
    if isinstance(group_cols, str):
        return [group_cols]
    cols = list(group_cols)
    if len(set(cols)) != len(cols):
        raise ValueError(f"group columns repeat: {cols}")
    return cols


def scope_name(group_cols: Sequence[str]) -> str:
    """``all`` when nothing is grouped, else the grouping columns joined by commas (``source,round``)."""
    return ",".join(group_cols) if group_cols else ALL


def group_name(key: Sequence[Any]) -> str:
    """``all`` for the empty key, else the values joined by ``/`` with nulls written ``null``."""
    if not key:
        return ALL
    return "/".join(NULL_GROUP if v is None else str(v) for v in key)


@contextlib.contextmanager
def _blas_threads(n: int | None):
    """Limit BLAS threads inside a Spark task (Spark runs ``spark.task.cpus`` threads' worth of tasks per core)."""
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn, a core dependency
        yield
        return
    with threadpool_limits(limits=max(1, min(n, os.cpu_count() or n)), user_api="blas"):
        yield


def vectors_from_arrow(col: pa.Array | pa.ChunkedArray, name: str = "vector") -> np.ndarray:
    """View an Arrow list / large_list / fixed_size_list column of floats as a (rows, d) numpy matrix.

    Zero-copy when the values hold no nulls. Raises ValueError on null vectors, null elements or unequal lengths.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise ValueError(f"vector column {name!r} must be an array of floats, got Arrow type {col.type}")
    if not pa.types.is_floating(col.type.value_type):
        raise ValueError(f"vector column {name!r} must hold floats, got {col.type.value_type}")
    if col.null_count:
        raise ValueError(f"vector column {name!r} holds {col.null_count} null vectors")
    b = len(col)
    if b == 0:
        return np.empty((0, 0), dtype=np.float32)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    d = int(lengths[0])
    if d == 0 or np.any(lengths != d):
        raise ValueError(
            f"vector column {name!r}: vectors must all have the same length > 0, got {np.unique(lengths)}"
        )
    values = col.flatten()
    if values.null_count:
        raise ValueError(f"vector column {name!r} holds null elements inside vectors")
    return values.to_numpy(zero_copy_only=False).reshape(b, d)


def _split_groups(batch: pa.RecordBatch, group_cols: Sequence[str]):
    """Yield (key, first-row group values as 1-row Arrow arrays, row indices or None for all rows) per group."""
    if not group_cols:
        yield (), [], None
        return
    b = batch.num_rows
    codes = np.zeros(b, dtype=np.int64)
    radix = 1
    for c in group_cols:
        enc = pc.dictionary_encode(batch.column(c), null_encoding="encode")
        codes += enc.indices.to_numpy(zero_copy_only=False).astype(np.int64) * radix
        radix *= max(1, len(enc.dictionary))
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    if len(first) == 1:
        rows_of = [None]
    else:
        order = np.argsort(inverse, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse))])
        rows_of = [order[bounds[g] : bounds[g + 1]] for g in range(len(first))]
    for g, i0 in enumerate(first):
        vals = [batch.column(c).slice(int(i0), 1) for c in group_cols]
        yield tuple(v[0].as_py() for v in vals), vals, rows_of[g]


def _sorted_specs(specs: Iterable[str | None]) -> list[str | None]:
    return sorted(set(specs), key=lambda s: (s is None, s or ""))


class _Packed:
    """Sums kept packed (upper triangle as a flat vector) while they are only being added."""

    __slots__ = ("n", "d", "vsum", "up", "specs")

    def __init__(self, d: int):
        self.n, self.d = 0, d
        self.vsum = np.zeros(d)
        self.up = np.zeros(d * (d + 1) // 2)
        self.specs: set[str | None] = set()

    def add(self, n: int, d: int, vsum: bytes, up: bytes, specs: Iterable[str | None]) -> None:
        if d != self.d:
            raise ValueError(f"vectors of dimension {self.d} and {d} in one group")
        self.n += n
        self.vsum += np.frombuffer(vsum, dtype="<f8")
        self.up += np.frombuffer(up, dtype="<f8")
        self.specs.update(specs)

    def sums(self) -> CovarianceSums:
        return CovarianceSums.from_record(
            {"n": self.n, "d": self.d, "vector_sum": self.vsum.tobytes(), "cov_upper": self.up.tobytes()}
        )


def _read_packed(batches: Iterable[pa.RecordBatch], group_cols: Sequence[str]):
    """Sum partial rows (all of one group) → (_Packed or None, first group values, first partition id)."""
    acc: _Packed | None = None
    vals: list[pa.Array] = []
    part = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        ns, ds = batch.column(_N).to_pylist(), batch.column(_D).to_pylist()
        vsums, covs, specs = batch.column(_VSUM), batch.column(_COV), batch.column(_SPECS).to_pylist()
        for i in range(batch.num_rows):
            if acc is None:
                acc = _Packed(ds[i])
                vals = [batch.column(c).slice(i, 1) for c in group_cols]
                part = batch.column(_PART)[i].as_py() if _PART in batch.schema.names else 0
            acc.add(ns[i], ds[i], vsums[i].as_py(), covs[i].as_py(), specs[i] or [])
    return acc, vals, part


def _partial_batches(
    batches: Iterable[pa.RecordBatch],
    vector_col: str,
    group_cols: list[str],
    spec_col: str | None,
    threads: int | None,
    part: int,
) -> Iterator[pa.RecordBatch]:
    """Sum float64 ``Xᵀ X``, Σ x and n per group over batches of rows; one partial row per group, tagged ``part``."""
    acc: dict[tuple, list] = {}
    with _blas_threads(threads):
        for batch in batches:
            if batch.num_rows == 0:
                continue
            X = vectors_from_arrow(batch.column(vector_col), vector_col)
            spec_arr = batch.column(spec_col) if spec_col else None
            for key, vals, rows in _split_groups(batch, group_cols):
                entry = acc.get(key)
                if entry is None:
                    entry = acc[key] = [CovarianceSums.zeros(X.shape[1]), vals, set()]
                entry[0].update(X if rows is None else X[rows])
                if spec_arr is not None:
                    sub = spec_arr if rows is None else spec_arr.take(pa.array(rows))
                    entry[2].update(pc.unique(sub).to_pylist())
    for sums, vals, specs in acc.values():
        rec = sums.to_record()
        arrays = [
            *vals,
            pa.array([part], pa.int64()),
            pa.array([sums.n], pa.int64()),
            pa.array([sums.d], pa.int32()),
            pa.array([rec["vector_sum"]], pa.binary()),
            pa.array([rec["cov_upper"]], pa.binary()),
            pa.array([_sorted_specs(specs)], pa.list_(pa.string())),
        ]
        yield pa.RecordBatch.from_arrays(arrays, names=[*group_cols, _PART, _N, _D, _VSUM, _COV, _SPECS])


def _partials_fn(vector_col: str, group_cols: list[str], spec_col: str | None, threads: int | None):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        yield from _partial_batches(batches, vector_col, group_cols, spec_col, threads, part)

    return run


def _combine_fn(group_cols: list[str]):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc, vals, part = _read_packed(batches, group_cols)
        if acc is None:
            return
        arrays = [
            *vals,
            pa.array([part], pa.int64()),
            pa.array([acc.n], pa.int64()),
            pa.array([acc.d], pa.int32()),
            pa.array([acc.vsum.astype("<f8").tobytes()], pa.binary()),
            pa.array([acc.up.astype("<f8").tobytes()], pa.binary()),
            pa.array([_sorted_specs(acc.specs)], pa.list_(pa.string())),
        ]
        yield pa.RecordBatch.from_arrays(arrays, names=[*group_cols, _PART, _N, _D, _VSUM, _COV, _SPECS])

    return run


def _metrics(sums: CovarianceSums, q: float) -> tuple[float, float, float]:
    """(Vendi at q = 1, Vendi at q, mean pairwise cosine) of one group's sums."""
    lam = np.linalg.eigvalsh(sums.covariance())
    v1 = vendi_from_eigenvalues(lam, 1.0, size=sums.d)
    vq = v1 if q == 1.0 else vendi_from_eigenvalues(lam, q, size=sums.d)
    return v1, vq, mean_pairwise_cosine_from_sums(sums)


def _finalize_fn(group_cols: list[str], q: float, keep_sums: bool):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        acc, vals, _ = _read_packed(batches, group_cols)
        if acc is None:
            return
        specs = _sorted_specs(acc.specs)
        if len(specs) > 1 or keep_sums:
            v1 = vq = mc = None  # mixed specs: the driver raises; kept sums: the driver scores (it may add base sums)
        else:
            v1, vq, mc = _metrics(acc.sums(), q)
        arrays = [
            *vals,
            pa.array([acc.n], pa.int64()),
            pa.array([acc.d], pa.int32()),
            pa.array([v1], pa.float64()),
            pa.array([vq], pa.float64()),
            pa.array([mc], pa.float64()),
            pa.array([specs], pa.list_(pa.string())),
            pa.array([acc.vsum.astype("<f8").tobytes() if keep_sums else None], pa.binary()),
            pa.array([acc.up.astype("<f8").tobytes() if keep_sums else None], pa.binary()),
        ]
        names = [*group_cols, _N, _D, _VENDI, _VENDI_Q, _MCOS, _SPECS, _VSUM, _COV]
        yield pa.RecordBatch.from_arrays(arrays, names=names)

    return run


# ---------------------------------------------------------------------------------------------------------------------
# direct read: the files of a plain parquet scan, read by pyarrow inside Spark tasks

_BATCH_BYTES = 32 << 20  # rows per batch read from a file: about this many (uncompressed) bytes
_MIN_SLICE_BYTES = 8 << 20  # small data gets fewer reading tasks: about one per this many bytes of files


def _slice_row_groups(rows_per_group: Sequence[int], slice_: int, slices: int) -> tuple[list[int], int, int, int]:
    """Rows [lo, hi) of slice ``slice_`` of ``slices`` equal row ranges of a file, and the row groups covering them.

    Returns (row groups, first row of the first of them, lo, hi); no row groups when the slice is empty.
    """
    total = int(sum(rows_per_group))
    lo, hi = slice_ * total // slices, (slice_ + 1) * total // slices
    groups: list[int] = []
    first = pos = 0
    for i, r in enumerate(rows_per_group):
        if r and pos < hi and pos + r > lo:
            if not groups:
                first = pos
            groups.append(i)
        pos += r
    return groups, first, lo, hi


def _read_slices(
    units: Sequence[tuple[str, int, int]],
    columns: Mapping[str, str],
    types: Mapping[str, pa.DataType],
    batch_bytes: int = _BATCH_BYTES,
) -> Iterator[pa.RecordBatch]:
    """Yield the rows of each (parquet path, slice, slices) unit as batches with the DataFrame's column names.

    Args:
        units: pieces of files; slice j of k holds rows [j·R / k, (j + 1)·R / k) of a file of R rows, so the slices
            of a file hold each of its rows once.
        columns: DataFrame column → column name in the files (Spark resolves names case-insensitively).
        types: Arrow type Spark uses for a DataFrame column; such columns are cast to it (group and spec columns,
            whose values travel on in the partial rows). A column missing from a file reads as nulls, as in Spark.
        batch_bytes: about how many uncompressed bytes each batch holds.
    """
    import pyarrow.parquet as pq

    names = list(columns)
    for path, slice_, slices in units:
        with pq.ParquetFile(path, memory_map=True) as pf:
            md = pf.metadata
            rows_per_group = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            groups, pos, lo, hi = _slice_row_groups(rows_per_group, slice_, slices)
            if not groups:
                continue
            nbytes = sum(md.row_group(i).total_byte_size for i in groups)
            nrows = sum(rows_per_group[i] for i in groups)
            batch_rows = int(min(1 << 16, max(256, batch_bytes * nrows // max(1, nbytes))))
            present = set(pf.schema_arrow.names)
            wanted = list(dict.fromkeys(columns[c] for c in names if columns[c] in present))
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=wanted, use_threads=False):
                a, b = max(lo - pos, 0), min(hi - pos, batch.num_rows)
                pos += batch.num_rows
                if b <= a:
                    continue
                if a > 0 or b < batch.num_rows:
                    batch = batch.slice(a, b - a)
                arrays = []
                for c in names:
                    t = types.get(c)
                    if columns[c] in present:
                        arr = batch.column(columns[c])
                        arrays.append(arr if t is None or arr.type == t else arr.cast(t))
                    else:
                        arrays.append(pa.nulls(batch.num_rows, t if t is not None else pa.list_(pa.float32())))
                yield pa.RecordBatch.from_arrays(arrays, names=names)


def _direct_partials_fn(
    units_by_task: Sequence[Sequence[tuple[str, int, int]]],
    columns: Mapping[str, str],
    types: Mapping[str, pa.DataType],
    vector_col: str,
    group_cols: list[str],
    spec_col: str | None,
    threads: int | None,
):
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:  # rows of spark.range(tasks): the task ids this partition reads
            for task in batch.column(0).to_pylist():
                rows = _read_slices(units_by_task[task], columns, types)
                yield from _partial_batches(rows, vector_col, group_cols, spec_col, threads, task)

    return run


# ---------------------------------------------------------------------------------------------------------------------
# driver side


def _num_partitions(df) -> int | None:
    try:
        return int(df.rdd.getNumPartitions())
    except Exception:  # noqa: BLE001 - Spark Connect has no RDD API; the tree then uses one level
        return None


def _task_threads(df, partitions: int | None) -> int | None:
    """BLAS threads per task: the cores a task owns, or more when there are fewer partitions than cores."""
    try:
        spark = df.sparkSession
        cores = int(spark.sparkContext.defaultParallelism)
        task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
    except Exception:  # noqa: BLE001 - Spark Connect: leave BLAS as the worker has it
        return None
    if not partitions:
        return task_cpus
    return max(task_cpus, cores // partitions)


@dataclass(frozen=True)
class _ParquetScan:
    """Local parquet files behind a DataFrame (path, bytes) and where its columns are in them."""

    files: list[tuple[str, int]]
    columns: dict[str, str]


_HADOOP_FS_RELATION = "org.apache.spark.sql.execution.datasources.HadoopFsRelation"
_PARQUET_FORMAT = "org.apache.spark.sql.execution.datasources.parquet.ParquetFileFormat"
_IN_MEMORY_INDEX = "org.apache.spark.sql.execution.datasources.InMemoryFileIndex"


def _parquet_scan(df, needed: Sequence[str]) -> _ParquetScan | None:
    """The files of ``df`` when it is a plain scan of local parquet files (projections only), else None.

    Then a task that reads the files with pyarrow gets exactly the rows Spark would read. Anything else keeps the
    DataFrame path: filters, joins, limits, computed or cached columns, partition columns, files that are not local
    (``file:``), other sources, and Delta tables read natively (their file index applies deletion vectors and column
    mapping), as well as Spark Connect (no plan to inspect).
    """
    try:
        plan = df._jdf.queryExecution().optimizedPlan()
        node = plan
        while node.nodeName() == "Project":
            exprs = node.projectList()
            if any(exprs.apply(i).getClass().getSimpleName() != "AttributeReference" for i in range(exprs.size())):
                return None
            node = node.child()
        if node.nodeName() != "LogicalRelation":
            return None
        rel = node.relation()
        if (
            rel.getClass().getName() != _HADOOP_FS_RELATION
            or rel.fileFormat().getClass().getName() != _PARQUET_FORMAT
            or rel.location().getClass().getName() != _IN_MEMORY_INDEX
        ):
            return None
        data_cols = set(rel.dataSchema().fieldNames())
        rel_out = node.output()
        by_id = {rel_out.apply(i).exprId().id(): rel_out.apply(i).name() for i in range(rel_out.size())}
        out = plan.output()
        columns = {}
        for i in range(out.size()):
            attr = out.apply(i)
            columns[attr.name()] = by_id.get(attr.exprId().id())
        uris = list(df.inputFiles())
    except Exception as exc:  # noqa: BLE001 - Spark Connect (no _jdf) or a plan of another shape
        log.debug("no direct parquet read: %s", exc)
        return None
    mapped = {c: columns.get(c) for c in needed}
    if any(f is None or f not in data_cols for f in mapped.values()):
        return None
    files: list[tuple[str, int]] = []
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        path = unquote(parsed.path)
        try:
            files.append((path, os.path.getsize(path)))
        except OSError:
            return None
    return _ParquetScan(files, mapped)


def _plan_slices(files: Sequence[tuple[str, int]], tasks: int) -> list[list[tuple[str, int, int]]]:
    """Cut files into row-range slices of about equal bytes and deal them to at most ``tasks`` tasks, largest first.

    A file larger than total / tasks is cut into that many slices, so one big file still keeps every task busy.
    """
    total = sum(size for _, size in files)
    chunk = max(1, -(-total // max(1, tasks)))
    pieces = []
    for path, size in files:
        k = max(1, -(-size // chunk))
        pieces += [(size / k, path, j, k) for j in range(k)]
    pieces.sort(key=lambda p: -p[0])
    loads = [0.0] * max(1, min(tasks, len(pieces)))
    bins: list[list[tuple[str, int, int]]] = [[] for _ in loads]
    for size, path, j, k in pieces:
        t = loads.index(min(loads))
        loads[t] += size
        bins[t].append((path, j, k))
    return [sorted(b) for b in bins if b]


def _slots(spark) -> tuple[int, int]:
    """(task slots of the session, cores per task)."""
    try:
        task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
        return max(1, int(spark.sparkContext.defaultParallelism) // task_cpus), task_cpus
    except Exception:  # noqa: BLE001 - Spark Connect
        return 1, 1


def _direct_partials(
    df,
    scan: _ParquetScan,
    partial_schema,
    vector_col: str,
    cols: list[str],
    spec_col: str | None,
    read_tasks: int | None,
):
    """Partials of a plain parquet scan: ``spark.range(tasks)`` whose task i reads its file slices with pyarrow.

    Returns (partials DataFrame, number of tasks), or None when a group / spec column has a type this path does not
    carry (it then keeps the DataFrame path).
    """
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import BooleanType, DateType, DoubleType, FloatType, IntegralType, StringType

    spark = df.sparkSession
    fields = {f.name: f.dataType for f in df.schema.fields}
    carried = [*cols] + ([spec_col] if spec_col and spec_col not in cols else [])
    if spec_col and not isinstance(fields[spec_col], StringType):
        return None
    if not all(
        isinstance(fields[c], StringType | IntegralType | BooleanType | DateType | DoubleType | FloatType)
        for c in carried
    ):
        return None
    large = str(spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")).lower() == "true"
    types = {c: to_arrow_type(fields[c], prefers_large_types=large) for c in carried}
    slots, task_cpus = _slots(spark)
    if read_tasks is None:
        total = sum(size for _, size in scan.files)
        read_tasks = max(1, min(slots, total // _MIN_SLICE_BYTES))
    units = _plan_slices(scan.files, read_tasks) if scan.files else []
    tasks = max(1, len(units))
    units = units or [[]]
    threads = task_cpus * max(1, slots // tasks)  # fewer tasks than slots: each task's BLAS uses the idle cores
    columns = {c: scan.columns[c] for c in [vector_col, *carried]}
    fn = _direct_partials_fn(units, columns, types, vector_col, cols, spec_col, threads)
    log.info(
        "covariance sums: direct parquet read of %d file(s) in %d task(s), %d BLAS thread(s) each",
        len(scan.files),
        tasks,
        threads,
    )
    return spark.range(0, tasks, 1, tasks).mapInArrow(fn, partial_schema), tasks


def _check_columns(df, vector_col: str, group_cols: list[str], spec_col: str | None) -> None:
    from pyspark.sql.types import ArrayType, MapType, NumericType, StructType

    fields = {f.name: f for f in df.schema.fields}
    if vector_col not in fields:
        raise ValueError(f"vector column {vector_col!r} is not in the DataFrame (columns: {sorted(fields)})")
    vtype = fields[vector_col].dataType
    if not (isinstance(vtype, ArrayType) and isinstance(vtype.elementType, NumericType)):
        raise ValueError(
            f"vector column {vector_col!r} must be array<float> or array<double>, got {vtype.simpleString()}"
        )
    for c in group_cols:
        if c not in fields:
            raise ValueError(f"group column {c!r} is not in the DataFrame (columns: {sorted(fields)})")
        if isinstance(fields[c].dataType, ArrayType | MapType | StructType):
            raise ValueError(f"group column {c!r} has nested type {fields[c].dataType.simpleString()}; use scalars")
        if c.startswith(_P):
            raise ValueError(f"group column {c!r} uses the reserved prefix {_P!r}")
    if vector_col in group_cols:
        raise ValueError(f"vector column {vector_col!r} cannot also be a group column")
    if spec_col is not None and spec_col not in fields:
        raise ValueError(
            f"spec column {spec_col!r} is not in the DataFrame; pass spec_col=None only for vectors of one known spec"
        )


def _raise_mixed(scope: str, key: tuple, specs: Sequence[str | None], spec_col: str) -> None:
    shown = ", ".join("null" if s is None else s for s in specs[:5])
    raise SpecMismatchError(
        f"{scope}={group_name(key)} pools vectors of {len(specs)} projection specs ({shown}); "
        f"filter to one {spec_col} or group by {spec_col}"
    )


def _group_fields(src, cols: list[str]) -> list:
    from pyspark.sql.types import StructField

    fields = [StructField(f.name, f.dataType, True) for f in src.schema.fields if f.name in cols]
    return sorted(fields, key=lambda f: cols.index(f.name))


def _partial_schema(group_fields: list):
    """Rows of per-partition (and tree-level) partials: group values, partition, n, d, packed sums, specs."""
    from pyspark.sql.types import ArrayType, BinaryType, IntegerType, LongType, StringType, StructField, StructType

    return StructType(
        [
            *group_fields,
            StructField(_PART, LongType(), False),
            StructField(_N, LongType(), False),
            StructField(_D, IntegerType(), False),
            StructField(_VSUM, BinaryType(), False),
            StructField(_COV, BinaryType(), False),
            StructField(_SPECS, ArrayType(StringType(), True), False),
        ]
    )


def _final_schema(group_fields: list):
    """One row per group: n, d, the metrics (null when the driver scores) and the packed sums when kept."""
    from pyspark.sql.types import (
        ArrayType,
        BinaryType,
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    return StructType(
        [
            *group_fields,
            StructField(_N, LongType(), False),
            StructField(_D, IntegerType(), False),
            StructField(_VENDI, DoubleType(), True),
            StructField(_VENDI_Q, DoubleType(), True),
            StructField(_MCOS, DoubleType(), True),
            StructField(_SPECS, ArrayType(StringType(), True), False),
            StructField(_VSUM, BinaryType(), True),
            StructField(_COV, BinaryType(), True),
        ]
    )


def _partials(df, src, keep: list[str], schema, vector_col: str, cols: list[str], spec_col, direct_read, read_tasks):
    """Per-partition partials: the direct parquet read when ``df`` allows it, else ``mapInArrow`` over ``src``.

    Returns (partials DataFrame, number of partitions or None when unknown, a note for the log).
    """
    if direct_read:
        scan = _parquet_scan(df, keep)
        direct = None if scan is None else _direct_partials(df, scan, schema, vector_col, cols, spec_col, read_tasks)
        if direct is not None:
            return direct[0], direct[1], "direct read"
    partitions = _num_partitions(src)
    threads = _task_threads(src, partitions)
    partials = src.mapInArrow(_partials_fn(vector_col, cols, spec_col, threads), schema)
    return partials, partitions, f"mapInArrow, {threads} BLAS threads per task"


def _tree_levels(partials, cols: list[str], schema, partitions: int | None, fanout: int):
    """Sum partials of ``fanout`` consecutive partitions until at most ``fanout`` remain per group.

    Returns (partials, number of levels added); an unknown partition count (Spark Connect) gets one level.
    """
    from pyspark.sql import functions as F

    levels = 0
    remaining = partitions if partitions is not None else fanout * fanout
    while remaining > fanout:
        partials = (
            partials.withColumn(_PART, F.floor(F.col(_PART) / fanout).cast("long"))
            .groupBy(*cols, _PART)
            .applyInArrow(_combine_fn(cols), schema)
        )
        remaining = -(-remaining // fanout)
        levels += 1
    return partials, levels


def covariance_sums_frame(
    df,
    group_cols: str | Sequence[str] | None = None,
    *,
    vector_col: str = "vector",
    spec_col: str | None = "spec_id",
    q: float = 1.0,
    keep_sums: bool = False,
    fanout: int = 32,
    finalize: bool = True,
    direct_read: bool = True,
    read_tasks: int | None = None,
):
    """Build (lazily) the Spark plan of per-group sums → metrics; one row per group.

    Columns: the group columns, then internal ``__prism_*`` columns (n, d, vendi, vendi_q, mean_cos, specs, and the
    packed sums when ``keep_sums``, in which case the metrics are left null for the driver to compute). Most callers
    want :func:`gradient_diversity` or :func:`group_sums`; this is exposed for plans that want to join or write the
    per-group results without collecting them. With ``finalize=False`` the plan stops before the last per-group sum:
    at most ``fanout`` partial rows per group (n, d, packed sums, specs).

    With ``direct_read`` and a DataFrame that is a plain scan of local parquet files (e.g. a delta-rs table's current
    files, as :mod:`prismatic.tables` reads them), Spark tasks read the files with pyarrow instead of receiving the
    rows from the JVM (which costs about as much as the sums themselves); ``read_tasks`` sets how many (default:
    the session's task slots, fewer for small data). Any other DataFrame takes the ``mapInArrow`` path.
    """
    cols = _as_cols(group_cols)
    if isinstance(fanout, bool) or not isinstance(fanout, int) or fanout < 2:
        raise ValueError(f"fanout must be an integer >= 2, got {fanout=}")
    if read_tasks is not None and (isinstance(read_tasks, bool) or not isinstance(read_tasks, int) or read_tasks < 1):
        raise ValueError(f"read_tasks must be a positive integer or None, got {read_tasks=}")
    q = normalize_q(q)
    _check_columns(df, vector_col, cols, spec_col)
    keep = [*cols, vector_col] + ([spec_col] if spec_col and spec_col not in cols else [])
    src = df.select(*keep)
    gfields = _group_fields(src, cols)
    schema = _partial_schema(gfields)
    partials, partitions, how = _partials(df, src, keep, schema, vector_col, cols, spec_col, direct_read, read_tasks)
    partials, levels = _tree_levels(partials, cols, schema, partitions, fanout)
    log.debug("covariance sums: %s partitions (%s), %d tree levels", partitions, how, levels)
    if not finalize:
        return partials
    return partials.groupBy(*cols).applyInArrow(_finalize_fn(cols, q, keep_sums), _final_schema(gfields))


def _rows(scope: str, key: tuple, n: int, spec_id: str | None, metrics: Mapping[str, float]) -> list[dict]:
    g = group_name(key)
    return [
        {"scope": scope, "group": g, "metric": m, "value": float(v), "n": int(n), "spec_id": spec_id}
        for m, v in metrics.items()
    ]


def _frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    out["value"] = out["value"].astype("float64")
    out["n"] = out["n"].astype("int64")
    return out.sort_values(["scope", "group", "metric"], kind="stable").reset_index(drop=True)


def _collect(frame, group_cols: Sequence[str]) -> list:
    """Rows of ``frame``, through Arrow when the group values come back as the same Python objects as with Rows.

    Partials and kept sums are 4.2 MB binaries (d = 1024), which Arrow moves several times faster than the pickled
    rows of ``collect()``; timestamp or binary group values would come back as other objects, so those use Rows.
    """
    from pyspark.sql.types import BooleanType, DateType, DoubleType, FloatType, IntegralType, StringType

    fields = {f.name: f.dataType for f in frame.schema.fields}
    safe = StringType | IntegralType | BooleanType | DateType | DoubleType | FloatType
    if hasattr(frame, "toArrow") and all(isinstance(fields[c], safe) for c in group_cols):
        return frame.toArrow().to_pylist()
    return frame.collect()


def _single_spec(scope: str, key: tuple, specs: Sequence[str | None], spec_col: str | None, spec_id: str | None):
    """The one spec_id of a group's vectors (``spec_id`` when there is no spec column); two or more raise."""
    if not spec_col:
        return spec_id
    if len(specs) > 1:
        _raise_mixed(scope, key, list(specs), spec_col)
    return specs[0] if specs else None


def _named(v1: float, vq: float, mc: float, q: float, metric_prefix: str, cosine_metric: str) -> dict[str, float]:
    """A group's metrics by name: ``<prefix>``, ``cosine_metric`` and, for q ≠ 1, ``<prefix>_q<q>``."""
    metrics = {metric_prefix: v1, cosine_metric: mc}
    if q != 1.0:
        metrics[vendi_metric(metric_prefix, q)] = vq
    return metrics


@dataclass
class GroupSums:
    """Per-group covariance sums of one grouping (the seam between computing sums and scoring them).

    Attributes:
        group_cols: the grouping columns (empty: one group, key ``()``).
        sums: group key (tuple of the group columns' values) → :class:`CovarianceSums`.
        spec_ids: group key → the single spec_id its vectors carry.
    """

    group_cols: list[str]
    sums: dict[tuple, CovarianceSums] = field(default_factory=dict)
    spec_ids: dict[tuple, str | None] = field(default_factory=dict)


def group_sums(
    df,
    group_cols: str | Sequence[str] | None = None,
    *,
    vector_col: str = "vector",
    spec_col: str | None = "spec_id",
    spec_id: str | None = None,
    fanout: int = 32,
    direct_read: bool = True,
    read_tasks: int | None = None,
) -> GroupSums:
    """Each group's :class:`CovarianceSums` of ``df``'s unit-normalized vectors, in one pass, on the driver.

    Without grouping the (at most ``fanout``) partials are summed here, with no last shuffle; with groups each is
    summed on an executor and its sums (4.2 MB at d = 1024) come back. Arguments as in :func:`gradient_diversity`
    and :func:`covariance_sums_frame`.

    Raises:
        SpecMismatchError: vectors of more than one spec in a group.
        ValueError: missing or mistyped columns, vectors of unequal length, zero / NaN / null vectors.
    """
    cols = _as_cols(group_cols)
    scope = scope_name(cols)
    frame = covariance_sums_frame(
        df,
        cols,
        vector_col=vector_col,
        spec_col=spec_col,
        keep_sums=True,
        fanout=fanout,
        finalize=bool(cols),
        direct_read=direct_read,
        read_tasks=read_tasks,
    )
    collected = _collect(frame, cols)
    out = GroupSums(cols)
    if cols:
        for r in collected:
            key = tuple(r[c] for c in cols)
            record = {"n": r[_N], "d": r[_D], "vector_sum": r[_VSUM], "cov_upper": r[_COV]}
            out.sums[key] = CovarianceSums.from_record(record)
            out.spec_ids[key] = _single_spec(scope, key, list(r[_SPECS]), spec_col, spec_id)
        return out
    acc: _Packed | None = None  # one group: its partials are summed here
    for r in collected:
        acc = acc or _Packed(r[_D])
        acc.add(r[_N], r[_D], bytes(r[_VSUM]), bytes(r[_COV]), r[_SPECS] or [])
    if acc is not None:
        out.sums[()] = acc.sums()
        out.spec_ids[()] = _single_spec(scope, (), _sorted_specs(acc.specs), spec_col, spec_id)
    return out


def add_sums(base: GroupSums, new: GroupSums) -> GroupSums:
    """The sums of two disjoint sets of rows per group, e.g. the stored sums of earlier rounds plus the new rows.

    Groups in only one of them are kept as they are (a new round need not touch every group).

    Raises:
        ValueError: the two were grouped by different columns.
        SpecMismatchError: a group's base and new vectors carry different spec_ids.
    """
    if list(base.group_cols) != list(new.group_cols):
        raise ValueError(f"cannot add sums grouped by {base.group_cols} to sums grouped by {new.group_cols}")
    out = GroupSums(list(new.group_cols), dict(new.sums), dict(new.spec_ids))
    scope = scope_name(out.group_cols)
    for key, base_sums in base.sums.items():
        base_spec = base.spec_ids.get(key)
        if key in out.sums:
            if base_spec != out.spec_ids[key]:
                _raise_mixed(scope, key, _sorted_specs([base_spec, out.spec_ids[key]]), "spec_id")
            out.sums[key] = base_sums + out.sums[key]
        else:
            out.sums[key], out.spec_ids[key] = base_sums + CovarianceSums.zeros(base_sums.d), base_spec
    return out


def diversity_from_sums(
    sums: GroupSums, *, q: float = 1.0, metric_prefix: str = G_VENDI, cosine_metric: str = G_MEAN_COSINE
) -> DiversityResult:
    """G-Vendi (and order-q Vendi, mean pairwise cosine) of every group with rows, from its sums (``eigvalsh`` of
    the d × d covariance on the driver); the result keeps the sums. Metric names as in :func:`gradient_diversity`.
    """
    q = normalize_q(q)
    scope = scope_name(sums.group_cols)
    rows: list[dict] = []
    out = DiversityResult(pd.DataFrame(), {}, {})
    for key, s in sums.sums.items():
        if s.n == 0:
            continue
        spec = sums.spec_ids.get(key)
        rows += _rows(scope, key, s.n, spec, _named(*_metrics(s, q), q, metric_prefix, cosine_metric))
        out.sums[key], out.spec_ids[key] = s, spec
    out.rows = _frame(rows)
    return out


def gradient_diversity(
    df,
    group_cols: str | Sequence[str] | None = None,
    *,
    vector_col: str = "vector",
    spec_col: str | None = "spec_id",
    spec_id: str | None = None,
    q: float = 1.0,
    metric_prefix: str = G_VENDI,
    cosine_metric: str = G_MEAN_COSINE,
    fanout: int = 32,
) -> DiversityResult:
    """G-Vendi (and order-q Vendi, mean pairwise cosine) per group of a DataFrame of vectors, in one pass.

    G-Vendi = exp(−Σ λ log λ), λ = eig((1/n) Σ g gᵀ) over each group's unit-normalized vectors
    (https://arxiv.org/abs/2505.20161); mean pairwise cosine = (‖Σ g‖² − n) / (n (n − 1)). Without grouping the
    sums come to the driver (:func:`group_sums`, :func:`diversity_from_sums`); with groups each group is summed and
    scored on an executor, so the driver gets one small row per group. To keep or extend the sums (a new round
    costs O(new · d²)), use :func:`group_sums`, :func:`add_sums` and :func:`diversity_from_sums`.

    Args:
        df: Spark DataFrame with ``vector_col`` (array<float>), the group columns and ``spec_col``; a plain scan of
            local parquet files is read by the tasks with pyarrow (see :func:`covariance_sums_frame`).
        group_cols: columns to group by (``None`` / empty: the whole DataFrame is one group, scope ``all``).
        vector_col: vector column; vectors are unit-normalized inside (zero, null or NaN vectors raise).
        spec_col: projection-spec column. A group holding two spec_ids raises SpecMismatchError unless ``spec_col``
            is one of the group columns. ``None``: the input carries no spec column; ``spec_id`` labels the rows.
        spec_id: label written when ``spec_col`` is None.
        q: extra Vendi order reported as ``<prefix>_q<q>`` (G-Vendi at q = 1 is always reported).
        metric_prefix, cosine_metric: metric names (embedding Vendi uses ``emb_vendi`` / ``emb_mean_cosine``).
        fanout: most partials summed by one task (bounds executor memory at ``fanout`` × 4.2 MB per group).

    Returns:
        :class:`DiversityResult` (no sums); rows hold, per group, ``<prefix>``, ``<prefix>_q<q>`` (q ≠ 1) and
        ``cosine_metric``.

    Raises:
        SpecMismatchError: vectors of more than one spec in a group.
        ValueError: missing or mistyped columns, vectors of unequal length, zero / NaN / null vectors.
    """
    cols = _as_cols(group_cols)
    q = normalize_q(q)
    names = {"q": q, "metric_prefix": metric_prefix, "cosine_metric": cosine_metric}
    if not cols:
        sums = group_sums(df, vector_col=vector_col, spec_col=spec_col, spec_id=spec_id, fanout=fanout)
        res = diversity_from_sums(sums, **names)
        return DiversityResult(res.rows, {}, res.spec_ids)
    frame = covariance_sums_frame(df, cols, vector_col=vector_col, spec_col=spec_col, q=q, fanout=fanout)
    scope = scope_name(cols)
    rows: list[dict] = []
    spec_ids: dict[tuple, str | None] = {}
    for r in _collect(frame, cols):
        key = tuple(r[c] for c in cols)
        spec_ids[key] = _single_spec(scope, key, list(r[_SPECS]), spec_col, spec_id)
        rows += _rows(scope, key, r[_N], spec_ids[key], _named(r[_VENDI], r[_VENDI_Q], r[_MCOS], **names))
    return DiversityResult(_frame(rows), {}, spec_ids)


# ---------------------------------------------------------------------------------------------------------------------
# incremental G-Vendi: stored sums per group, extended by the rows they do not cover

_MASK64 = (1 << 64) - 1
INCREMENTAL_DRIVER_ROWS = 100_000  # new rows summed on the driver (400 MB of float32 at d = 1024) before Spark tasks


@dataclass
class StoredSums:
    """One group's covariance sums with the set of rows they cover (a row of the ``diversity_sums`` table).

    Attributes:
        scope, group_key: as in the ``diversity`` table (:func:`scope_name`, :func:`group_name`).
        spec_id: the projection spec of the summed vectors.
        ids_hash: content hash of the covered sample ids (:func:`ids_hash`): 32 hex digits.
        through: the largest watermark value (e.g. ``round``) among the covered rows; None without a watermark.
        sums: the :class:`CovarianceSums` (``n`` rows).
    """

    scope: str
    group_key: str
    spec_id: str
    ids_hash: str
    through: int | None
    sums: CovarianceSums

    @property
    def n(self) -> int:
        return self.sums.n

    def to_row(self) -> dict[str, Any]:
        rec = self.sums.to_record()
        return {
            "scope": self.scope, "group_key": self.group_key, "spec_id": self.spec_id, "ids_hash": self.ids_hash,
            "n": rec["n"], "d": rec["d"], "through": self.through, "vector_sum": rec["vector_sum"],
            "cov_upper": rec["cov_upper"],
        }  # fmt: skip

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredSums:
        through = row.get("through")
        return cls(
            scope=row["scope"],
            group_key=row["group_key"],
            spec_id=row["spec_id"],
            ids_hash=row["ids_hash"],
            through=None if through is None or pd.isna(through) else int(through),
            sums=CovarianceSums.from_record(row),
        )


def _set_hash_exprs(id_col: str) -> list:
    """Two 64-bit hashes of each id (Spark ``xxhash64(id)`` and ``xxhash64(id, 1)``), summed per set of rows."""
    from pyspark.sql import functions as F

    return [F.xxhash64(F.col(id_col)), F.xxhash64(F.col(id_col), F.lit(1))]


def _hex_hash(h1: int, h2: int) -> str:
    return f"{h1 & _MASK64:016x}{h2 & _MASK64:016x}"


@dataclass
class IncrementalResult:
    """Outcome of :func:`incremental_gradient_diversity`.

    Attributes:
        result: metrics and sums per group, as :func:`diversity_from_sums` gives them.
        records: group key → the :class:`StoredSums` to store (new or changed ones only).
        plan: group key → ``reused`` (stored sums cover exactly the group's rows), ``added`` (stored sums plus the
            rows past their watermark) or ``full`` (no usable stored sums: every row summed).
        rows_summed: vectors read and summed in this call.
    """

    result: DiversityResult
    records: dict[str, StoredSums]
    plan: dict[str, str]
    rows_summed: int


def _hash_parts(
    df, cols: list[str], id_col: str, watermark_col: str | None, spec_col: str | None
) -> tuple[dict[tuple, list[tuple]], dict[tuple, set]]:
    """Per group: ``[(watermark, n, h1, h2), ...]`` and the set of its spec_ids, from one aggregation over ids and
    specs only (no vectors)."""
    from pyspark.sql import functions as F

    wm = F.col(watermark_col).cast("long") if watermark_col else F.lit(None).cast("long")
    aggs = [F.count(F.lit(1)).alias("n"), F.collect_set(F.col(spec_col) if spec_col else F.lit(None)).alias("specs")]
    for i, h in enumerate(_set_hash_exprs(id_col)):  # decimal sums never overflow; the driver reduces mod 2^64
        aggs.append(F.sum(h.cast("decimal(38,0)")).cast("string").alias(f"h{i}"))
    parts: dict[tuple, list[tuple]] = {}
    specs: dict[tuple, set] = {}
    for r in df.groupBy(*[F.col(c) for c in cols], wm.alias("__wm")).agg(*aggs).collect():
        key = tuple(r[c] for c in cols)
        parts.setdefault(key, []).append((r["__wm"], int(r["n"]), int(r["h0"]) & _MASK64, int(r["h1"]) & _MASK64))
        specs.setdefault(key, set()).update(r["specs"] or [])
    return parts, specs


def _driver_sums(df, cols: list[str], vector_col: str, spec_col: str | None, spec_id: str | None) -> GroupSums:
    """:func:`group_sums` of a few rows on the driver: one Arrow collect, float64 ``Xᵀ X`` per group."""
    t = df.select(*cols, vector_col, *([spec_col] if spec_col else [])).toArrow()
    out = GroupSums(cols)
    if t.num_rows == 0:
        return out
    x = vectors_from_arrow(t.column(vector_col), vector_col)
    keys = list(zip(*[t.column(c).to_pylist() for c in cols], strict=True)) if cols else [()] * t.num_rows
    specs = t.column(spec_col).to_pylist() if spec_col else [None] * t.num_rows
    rows: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(key, []).append(i)
    scope = scope_name(cols)
    for key, idx in rows.items():
        out.sums[key] = CovarianceSums.from_vectors(x[idx])
        out.spec_ids[key] = _single_spec(scope, key, _sorted_specs({specs[i] for i in idx}), spec_col, spec_id)
    return out


def _combine(parts: list[tuple], through: int | None) -> tuple[int, str]:
    """(n, hash) of the parts with watermark <= ``through`` (all parts when ``through`` is None)."""
    n, h1, h2 = 0, 0, 0
    for wm, cnt, a, b in parts:
        if through is None or (wm is not None and wm <= through):
            n, h1, h2 = n + cnt, (h1 + a) & _MASK64, (h2 + b) & _MASK64
    return n, _hex_hash(h1, h2)


def _max_watermark(parts: list[tuple]) -> int | None:
    marks = [wm for wm, *_ in parts if wm is not None]
    return max(marks) if marks else None


def incremental_gradient_diversity(
    df,
    stored: Mapping[str, StoredSums],
    group_cols: str | Sequence[str] | None = None,
    *,
    id_col: str = "sample_id",
    watermark_col: str | None = "round",
    vector_col: str = "vector",
    spec_col: str | None = "spec_id",
    spec_id: str | None = None,
    q: float = 1.0,
    fanout: int = 32,
    driver_rows: int = INCREMENTAL_DRIVER_ROWS,
) -> IncrementalResult:
    """G-Vendi per group from stored sums plus the rows they do not cover: O(new · d²) per round.

    One aggregation over the ids (no vectors) gives, per group and watermark value, the row count and a 128-bit set
    hash (two ``xxhash64`` sums mod 2⁶⁴: the same for any order or partitioning, so it identifies the sorted ids).
    Per group, against its stored :class:`StoredSums` (``stored[group_key]``, same scope and spec):

    * the group's whole set hashes to the stored hash: the sums are reused (no vector is read);
    * its rows up to the stored watermark hash to the stored hash: only the rows past it are summed and added;
    * otherwise (a row removed or changed, another spec, nothing stored): the group is summed from scratch.

    The vectors needed are summed in one :func:`group_sums` pass; float64 sums make the value equal to a full
    recompute up to the order of additions (~1e-15 relative).

    Args:
        df: rows with ``id_col`` (unique), the group columns, ``watermark_col`` (an integer that only grows for new
            rows, e.g. ``round``; None: only exact reuse or a full recompute) and ``vector_col`` / ``spec_col``.
        stored: group key (:func:`group_name`) → stored sums of this scope; others are ignored.
        group_cols, vector_col, spec_col, spec_id, q, fanout: as in :func:`gradient_diversity`.
        driver_rows: at most this many rows to sum are collected and summed on the driver (one scan, no Python
            workers: a new round's rows are few); more go through :func:`group_sums`.
    """
    from pyspark.sql import functions as F

    cols = _as_cols(group_cols)
    scope = scope_name(cols)
    parts, specs = _hash_parts(df, cols, id_col, watermark_col, spec_col)
    plan: dict[str, str] = {}
    since: dict[tuple, int | None] = {}  # groups to sum: rows with watermark > value (None: every row)
    base: dict[tuple, StoredSums] = {}
    for key, p in parts.items():
        g = group_name(key)
        old = stored.get(g)
        same_spec = old is not None and (specs[key] == {old.spec_id} if spec_col else old.spec_id == (spec_id or ""))
        if old is not None and old.scope == scope and same_spec:
            if _combine(p, None) == (old.n, old.ids_hash):
                plan[g], base[key] = "reused", old
                continue
            if watermark_col and old.through is not None and _combine(p, old.through) == (old.n, old.ids_hash):
                plan[g], base[key], since[key] = "added", old, old.through
                continue
        plan[g], since[key] = "full", None
    new = GroupSums(cols)
    rows_summed = sum(
        cnt for key, s in since.items() for wm, cnt, *_ in parts[key] if s is None or (wm is not None and wm > s)
    )
    if since:
        wm = F.coalesce(df[watermark_col].cast("long"), F.lit(-(2**62))) if watermark_col else None
        if len(since) == len(parts) and all(s is None for s in since.values()):
            picked = df  # every group from scratch: the plain scan keeps the direct parquet read
        elif not cols:  # a plain comparison, so the scan skips files / row groups of older rounds (pushdown)
            picked = df.where(F.col(watermark_col) > F.lit(since[()]))
        else:
            plan_df = df.sparkSession.createDataFrame(  # per group: sum the rows with watermark >= __since
                [tuple(key) + (-(2**62) if s is None else s + 1,) for key, s in since.items()],
                df.select(*cols).schema.add("__since", "long"),
            )
            cond = F.lit(True)
            for c in cols:
                cond = cond & df[c].eqNullSafe(plan_df[c])
            src = df
            if all(s is not None for s in since.values()):  # pushdown: no group needs rows below the oldest mark
                src = df.where(F.col(watermark_col) > F.lit(min(since.values())))
            picked = src.join(F.broadcast(plan_df), cond, "inner")
            if wm is not None:
                picked = picked.where(wm >= F.col("__since"))
            picked = picked.select(*[df[c] for c in cols], df[vector_col], *([df[spec_col]] if spec_col else []))
        if rows_summed and rows_summed <= driver_rows:
            new = _driver_sums(picked, cols, vector_col, spec_col, spec_id)
        elif rows_summed:
            new = group_sums(picked, cols, vector_col=vector_col, spec_col=spec_col, spec_id=spec_id, fanout=fanout)
    sums = GroupSums(cols)
    for key in parts:
        old = base.get(key)
        s = new.sums.get(key)
        spec = new.spec_ids.get(key, old.spec_id if old is not None else spec_id)
        if old is not None and spec_col is not None and key in new.spec_ids and new.spec_ids[key] != old.spec_id:
            _raise_mixed(scope, key, _sorted_specs([old.spec_id, new.spec_ids[key]]), spec_col)
        total = old.sums + s if old is not None and s is not None else (old.sums if old is not None else s)
        if total is None:
            continue
        sums.sums[key], sums.spec_ids[key] = total, spec
    records: dict[str, StoredSums] = {}
    for key, p in parts.items():
        g = group_name(key)
        if plan[g] == "reused" or key not in sums.sums:
            continue
        n, h = _combine(p, None)
        if n != sums.sums[key].n:
            raise RuntimeError(f"group {g}: summed {sums.sums[key].n} rows but the ids count {n} (rows changed?)")
        spec = sums.spec_ids[key]
        records[g] = StoredSums(scope, g, spec or "", h, _max_watermark(p) if watermark_col else None, sums.sums[key])
    res = diversity_from_sums(sums, q=q)
    return IncrementalResult(res, records, plan, rows_summed)


def embed_frame(
    df,
    text_col: str = "text",
    *,
    out_col: str = "vector",
    model: str = "builtin:minilm",
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
):
    """Append ``out_col`` (array<float>, unit sentence embeddings of ``text_col``) with ``mapInPandas``."""
    from prismatic.embeddings import embed_partitions, embedding_schema

    if text_col not in df.columns:
        raise ValueError(f"text column {text_col!r} is not in the DataFrame (columns: {df.columns})")
    fn = embed_partitions(text_col, out_col, model=model, device=device, batch_size=batch_size, max_tokens=max_tokens)
    return df.mapInPandas(fn, embedding_schema(df.schema, out_col))


def embedding_diversity(
    df,
    group_cols: str | Sequence[str] | None = None,
    *,
    text_col: str = "text",
    model: str = "builtin:minilm",
    device: str = "auto",
    batch_size: int = 64,
    max_tokens: int | None = None,
    q: float = 1.0,
    fanout: int = 32,
) -> DiversityResult:
    """Embedding Vendi per group: embed ``text_col`` (cosine kernel of unit sentence embeddings), then the d × d path.

    This is the Vendi score of https://arxiv.org/abs/2210.02410 with an all-MiniLM-L6-v2 kernel by default; rows carry
    ``spec_id = embedding:<model>``. Metrics: ``emb_vendi`` (+ ``emb_vendi_q<q>``), ``emb_mean_cosine``.
    """
    cols = _as_cols(group_cols)
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"group column {c!r} is not in the DataFrame (columns: {df.columns})")
    vec = f"{_P}emb"
    embedded = embed_frame(
        df.select(*cols, text_col),
        text_col,
        out_col=vec,
        model=model,
        device=device,
        batch_size=batch_size,
        max_tokens=max_tokens,
    ).drop(text_col)
    return gradient_diversity(
        embedded,
        cols,
        vector_col=vec,
        spec_col=None,
        spec_id=embedding_spec_id(model),
        q=q,
        metric_prefix=EMB_VENDI,
        cosine_metric=EMB_MEAN_COSINE,
        fanout=fanout,
    )


def _ngram_udf(n: int):
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import ArrayType, StringType

    @pandas_udf(ArrayType(StringType(), False))
    def text_ngrams(texts: pd.Series) -> pd.Series:
        out = []
        for t in texts:
            if not isinstance(t, str):
                raise ValueError("null text: n-gram baselines need a string in every row (filter nulls first)")
            out.append([_NGRAM_SEP.join(g) for g in ngrams(tokenize(t), n)])
        return pd.Series(out, dtype=object)

    return text_ngrams


def text_diversity(
    df,
    group_cols: str | Sequence[str] | None = None,
    *,
    text_col: str = "text",
    n: int = 2,
) -> pd.DataFrame:
    """n-gram entropy and distinct-n per group, counted with Spark.

    Texts are tokenized with :func:`prismatic.vendi.tokenize` (in a pandas UDF, so Spark and the pure functions agree);
    n-grams are counted per (group, n-gram); then per group T = Σ c, U = number of distinct n-grams and
    entropy = log T − Σ c log c / T (nats), distinct-n = U / T. Only per-group scalars reach the driver.

    Args:
        df: Spark DataFrame with ``text_col`` (strings; nulls raise) and the group columns.
        group_cols: grouping columns (none: one group ``all``).
        text_col: text column.
        n: n-gram order.

    Returns:
        rows ``scope, group, metric, value, n, spec_id`` with metrics ``ngram_entropy_<n>`` and ``distinct_<n>``;
        ``n`` is the number of texts; ``spec_id`` is ``text``. A group with no n-gram has NaN values.
    """
    from pyspark.sql import functions as F

    cols = _as_cols(group_cols)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n-gram order must be an integer >= 1, got {n=}")
    for c in [*cols, text_col]:
        if c not in df.columns:
            raise ValueError(f"column {c!r} is not in the DataFrame (columns: {df.columns})")
    ng, cnt = f"{_P}ngram", f"{_P}c"
    per_ngram = (
        df.select(*cols, F.explode(_ngram_udf(n)(F.col(text_col))).alias(ng))
        .groupBy(*cols, ng)
        .agg(F.count(F.lit(1)).alias(cnt))
    )
    stats = per_ngram.groupBy(*cols).agg(
        F.sum(cnt).alias("total"),
        F.count(F.lit(1)).alias("unique"),
        F.sum(F.col(cnt) * F.log(F.col(cnt))).alias("clogc"),
    )
    texts = df.groupBy(*cols).agg(F.count(F.lit(1)).alias("texts"))
    by_key = {tuple(r[c] for c in cols): r for r in stats.collect()}
    scope = scope_name(cols)
    ent_name, dist_name = ngram_metrics(n)
    rows: list[dict] = []
    for r in texts.collect():
        key = tuple(r[c] for c in cols)
        s = by_key.get(key)
        if s is None or not s["total"]:
            ent = dist = math.nan
        else:
            total = float(s["total"])
            ent = math.log(total) - float(s["clogc"]) / total
            dist = s["unique"] / total
        rows += _rows(scope, key, r["texts"], TEXT_SPEC_ID, {ent_name: ent, dist_name: dist})
    return _frame(rows)


def diversity_report(
    df,
    cfg=None,
    group_cols: str | Sequence[str] | None = None,
    *,
    vector_col: str | None = "vector",
    text_col: str | None = None,
    spec_col: str | None = "spec_id",
    embedding: bool = True,
) -> pd.DataFrame:
    """All metrics the input allows, as one frame of rows ``scope, group, metric, value, n, spec_id``.

    G-Vendi and gradient mean cosine when ``vector_col`` is given; n-gram entropy, distinct-n and (with
    ``embedding``) embedding Vendi when ``text_col`` is given. Settings come from a ``DiversityConfig``.
    """
    from prismatic.config import DiversityConfig

    cfg = cfg or DiversityConfig()
    if vector_col is None and text_col is None:
        raise ValueError("nothing to measure: pass vector_col and/or text_col")
    parts: list[pd.DataFrame] = []
    if vector_col is not None:
        parts.append(
            gradient_diversity(
                df, group_cols, vector_col=vector_col, spec_col=spec_col, q=cfg.q, fanout=cfg.tree_fanout
            ).rows
        )
    if text_col is not None:
        parts.append(text_diversity(df, group_cols, text_col=text_col, n=cfg.ngram))
        if embedding:
            parts.append(
                embedding_diversity(
                    df,
                    group_cols,
                    text_col=text_col,
                    model=cfg.embedding_model,
                    device=cfg.embedding_device,
                    batch_size=cfg.embedding_batch_size,
                    max_tokens=cfg.embedding_max_tokens,
                    q=cfg.q,
                    fanout=cfg.tree_fanout,
                ).rows
            )
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
