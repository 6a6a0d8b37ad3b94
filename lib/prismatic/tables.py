"""Tables: names, schemas and one small interface over two Delta engines.

* ``delta-rs`` (embedded default): tables are Delta folders under ``<data_root>/tables``, committed with the
  ``deltalake`` package. Spark reads the *current snapshot* from the table's file list (never a plain
  ``spark.read.parquet(folder)``, which would also see files that a later commit removed). Spark outputs are
  written to a run-scoped staging folder and merged from a streaming Arrow reader, so memory stays bounded.
* ``delta-spark`` (Databricks, or a session with the Delta jars): Unity Catalog names ``catalog.schema.table``
  and Spark SQL ``MERGE INTO``. Its SQL is built by the pure functions at the bottom from validated
  identifiers only.

Every write is a MERGE on the table key: rows whose key is present are left alone (or updated where the
caller asks), so running a stage twice changes nothing, and a crash then a re-run gives the same table.
Upkeep (``vacuum``: compaction and removal of files no snapshot references) is per engine too; the writer lock,
run-owned staging folders and fault points live in :mod:`prismatic.upkeep`.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from prismatic.config import Settings, check_identifier
from prismatic.errors import PrismError, TableError
from prismatic.upkeep import DEFAULT_RETENTION_HOURS, fault_point, staging_dir

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")
VECTOR = pa.list_(pa.float32())


@dataclass(frozen=True)
class TableDef:
    """A table: logical name, key columns, Arrow schema, partition columns, what it holds."""

    name: str
    key: tuple[str, ...]
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    doc: str = ""
    # columns that carry run metadata (timestamps) and may differ between two equivalent runs
    volatile: tuple[str, ...] = field(default=())


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=True) for n, t in fields])


TABLES: dict[str, TableDef] = {
    t.name: t
    for t in [
        TableDef(
            "candidates_bronze",
            ("source", "file", "line"),
            _schema(
                ("source", pa.string()),
                ("file", pa.string()),
                ("line", pa.int64()),
                ("batch_id", pa.string()),
                ("format", pa.string()),
                ("payload", pa.string()),
                ("status", pa.string()),
                ("ingested_at", TS),
                ("payload_truncated", pa.bool_()),
            ),
            doc="every row read, as read (payload, cut at ingest.payload_chars: payload_truncated), with its ingest"
            " status (valid / quarantined)",
            volatile=("ingested_at",),
        ),
        TableDef(
            "samples",
            ("sample_id",),
            _schema(
                ("sample_id", pa.string()),
                ("task", pa.string()),
                ("source", pa.string()),
                ("prompt", pa.string()),
                ("completion", pa.string()),
                ("messages", pa.string()),
                ("label", pa.string()),
                ("origin", pa.string()),
                ("round", pa.int32()),
                ("bucket", pa.int32()),
                ("file", pa.string()),
                ("line", pa.int64()),
                ("batch_id", pa.string()),
                ("created_at", TS),
            ),
            partition_by=("task",),
            doc="the pool: one row per distinct normalized (task, prompt, completion)",
            volatile=("created_at",),
        ),
        TableDef(
            "quarantine",
            ("stage", "source", "file", "line", "item_id"),
            _schema(
                ("stage", pa.string()),
                ("source", pa.string()),
                ("file", pa.string()),
                ("line", pa.int64()),
                ("item_id", pa.string()),
                ("reason", pa.string()),
                ("detail", pa.string()),
                ("payload", pa.string()),
                ("batch_id", pa.string()),
                ("created_at", TS),
            ),
            doc="rows a stage could not use, with a reason code and the (truncated) raw payload",
            volatile=("created_at",),
        ),
        TableDef(
            "duplicates",
            ("sample_id",),
            _schema(
                ("sample_id", pa.string()),
                ("kept_id", pa.string()),
                ("kind", pa.string()),
                ("similarity", pa.float64()),
                ("task", pa.string()),
                ("created_at", TS),
            ),
            doc="samples removed from the pool by dedup: kept_id is the smallest sample_id of the group",
            volatile=("created_at",),
        ),
        TableDef(
            "projection_specs",
            ("spec_id",),
            _schema(
                ("spec_id", pa.string()),
                ("spec_json", pa.string()),
                ("model_id", pa.string()),
                ("weights_sha256", pa.string()),
                ("kind", pa.string()),
                ("d", pa.int32()),
                ("seed", pa.int64()),
                ("created_at", TS),
            ),
            volatile=("created_at",),
        ),
        TableDef(
            "gradients",
            ("sample_id", "spec_id"),
            _schema(
                ("sample_id", pa.string()),
                ("spec_id", pa.string()),
                ("vector", VECTOR),
                ("loss", pa.float64()),
                ("n_tokens", pa.int32()),
                ("truncated", pa.bool_()),
                ("created_at", TS),
            ),
            volatile=("created_at",),
        ),
        TableDef(
            "diversity",
            ("scope", "group_key", "metric", "spec_id", "samples_version"),
            _schema(
                ("scope", pa.string()),
                ("group_key", pa.string()),
                ("metric", pa.string()),
                ("spec_id", pa.string()),
                ("samples_version", pa.int64()),
                ("value", pa.float64()),
                ("n", pa.int64()),
                ("created_at", TS),
            ),
            volatile=("created_at",),
        ),
        TableDef(
            "diversity_sums",
            ("scope", "group_key", "spec_id", "ids_hash"),
            _schema(
                ("scope", pa.string()),
                ("group_key", pa.string()),
                ("spec_id", pa.string()),
                ("ids_hash", pa.string()),
                ("n", pa.int64()),
                ("d", pa.int64()),
                ("through", pa.int64()),
                ("vector_sum", pa.binary()),
                ("cov_upper", pa.binary()),
                ("created_at", TS),
            ),
            doc="per group and spec the G-Vendi covariance sums (float64 Σg and the upper triangle of Σggᵀ, as in"
            " CovarianceSums.to_record) of the rows whose sample ids hash to ids_hash (through: their largest"
            " round); `prism diversity` adds only the rows not covered (diversity.incremental_gradient_diversity)",
            volatile=("created_at",),
        ),
        TableDef(
            "clusters",
            ("round", "task", "cluster_id"),
            _schema(
                ("round", pa.int32()),
                ("cluster_id", pa.int32()),
                ("spec_id", pa.string()),
                ("centroid", VECTOR),
                ("size", pa.int64()),
                ("sparse", pa.bool_()),
                ("created_at", TS),
                ("task", pa.string()),
            ),
            doc="spherical k-means of one task's pool for one round (cluster ids are per round and task)",
            volatile=("created_at",),
        ),
        TableDef(
            "assignments",
            ("round", "task", "sample_id"),
            _schema(
                ("round", pa.int32()),
                ("sample_id", pa.string()),
                ("cluster_id", pa.int32()),
                ("cosine", pa.float64()),
                ("created_at", TS),
                ("task", pa.string()),
            ),
            volatile=("created_at",),
        ),
        TableDef(
            "synth_candidates",
            ("round", "candidate_id"),
            _schema(
                ("round", pa.int32()),
                ("candidate_id", pa.string()),
                ("task", pa.string()),
                ("prompt", pa.string()),
                ("completion", pa.string()),
                ("generator", pa.string()),
                ("exemplar_ids", pa.list_(pa.string())),
                ("answers", pa.list_(pa.string())),
                ("status", pa.string()),
                ("reason", pa.string()),
                ("detail", pa.string()),
                ("cluster_id", pa.int32()),
                ("tokens", pa.int64()),
                ("created_at", TS),
            ),
            volatile=("created_at",),
        ),
        TableDef(
            "rounds",
            ("round", "task"),
            _schema(
                ("round", pa.int32()),
                ("status", pa.string()),
                ("mlflow_run_id", pa.string()),
                ("versions_read", pa.string()),
                ("versions_written", pa.string()),
                ("counts", pa.string()),
                ("gvendi_before", pa.float64()),
                ("gvendi_after", pa.float64()),
                ("created_at", TS),
                ("task", pa.string()),
                ("detail", pa.string()),
                ("pool_before", pa.int64()),
                ("pool_after", pa.int64()),
                ("emb_vendi_before", pa.float64()),
                ("emb_vendi_after", pa.float64()),
                ("candidates", pa.int64()),
                ("accepted", pa.int64()),
                ("accepted_samples", pa.int64()),
                ("tokens", pa.int64()),
                ("student_id", pa.string()),
                ("id_accuracy", pa.float64()),
                ("ood_accuracy", pa.float64()),
                ("accuracies", pa.string()),
            ),
            doc="one synthesis round of one task (round 0: the seed pool): status, G-Vendi and embedding Vendi of the"
            " task's pool before / after, counts, and the accuracies of the student trained on it",
            volatile=("created_at",),
        ),
        TableDef(
            "eval_results",
            ("run_id", "benchmark", "eval_method"),
            _schema(
                ("run_id", pa.string()),
                ("benchmark", pa.string()),
                ("model", pa.string()),
                ("split", pa.string()),
                ("accuracy", pa.float64()),
                ("n", pa.int64()),
                ("created_at", TS),
                ("student_kind", pa.string()),
                ("task", pa.string()),
                ("labels", pa.string()),
                ("n_correct", pa.int64()),
                ("n_unparsed", pa.int64()),
                ("subset_id", pa.string()),
                ("study_id", pa.string()),
                ("mlflow_run_id", pa.string()),
                ("lineage", pa.string()),
                ("eval_method", pa.string()),  # loglik | generate | classifier; null on rows written before it
                ("balanced_accuracy", pa.float64()),  # NLI: mean recall per gold label; null for math
                ("model_uri", pa.string()),  # models:/NAME/VERSION of a registered student, else null
                ("model_version", pa.string()),
            ),
            doc="accuracy of a student (run_id = student id) on a benchmark (name@sample when sampled) by a method",
            volatile=("created_at", "mlflow_run_id"),
        ),
        TableDef(
            "study",
            ("study_id", "subset_id", "metric"),
            _schema(
                ("study_id", pa.string()),
                ("subset_id", pa.string()),
                ("metric", pa.string()),
                ("value", pa.float64()),
                ("created_at", TS),
                ("kind", pa.string()),
                ("n", pa.int64()),
                ("ci_low", pa.float64()),
                ("ci_high", pa.float64()),
                ("p_value", pa.float64()),
                ("detail", pa.string()),
                ("spec_id", pa.string()),
                ("mlflow_run_id", pa.string()),
            ),
            doc="diversity-vs-OOD study: per subset its design, diversity metrics and accuracies; per metric"
            " (subset_id '*') Spearman rho against mean OOD accuracy with a bootstrap interval",
            volatile=("created_at", "mlflow_run_id"),
        ),
        TableDef(
            "guidance",
            ("arm", "seed"),
            _schema(
                ("arm", pa.string()),
                ("seed", pa.int32()),
                ("task", pa.string()),
                ("rounds", pa.int32()),
                ("budget_kind", pa.string()),
                ("budget", pa.int64()),
                ("tokens_used", pa.int64()),
                ("calls_used", pa.int64()),
                ("candidates", pa.int64()),
                ("accepted", pa.int64()),
                ("accepted_samples", pa.int64()),
                ("pool_before", pa.int64()),
                ("pool_after", pa.int64()),
                ("g_vendi_before", pa.float64()),
                ("g_vendi_after", pa.float64()),
                ("embedding_vendi_after", pa.float64()),
                ("id_accuracy", pa.float64()),
                ("ood_accuracy", pa.float64()),
                ("accuracies", pa.string()),
                ("student_id", pa.string()),
                ("data_root", pa.string()),
                ("mlflow_run_id", pa.string()),
                ("mlflow_parent_run_id", pa.string()),
                ("detail", pa.string()),
                ("finished_at", TS),
            ),
            doc="the equal-budget guidance experiment (`prism experiment guidance`): per arm and seed the budget"
            " used, what was accepted, G-Vendi / embedding Vendi of the grown pool and the student's ID / OOD"
            " accuracies (accuracies: JSON benchmark -> {split, accuracy, n})",
            volatile=("finished_at", "mlflow_run_id", "mlflow_parent_run_id", "data_root"),
        ),
    ]
}


def table_def(name: str) -> TableDef:
    if name not in TABLES:
        raise TableError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Select the schema's columns in order (missing ones as nulls) and cast to the schema's types."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else pc.cast(col, f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    out = pa.Table.from_arrays(cols, schema=schema)
    return out


def dedup_on_key(table: pa.Table, key: Iterable[str]) -> pa.Table:
    """Keep the first row of each key (a MERGE source must not hold one key twice)."""
    key = list(key)
    if table.num_rows == 0:
        return table
    idx = pa.array(range(table.num_rows), pa.int64())
    grouped = table.select(key).append_column("__i", idx).group_by(key, use_threads=False).aggregate([("__i", "min")])
    first = pc.sort_indices(grouped.column("__i_min"))
    return table.take(pc.take(grouped.column("__i_min"), first))


@dataclass
class MergeResult:
    table: str
    source_rows: int
    inserted: int
    updated: int
    version: int


@dataclass
class TableUpkeep:
    """What ``vacuum`` did to one table (or would do, in a dry run)."""

    table: str
    removed: list[str] = field(default_factory=list)  # files deleted (dry run: that would be), table-relative
    bytes: int | None = 0  # their size; None where the engine does not say (delta-spark)
    compacted: int = 0  # small files rewritten by compaction (dry run: candidates)
    written: int = 0  # files compaction wrote in their place
    version: int | None = None  # table version afterwards


def _literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"delete matches ints and strings only, got {value!r}")
    return str(int(value)) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


def delete_predicate(td: TableDef, match: Mapping[str, Any]) -> str:
    """The SQL predicate (delta-rs and Spark SQL alike) of a typed ``delete`` match; ``1 = 0`` for an empty list."""
    if not match:
        raise ValueError("delete needs at least one column to match (it never deletes a whole table)")
    columns = {f.name for f in td.schema}
    parts = []
    for col, value in match.items():
        if col not in columns:
            raise ValueError(f"table {td.name} has no column {col!r}")
        if isinstance(value, list | tuple | set | frozenset):
            values = sorted(value)
            parts.append(f"{col} IN ({', '.join(_literal(v) for v in values)})" if values else "1 = 0")
        else:
            parts.append(f"{col} = {_literal(value)}")
    return " AND ".join(parts)


class TableStore(ABC):
    """Read tables as Spark DataFrames, MERGE Arrow tables or Spark DataFrames into them by key."""

    engine: str = ""

    def __init__(self, settings: Settings, spark=None):
        self.settings = settings
        self._spark = spark

    @property
    def spark(self):
        if self._spark is None:
            from prismatic.spark import get_spark

            self._spark = get_spark(self.settings.spark)
        return self._spark

    @abstractmethod
    def qualified(self, name: str) -> str: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def read(self, name: str):
        """The current snapshot as a Spark DataFrame (an empty one with the schema if the table is new)."""

    @abstractmethod
    def read_arrow(self, name: str, columns: list[str] | None = None) -> pa.Table: ...

    @abstractmethod
    def merge(self, name: str, source: Any, update: bool = False, key: tuple[str, ...] | None = None) -> MergeResult:
        """MERGE ``source`` (Arrow table, pandas DataFrame or Spark DataFrame) into ``name`` on its key.

        Rows whose key exists are left alone unless ``update``; rows with a new key are inserted.
        """

    @abstractmethod
    def version(self, name: str) -> int | None: ...

    @abstractmethod
    def history(self, name: str, limit: int = 1) -> list[dict]: ...

    def delete(self, name: str, match: Mapping[str, Any]) -> int:
        """Delete the rows whose columns equal ``match``'s values (a list / set / tuple value: any of them);
        returns the number of rows deleted. Typed, never SQL text: columns are checked against the table's
        schema and values quoted here."""
        if not self.exists(name):
            return 0
        return self._delete_where(name, delete_predicate(table_def(name), match))

    @abstractmethod
    def _delete_where(self, name: str, predicate: str) -> int: ...

    @abstractmethod
    def vacuum(
        self, name: str, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False, compact: bool = True
    ) -> TableUpkeep:
        """Compact small files (unless ``dry_run`` or not ``compact``), then delete files the current snapshot
        does not reference that are older than ``retention_hours`` (never-committed files of killed writers too).
        """

    @staticmethod
    def names() -> list[str]:
        """Every table this store can hold (the TableDef registry), existing or not."""
        return list(TABLES)

    def versions(self, names: Iterable[str] | None = None) -> dict[str, int | None]:
        return {n: self.version(n) for n in (names or TABLES)}

    def count(self, name: str) -> int:
        return self.read_arrow(name, columns=list(table_def(name).key[:1])).num_rows if self.exists(name) else 0

    def register_views(self) -> list[str]:
        """Register every existing table (and the ``pool`` view) as a Spark temp view under its short name."""
        names = []
        for name in TABLES:
            if self.exists(name):
                self.read(name).createOrReplaceTempView(name)
                names.append(name)
        if "samples" in names:
            dup = "LEFT ANTI JOIN duplicates d ON s.sample_id = d.sample_id" if "duplicates" in names else ""
            self.spark.sql(f"CREATE OR REPLACE TEMP VIEW pool AS SELECT s.* FROM samples s {dup}")
            names.append("pool")
        return names

    def pool(self):
        """Samples that dedup did not remove (the pool every later stage reads)."""
        samples = self.read("samples")
        if self.exists("duplicates"):
            dups = self.read("duplicates").select("sample_id")
            return samples.join(dups, on="sample_id", how="left_anti")
        return samples


def _as_arrow(source: Any) -> pa.Table | None:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source])
    try:
        import pandas as pd

        if isinstance(source, pd.DataFrame):
            return pa.Table.from_pandas(source, preserve_index=False)
    except ImportError:  # pragma: no cover
        pass
    return None


class DeltaRsStore(TableStore):
    """Embedded engine: delta-rs commits under ``<data_root>/tables``, Spark reads current snapshots."""

    engine = "delta-rs"

    def __init__(self, settings: Settings, spark=None):
        super().__init__(settings, spark)
        self.root = settings.root / "tables"

    def qualified(self, name: str) -> str:
        table_def(name)
        return f"{self.settings.storage.table_prefix}{name}"

    def path(self, name: str) -> Path:
        return self.root / self.qualified(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / "_delta_log").is_dir()

    def _table(self, name: str):
        from deltalake import DeltaTable

        return DeltaTable(str(self.path(name)))

    def _ensure(self, name: str):
        from deltalake import DeltaTable

        td = table_def(name)
        if not self.exists(name):
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                DeltaTable.create(
                    str(self.path(name)),
                    schema=td.schema,
                    partition_by=list(td.partition_by) or None,
                    mode="ignore",
                    name=name,
                    description=td.doc or None,
                )
            except Exception as e:  # noqa: BLE001 - a concurrent create is fine
                if not self.exists(name):
                    raise TableError(f"cannot create table {name} at {self.path(name)}: {e}") from e
        dt = self._table(name)
        have = {f.name for f in dt.schema().fields}
        missing = [f for f in td.schema if f.name not in have]
        if missing:  # a table written before these columns existed: add them (older rows read them as null)
            from deltalake.schema import Schema

            dt.alter.add_columns(Schema.from_arrow(pa.schema(missing)).fields)
            dt = self._table(name)
        return dt

    def read_arrow(self, name: str, columns: list[str] | None = None) -> pa.Table:
        td = table_def(name)
        if not self.exists(name):
            schema = td.schema if columns is None else pa.schema([td.schema.field(c) for c in columns])
            return schema.empty_table()
        dataset = self._table(name).to_pyarrow_dataset()
        return dataset.to_table(columns=columns)

    def read(self, name: str):
        from pyspark.sql.pandas.types import from_arrow_schema

        td = table_def(name)
        spark_schema = from_arrow_schema(td.schema)
        if not self.exists(name):
            return self.spark.createDataFrame([], spark_schema)
        uris = self._table(name).file_uris()
        if not uris:
            return self.spark.createDataFrame([], spark_schema)
        # mergeSchema: files written before a column was added lack it (read as null)
        df = self.spark.read.option("basePath", str(self.path(name))).option("mergeSchema", "true").parquet(*uris)
        from pyspark.sql import functions as F

        return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in spark_schema.fields])

    def _reader_from_spark(self, df, td: TableDef, key: tuple[str, ...], stage_dir: Path) -> pa.RecordBatchReader:
        import pyarrow.dataset as ds

        df.dropDuplicates(list(key)).write.mode("overwrite").parquet(str(stage_dir))
        dataset = ds.dataset(str(stage_dir), format="parquet")
        scanner = dataset.scanner(batch_size=65_536)

        def batches() -> Iterator[pa.RecordBatch]:
            for b in scanner.to_batches():
                if b.num_rows:
                    yield from conform(pa.Table.from_batches([b]), td.schema).to_batches()

        return pa.RecordBatchReader.from_batches(td.schema, batches())

    def merge(self, name: str, source: Any, update: bool = False, key: tuple[str, ...] | None = None) -> MergeResult:
        td = table_def(name)
        key = tuple(key or td.key)
        dt = self._ensure(name)
        stage_dir = None
        arrow = _as_arrow(source)
        if arrow is not None:
            src: Any = conform(dedup_on_key(arrow, key), td.schema)
            if src.num_rows == 0:
                return MergeResult(name, 0, 0, 0, dt.version())
        else:  # a Spark DataFrame: stage as parquet, merge from a streaming reader
            stage_dir = staging_dir(self.settings.root, f"merge-{name}")
            src = self._reader_from_spark(source, td, key, stage_dir)
        try:
            fault_point(f"{name}:before_commit")
            predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in key)
            merger = dt.merge(source=src, predicate=predicate, source_alias="s", target_alias="t")
            if update:
                merger = merger.when_matched_update_all()
            metrics = merger.when_not_matched_insert_all().execute()
            fault_point(f"{name}:after_commit")
        finally:
            if stage_dir is not None:
                shutil.rmtree(stage_dir, ignore_errors=True)
        result = MergeResult(
            name,
            int(metrics.get("num_source_rows", 0)),
            int(metrics.get("num_target_rows_inserted", 0)),
            int(metrics.get("num_target_rows_updated", 0)),
            self._table(name).version(),
        )
        log.info(
            "merged %s: %d source rows, %d inserted, %d updated",
            name,
            result.source_rows,
            result.inserted,
            result.updated,
        )
        return result

    def _delete_where(self, name: str, predicate: str) -> int:
        metrics = self._table(name).delete(predicate)
        return int(metrics.get("num_deleted_rows", 0))

    def version(self, name: str) -> int | None:
        return self._table(name).version() if self.exists(name) else None

    def vacuum(
        self, name: str, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False, compact: bool = True
    ) -> TableUpkeep:
        dt = self._table(name)
        up = TableUpkeep(name)
        if compact and dry_run:
            up.compacted = _compactable(dt)
        elif compact:
            m = dt.optimize.compact()
            up.compacted, up.written = int(m.get("numFilesRemoved", 0)), int(m.get("numFilesAdded", 0))
            dt = self._table(name)
        base = self.path(name)
        # full: also files no log entry ever named (a writer killed before its commit); delta-rs keeps
        # tombstones of files already deleted, so only files still on disk count (and a no-op commits nothing)
        listed = dt.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=False, full=True)
        present = {}
        for f in listed:
            p = Path(f) if os.path.isabs(f) else base / f
            if p.is_file():
                present[p.relative_to(base).as_posix()] = p.stat().st_size
        if present and not dry_run:
            dt.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True)
        up.removed, up.bytes = sorted(present), sum(present.values())
        up.version = self._table(name).version()
        return up

    def history(self, name: str, limit: int = 1) -> list[dict]:
        if not self.exists(name):
            return []
        return list(self._table(name).history(limit))


def _compactable(dt) -> int:
    """Files that compaction would rewrite: in each partition, the files under the target size when there
    are at least two of them."""
    acts = pa.table(dt.get_add_actions(flatten=True)).to_pylist()  # an arro3 table: via the Arrow C interface
    target = int(dt.metadata().configuration.get("delta.targetFileSize", 100 * 1024 * 1024))
    small: dict[tuple, int] = {}
    for a in acts:
        if a["size_bytes"] < target:
            part = tuple(sorted((k, str(v)) for k, v in a.items() if k.startswith("partition.")))
            small[part] = small.get(part, 0) + 1
    return sum(n for n in small.values() if n > 1)


class DeltaSparkStore(TableStore):
    """Native Delta engine (Databricks / delta-spark): Unity Catalog names and Spark SQL MERGE."""

    engine = "delta-spark"

    def qualified(self, name: str) -> str:
        table_def(name)
        s = self.settings.storage
        return qualified_name(s.catalog, s.schema_name, f"{s.table_prefix}{name}")

    def _ensure(self, name: str) -> None:
        s = self.settings.storage
        self.spark.sql(create_schema_sql(s.catalog, s.schema_name))
        self.spark.sql(create_table_sql(self.qualified(name), table_def(name)))
        have = {c.lower() for c in self.spark.table(self.qualified(name)).columns}
        missing = [f for f in table_def(name).schema if f.name.lower() not in have]
        if missing:  # a table created before these columns existed
            self.spark.sql(add_columns_sql(self.qualified(name), missing))

    def exists(self, name: str) -> bool:
        return bool(self.spark.catalog.tableExists(self.qualified(name)))

    def read(self, name: str):
        if not self.exists(name):
            from pyspark.sql.pandas.types import from_arrow_schema

            return self.spark.createDataFrame([], from_arrow_schema(table_def(name).schema))
        return self.spark.table(self.qualified(name))

    def read_arrow(self, name: str, columns: list[str] | None = None) -> pa.Table:
        df = self.read(name)
        if columns:
            df = df.select(*columns)
        return df.toArrow()

    def merge(self, name: str, source: Any, update: bool = False, key: tuple[str, ...] | None = None) -> MergeResult:
        td = table_def(name)
        key = tuple(key or td.key)
        self._ensure(name)
        arrow = _as_arrow(source)
        if arrow is not None:
            arrow = conform(dedup_on_key(arrow, key), td.schema)
            if arrow.num_rows == 0:
                return MergeResult(name, 0, 0, 0, self.version(name) or 0)
            df = self.spark.createDataFrame(arrow.to_pandas())
        else:
            df = source.dropDuplicates(list(key))
        view = f"prism_src_{uuid.uuid4().hex[:12]}"
        df.createOrReplaceTempView(view)
        try:
            row = self.spark.sql(merge_sql(self.qualified(name), view, key, update)).collect()
        finally:
            self.spark.catalog.dropTempView(view)
        metrics = row[0].asDict() if row else {}
        return MergeResult(
            name,
            int(metrics.get("num_affected_rows", 0)),
            int(metrics.get("num_inserted_rows", 0)),
            int(metrics.get("num_updated_rows", 0)),
            self.version(name) or 0,
        )

    def _delete_where(self, name: str, predicate: str) -> int:
        row = self.spark.sql(f"DELETE FROM {self.qualified(name)} WHERE {predicate}").collect()
        return int(row[0][0]) if row else 0

    def version(self, name: str) -> int | None:
        h = self.history(name, 1)
        return int(h[0]["version"]) if h else None

    def vacuum(
        self, name: str, retention_hours: int = DEFAULT_RETENTION_HOURS, dry_run: bool = False, compact: bool = True
    ) -> TableUpkeep:
        q = self.qualified(name)
        check = self.spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled", "true")
        if retention_hours < DEFAULT_RETENTION_HOURS and str(check).lower() != "false":
            raise PrismError(
                f"VACUUM with --retention-hours {retention_hours} < {DEFAULT_RETENTION_HOURS} is refused by Delta's"
                " retention check",
                hint="keep the default, or set spark.databricks.delta.retentionDurationCheck"
                ".enabled=false on the cluster if no reader or writer can still need the older files",
            )
        up = TableUpkeep(name, bytes=None)
        if compact and not dry_run:
            rows = self.spark.sql(optimize_sql(q)).collect()
            m = rows[0]["metrics"] if rows else None
            if m is not None:
                up.compacted, up.written = int(m["numFilesRemoved"]), int(m["numFilesAdded"])
        up.removed = [str(r[0]) for r in self.spark.sql(vacuum_sql(q, retention_hours, dry_run=True)).collect()]
        if up.removed and not dry_run:
            self.spark.sql(vacuum_sql(q, retention_hours, dry_run=False)).collect()
        up.version = self.version(name)
        return up

    def history(self, name: str, limit: int = 1) -> list[dict]:
        if not self.exists(name):
            return []
        rows = self.spark.sql(describe_history_sql(self.qualified(name), limit)).collect()
        return [r.asDict() for r in rows]


# ---- SQL text for the delta-spark engine: only validated identifiers go in -------------------------------


def qualified_name(catalog: str | None, schema: str, table: str) -> str:
    parts = ([catalog] if catalog else []) + [schema, table]
    return ".".join(f"`{check_identifier(p, 'table name part')}`" for p in parts)


def create_schema_sql(catalog: str | None, schema: str) -> str:
    parts = ([catalog] if catalog else []) + [schema]
    return "CREATE SCHEMA IF NOT EXISTS " + ".".join(f"`{check_identifier(p, 'schema part')}`" for p in parts)


def _spark_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "STRING"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_int32(t):
        return "INT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_list(t):
        return f"ARRAY<{_spark_type(t.value_type)}>"
    raise TableError(f"no Spark SQL type for Arrow type {t}")


def create_table_sql(qualified: str, td: TableDef) -> str:
    cols = ", ".join(f"`{check_identifier(f.name, 'column')}` {_spark_type(f.type)}" for f in td.schema)
    part = ""
    if td.partition_by:
        part = " PARTITIONED BY (" + ", ".join(f"`{check_identifier(c, 'column')}`" for c in td.partition_by) + ")"
    return f"CREATE TABLE IF NOT EXISTS {qualified} ({cols}) USING DELTA{part}"


def add_columns_sql(qualified: str, fields: Iterable[pa.Field]) -> str:
    cols = ", ".join(f"`{check_identifier(f.name, 'column')}` {_spark_type(f.type)}" for f in fields)
    return f"ALTER TABLE {qualified} ADD COLUMNS ({cols})"


def merge_sql(target: str, source_view: str, key: Iterable[str], update: bool) -> str:
    check_identifier(source_view, "source view")
    on = " AND ".join(f"t.`{check_identifier(k, 'key column')}` = s.`{k}`" for k in key)
    matched = " WHEN MATCHED THEN UPDATE SET *" if update else ""
    return f"MERGE INTO {target} t USING `{source_view}` s ON {on}{matched} WHEN NOT MATCHED THEN INSERT *"


def describe_history_sql(qualified: str, limit: int) -> str:
    return f"DESCRIBE HISTORY {qualified} LIMIT {int(limit)}"


def optimize_sql(qualified: str) -> str:
    """Compaction of small files (Databricks / Delta ``OPTIMIZE``); ``qualified`` from :func:`qualified_name`."""
    return f"OPTIMIZE {qualified}"


def vacuum_sql(qualified: str, retention_hours: int, dry_run: bool = False) -> str:
    """``VACUUM`` keeping files that stopped being referenced less than ``retention_hours`` ago."""
    if isinstance(retention_hours, bool) or not isinstance(retention_hours, int) or retention_hours < 0:
        raise ValueError(f"retention_hours must be an int >= 0, got {retention_hours!r}")
    return f"VACUUM {qualified} RETAIN {retention_hours} HOURS" + (" DRY RUN" if dry_run else "")


def open_store(settings: Settings, spark=None) -> TableStore:
    """Pick the engine: ``auto`` uses delta-spark when the session has Delta, else delta-rs."""
    engine = settings.storage.engine
    if engine == "auto":
        if spark is None:
            from prismatic.spark import on_databricks

            engine = "delta-spark" if on_databricks() else "delta-rs"
        else:
            from prismatic.spark import session_has_delta

            engine = "delta-spark" if session_has_delta(spark) else "delta-rs"
    log.info("table engine: %s", engine)
    if engine == "delta-spark":
        from prismatic.spark import require_delta

        require_delta(spark)  # one clear error, not a Py4JJavaError at the first CREATE TABLE
        return DeltaSparkStore(settings, spark)
    return DeltaRsStore(settings, spark)
