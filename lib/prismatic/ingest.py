"""Ingest: files (JSON Lines, JSON, Parquet, CSV; gzip for the JSON kinds; files, folders, globs) -> bronze, samples,
quarantine.

Two phases, so that **a run commits all of its files or none of them**:

1. *Stage*: every input file is read to its end into its own staging folder. :mod:`prismatic.readers` turns each row
   into a record or a per-row reason (bad bytes, depth, size, repeated keys, ...); :func:`validate_row` maps a record
   to sample fields or a reason (missing or mistyped fields, NUL, lone surrogates, blank or invisible-only text, ...).
   One bad row never costs another: it becomes a quarantine row with its own reason.
2. *Commit*: only when every file was read to its end are they merged, consecutive files of up to
   ``ingest.batch_rows`` rows in one MERGE per table (so a folder of a thousand small part files costs a few
   commits, not thousands). A file that cannot be read at all
   (truncated gzip, corrupt Parquet footer, a broken UTF-16 file) is named, with every other such file, in one
   error, and nothing of the run is written. Merges are keyed (bronze on (source, file, line), samples on
   sample_id, quarantine on its key), so re-ingesting, or re-running after a crash during the commit, changes
   nothing.

Where files are parsed (``ingest.mode``): on the driver, one file after another (``driver``), or in Spark tasks
(``spark``; ``auto`` picks it from ``ingest.spark_min_bytes`` of input). In Spark the driver only plans and commits:
a task per file, per byte range of ``ingest.split_bytes`` of a larger UTF-8 JSON Lines file, or per row group of a
larger Parquet file (CSV, JSON documents, gzip and UTF-16 / UTF-32 files stay whole). A pre-pass job moves each byte
range to line starts (a range owns the lines that *start* in it, so the line straddling its end is its own) and
counts its line ends, which numbers every range's first line exactly. The tasks parse and validate with the same
code as the driver, write their rows to the run's staging folder and return their counts; the driver checks them
(lines read per range = line ends counted; rows read = valid + quarantined = staged bronze rows, per file) and
commits exactly as above. The staging folder must be on storage the tasks share with the driver (the data root).

A file edited in place (same source and path, other bytes: its batch id is a hash of its content) is reported as
changed; its rows in ``candidates_bronze`` and its ingest rows in ``quarantine`` are replaced by the new read (lines
past the new end are removed); samples from the earlier version stay in the pool, which only grows.

Conservation is checked per file: ``rows read = new samples + duplicates (of the pool, of an earlier file of the
run, or within the file) + quarantined``; and for the run: the growth of ``samples`` = the rows the MERGE inserted
= the files' new samples. Payloads are kept in ``candidates_bronze`` and ``quarantine`` up to ``ingest.payload_chars``
characters; a longer one is cut and flagged (bronze ``payload_truncated``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prismatic.assets import sha256_file
from prismatic.config import ColumnMap, IngestConfig, NormalizeConfig, Settings
from prismatic.errors import ConservationError, InputError
from prismatic.normalize import has_visible_text
from prismatic.normalize import sample_id as make_sample_id
from prismatic.readers import (
    FORMATS,
    Bad,
    RecordReader,
    count_line_ends,
    detect_format,
    find_inputs,
    has_surrogates,
    inspect_json,
    line_start,
    loads,
    sniff_encoding,
)
from prismatic.tables import TABLES, TableStore, conform
from prismatic.upkeep import fault_point, staging_dir

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "TASKS", "Bad", "FileReport", "IngestReport", "detect_format", "ingest", "resolve_inputs",
           "validate_row"]  # fmt: skip

TASKS = ("math", "nli", "generic")
# sample_id normalization is fixed (not the dedup settings) so that ids stay stable when dedup is re-tuned
SAMPLE_ID_NORMALIZATION = NormalizeConfig(nfkc=True, lowercase=False, collapse_whitespace=True)
CHAT_ROLES = {"system", "user", "assistant"}
STAGING_ROWS = 50_000
ROW_CALLBACK_EVERY = 10_000
TASKS_PER_SLOT = 4  # Spark ingest: tasks per task slot at most (balance against per-task start-up)


@dataclass
class FileReport:
    """One file's counts (``rows_read = new_samples + duplicates + quarantined``) and how it was read."""

    file: str
    format: str
    rows_read: int = 0
    new_samples: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    encoding: str = "utf-8"
    layout: str = ""
    blank_lines: int = 0
    payloads_cut: int = 0
    changed: bool = False
    stale_rows: int = 0

    def check(self) -> None:
        if self.rows_read != self.new_samples + self.duplicates + self.quarantined:
            raise ConservationError(
                f"{self.file}: rows read {self.rows_read} != new {self.new_samples} + duplicates {self.duplicates}"
                f" + quarantined {self.quarantined}"
            )

    def notes(self) -> list[str]:
        """Lines for the user about this file beyond its counts (empty, decoded, changed, payloads cut)."""
        name, out = Path(self.file).name, []
        if self.rows_read == 0:
            blanks = f" ({self.blank_lines} blank lines)" if self.blank_lines else ""
            out.append(f"{name}: empty, no rows{blanks}")
        if self.encoding != "utf-8":
            out.append(f"{name}: decoded from {self.encoding}")
        if self.layout and self.layout != self.format:
            out.append(f"{name}: read as {self.layout}")
        if self.payloads_cut:
            out.append(
                f"{name}: {self.payloads_cut} payloads longer than ingest.payload_chars were cut in"
                " candidates_bronze (payload_truncated = true)"
            )
        if self.changed:
            out.append(
                f"{name}: changed since it was last ingested; its candidates_bronze and quarantine rows were"
                f" replaced ({self.stale_rows} lines past its new end removed); samples of the earlier version"
                " stay in the pool"
            )
        return out


@dataclass
class IngestReport:
    source: str
    task: str
    files: list[FileReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): files in folders / globs not read

    def total(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files)

    @property
    def reasons(self) -> Counter:
        c: Counter = Counter()
        for f in self.files:
            c.update(f.reasons)
        return c

    def summary(self) -> str:
        return (
            f"rows read {self.total('rows_read')} = new samples {self.total('new_samples')}"
            f" + duplicates {self.total('duplicates')} + quarantined {self.total('quarantined')}"
        )

    def rows(self) -> list[dict]:
        """One row per file read (``--format json`` / ``csv``): its counts and quarantine reasons."""
        return [
            {
                "source": self.source,
                "task": self.task,
                "file": f.file,
                "format": f.format,
                "rows_read": f.rows_read,
                "new_samples": f.new_samples,
                "duplicates": f.duplicates,
                "quarantined": f.quarantined,
                "reasons": dict(f.reasons),
            }
            for f in self.files
        ]

    def notes(self) -> list[str]:
        """Everything the user should see besides the counts: skipped files, then each file's notes."""
        out = []
        hidden = [p for p, why in self.skipped if why.startswith("hidden")]
        if hidden:
            out.append(f"skipped {len(hidden)} hidden files (names starting with . or _)")
        out += [f"skipped {p}: {why}" for p, why in self.skipped if not why.startswith("hidden")]
        for f in self.files:
            out += f.notes()
        if self.files and self.total("rows_read") == 0:
            out.append("no rows were read: every input is empty")
        return out


def resolve_inputs(paths: list[str]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursive) and globs into a sorted list of (file, format); see
    :func:`prismatic.readers.find_inputs` (which also lists the files it skipped)."""
    return find_inputs(paths).files


# ---- validation ----------------------------------------------------------------------------------------------


def _check_text(value: str, name: str) -> str:
    if "\x00" in value:
        raise Bad("nul_char", f"{name!r} holds a NUL character (U+0000)")
    if has_surrogates(value):
        raise Bad("lone_surrogate", f"{name!r} holds a lone surrogate (U+D800-U+DFFF), which is not a character")
    return value


def _check_visible(values: dict[str, str]) -> None:
    for name, value in values.items():
        if not value.strip():
            raise Bad("empty_text", f"{name} is empty")
    for name, value in values.items():
        if not has_visible_text(value):
            raise Bad("invisible_text", f"{name} holds only invisible characters (zero-width, format, control)")


def _text_field(row: dict, col: str, name: str) -> str:
    if col not in row or row[col] is None:
        raise Bad("missing_field", f"no {name!r} field (column {col!r})")
    v = row[col]
    if not isinstance(v, str):
        raise Bad("wrong_type", f"{name!r} (column {col!r}) is {type(v).__name__}, not a string")
    return _check_text(v, name)


def _messages(raw: Any) -> list:
    msgs = raw
    if isinstance(msgs, str):
        try:
            msgs = loads(msgs)
        except (ValueError, RecursionError) as e:
            raise Bad("bad_messages", f"messages is a string but not JSON: {str(e)[:200]}") from None
        bad = inspect_json(msgs)
        if bad is not None:
            raise bad
    if hasattr(msgs, "tolist"):
        msgs = msgs.tolist()
    if not isinstance(msgs, list) or not msgs:
        raise Bad("bad_messages", "messages must be a non-empty list of {role, content}")
    return msgs


def _chat(row: dict, cols: ColumnMap) -> tuple[str, str, str]:
    clean = []
    for j, m in enumerate(_messages(row[cols.messages])):
        role = m.get("role") if isinstance(m, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise Bad("bad_messages", f"message {j} needs role in {sorted(CHAT_ROLES)} and string content")
        clean.append({"role": role, "content": _check_text(m["content"], f"message {j} content")})
    if clean[-1]["role"] != "assistant":
        raise Bad("bad_messages", "the last message must be the assistant's (the completion)")
    context = clean[:-1]
    if not any(m["role"] == "user" for m in context):
        raise Bad("bad_messages", "no user message before the assistant's")
    if len(context) == 1 or (len(context) == 2 and context[0]["role"] == "system"):
        prompt = context[-1]["content"]
    else:
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in context)
    return prompt, clean[-1]["content"], json.dumps(clean, ensure_ascii=False)


def validate_row(row: dict, task: str, cols: ColumnMap, cfg: IngestConfig) -> dict:
    """Map one parsed row to sample fields, or raise ``Bad`` with a reason code (see the README's reason table)."""
    messages = label = None
    if task == "nli":
        premise = _text_field(row, cols.premise, "premise")
        hypothesis = _text_field(row, cols.hypothesis, "hypothesis")
        raw_label = _text_field(row, cols.label, "label")
        label = raw_label.strip().lower()
        if label not in cfg.nli_labels:
            raise Bad("bad_label", f"label {raw_label[:100]!r} is not one of {cfg.nli_labels}")
        _check_visible({"premise": premise, "hypothesis": hypothesis})
        prompt = cfg.nli_prompt_template.format(premise=premise.strip(), hypothesis=hypothesis.strip())
        completion = label
    elif cols.messages in row and row[cols.messages] is not None:
        prompt, completion, messages = _chat(row, cols)
    else:
        prompt = _text_field(row, cols.prompt, "prompt")
        completion = _text_field(row, cols.completion, "completion")
    _check_visible({"prompt": prompt, "completion": completion})
    if len(prompt) + len(completion) > cfg.max_chars:
        raise Bad("too_long", f"{len(prompt) + len(completion)} characters > ingest.max_chars = {cfg.max_chars}")
    return {"prompt": prompt, "completion": completion, "messages": messages, "label": label}


def bucket_of(sid: str, buckets: int) -> int:
    return int(sid[:8], 16) % buckets


def batch_id_of(source: str, path: Path) -> str:
    """One version of one file under one source: sha256 of the source, the path and the file's bytes (16 hex)."""
    key = f"{source}\x1f{path}\x1f{sha256_file(path)}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ---- stage ---------------------------------------------------------------------------------------------------


class _Stager:
    """Buffers rows per table and writes them to staged parquet files of a bounded size."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.rows: dict[str, list[dict]] = {"candidates_bronze": [], "samples": [], "quarantine": []}
        self.writers: dict[str, pq.ParquetWriter] = {}

    def add(self, table: str, row: dict) -> None:
        buf = self.rows[table]
        buf.append(row)
        if len(buf) >= STAGING_ROWS:
            self.flush(table)

    def flush(self, table: str) -> None:
        buf = self.rows[table]
        if not buf:
            return
        schema = TABLES[table].schema
        t = conform(pa.Table.from_pylist(buf), schema)
        if table not in self.writers:
            self.writers[table] = pq.ParquetWriter(self.folder / f"{table}.parquet", schema)
        self.writers[table].write_table(t)
        buf.clear()

    def close(self) -> dict[str, Path]:
        for t in list(self.rows):
            self.flush(t)
        for w in self.writers.values():
            w.close()
        return {t: self.folder / f"{t}.parquet" for t in self.writers}


def _read_errors() -> tuple[type[BaseException], ...]:
    return (OSError, EOFError, zlib.error, pa.ArrowException, csv.Error, UnicodeError)


@dataclass
class Staged:
    """A file read to its end: its report, its staged parquet files per table, and its batch id."""

    report: FileReport
    folder: Path
    tables: dict[str, Path]
    valid: int
    batch: str


class _FileRows:
    """Turns one file's records into staged bronze / samples / quarantine rows and counts them."""

    def __init__(self, stager: _Stager, rep: FileReport, source: str, task: str, settings: Settings, batch: str):
        self.stager, self.rep, self.source, self.task, self.batch = stager, rep, source, task, batch
        self.cfg = settings.ingest
        self.cols = self.cfg.sources.get(source, self.cfg.columns)
        self.now = datetime.now(UTC)
        self.valid = 0

    def add(self, line: int, payload: str, obj: Any, bad: Bad | None) -> None:
        rep, cfg = self.rep, self.cfg
        rep.rows_read += 1
        fields: dict = {}
        if bad is None:
            try:
                fields = validate_row(obj, self.task, self.cols, cfg)
            except Bad as b:
                bad = b
            except Exception as e:  # noqa: BLE001 - a row the checks above did not foresee must not cost the file
                bad = Bad("unreadable_row", f"{type(e).__name__}: {str(e)[:300]}")
        cut = len(payload) > cfg.payload_chars
        rep.payloads_cut += cut
        common = {"source": self.source, "file": self.rep.file, "line": line, "batch_id": self.batch}
        self.stager.add("candidates_bronze", {
            **common, "format": rep.format, "payload": payload[: cfg.payload_chars], "payload_truncated": cut,
            "status": "quarantined" if bad else "valid", "ingested_at": self.now,
        })  # fmt: skip
        if bad is not None:
            rep.quarantined += 1
            rep.reasons[bad.reason] += 1
            self.stager.add("quarantine", {
                **common, "stage": "ingest", "item_id": "", "reason": bad.reason, "detail": bad.detail[:500],
                "payload": payload[: cfg.payload_chars], "created_at": self.now,
            })  # fmt: skip
            return
        self.valid += 1
        sid = make_sample_id(self.task, fields["prompt"], fields["completion"], SAMPLE_ID_NORMALIZATION)
        self.stager.add("samples", {
            **common, **fields, "sample_id": sid, "task": self.task, "origin": "seed", "round": 0,
            "bucket": bucket_of(sid, cfg.buckets), "created_at": self.now,
        })  # fmt: skip


def stage_file(
    path: Path,
    fmt: str,
    source: str,
    task: str,
    settings: Settings,
    on_rows: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> Staged:
    """Read one file to its end into a staging folder (nothing is written to the tables).

    Raises:
        InputError: the file cannot be read to its end (the message names it).
    """
    rep = FileReport(file=str(path), format=fmt)
    stage = staging_dir(settings.root, "ingest")  # run-owned: a killed run's folder is removed by the next run
    stage.mkdir(parents=True, exist_ok=True)
    try:
        batch = batch_id_of(source, path)
        stager = _Stager(stage)
        rows = _FileRows(stager, rep, source, task, settings, batch)
        reader = RecordReader(path, fmt, settings.ingest.max_row_chars)
        try:
            for record in reader:
                if limit is not None and rep.rows_read >= limit:
                    break
                rows.add(*record)
                if on_rows is not None and rep.rows_read % ROW_CALLBACK_EVERY == 0:
                    on_rows(ROW_CALLBACK_EVERY)
        except _read_errors() as e:
            raise InputError(f"cannot read {path} ({fmt}) after {rep.rows_read} rows: {e}") from e
        rep.encoding, rep.layout, rep.blank_lines = reader.encoding, reader.layout, reader.blank_lines
        tables = stager.close()
        if on_rows is not None:
            on_rows(rep.rows_read % ROW_CALLBACK_EVERY)
        return Staged(rep, stage, tables, rows.valid, batch)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


# ---- stage in Spark tasks ------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One Spark task's share of a file: all of it, a byte range of a JSON Lines file (line-aligned by the
    pre-pass, its lines numbered from ``first_line``), or Parquet row groups (rows numbered from ``first_line``)."""

    file: int  # index of the file in the run
    part: int  # index of the unit within its file
    path: str
    fmt: str
    span: tuple[int, int] | None = None
    row_groups: list[int] | None = None
    first_line: int = 1
    line_ends: int = 0  # pre-pass: line ends in the span


def plan_units(files: list[tuple[Path, str]], split_bytes: int, limit: int | None) -> list[Unit]:
    """Split the run's files into Spark tasks: a UTF-8 JSON Lines file larger than ``split_bytes`` into byte ranges
    of that size (not yet at line boundaries: :func:`_align`), a larger Parquet file into its row groups, any other
    file (CSV, JSON documents, gzip, UTF-16 / UTF-32, or all files under ``limit``) whole."""
    units: list[Unit] = []
    for i, (path, fmt) in enumerate(files):
        size = path.stat().st_size
        whole = [Unit(i, 0, str(path), fmt)]
        if limit is not None or size <= split_bytes:
            units += whole
        elif fmt == "jsonl":
            with open(path, "rb") as f:
                utf8 = sniff_encoding(f.read(64)) == "utf-8-sig"
            starts = range(0, size, split_bytes) if utf8 else []
            units += [Unit(i, k, str(path), fmt, span=(a, min(a + split_bytes, size))) for k, a in enumerate(starts)]
            units += [] if utf8 else whole
        elif fmt == "parquet":
            try:
                meta = pq.ParquetFile(path).metadata
            except _read_errors():  # the task names the file
                units += whole
                continue
            first = 1
            for g in range(meta.num_row_groups):
                units.append(Unit(i, g, str(path), fmt, row_groups=[g], first_line=first))
                first += meta.row_group(g).num_rows
            units += [] if meta.num_row_groups else whole
        else:
            units += whole
    return units


def _prepass_fn(items: list[tuple]):
    """Task body of the pre-pass: ("hash", source, path) -> batch id; ("align", path, start, end) -> the span's line
    starts and the line ends between them."""

    def fn(batches):
        for batch in batches:
            out = []
            for i in batch.column(0).to_pylist():
                item = items[i]
                if item[0] == "hash":
                    res = {"batch": batch_id_of(item[1], Path(item[2]))}
                else:
                    path, size = Path(item[1]), os.path.getsize(item[1])
                    a, b = line_start(path, item[2], size), line_start(path, item[3], size)
                    res = {"span": [a, b], "line_ends": count_line_ends(path, a, b)}
                out.append(json.dumps([i, res]))
            yield pa.RecordBatch.from_pydict({"result": out})

    return fn


def _task_slots(spark) -> int:
    try:
        return max(1, int(spark.sparkContext.defaultParallelism) // int(spark.conf.get("spark.task.cpus", "1")))
    except Exception:  # noqa: BLE001 - Spark Connect has no sparkContext
        return 8


def _spark_map(spark, items: list, fn_of: Callable[[list], Callable]) -> list:
    """Run ``fn_of(items)`` over ``items`` in Spark tasks: one item per task, but at most
    :data:`TASKS_PER_SLOT` tasks per task slot (consecutive items share a task, so thousands of tiny files do not
    cost thousands of task launches); the items' JSON results in item order."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField("result", StringType())])
    n = len(items)
    tasks = min(n, TASKS_PER_SLOT * _task_slots(spark))
    rows = spark.range(0, n, 1, tasks).mapInArrow(fn_of(items), schema).collect()
    out: list = [None] * n
    for r in rows:
        i, res = json.loads(r["result"])
        out[i] = res
    return out


def _stage_unit(unit: Unit, batch: str, root: str, source: str, task: str, settings: Settings, limit: int | None):
    """Task body: parse and validate one unit into ``<root>/f<file>/<table>/part-<part>.parquet``; its counts."""
    rep = FileReport(file=unit.path, format=unit.fmt)
    attempt = Path(root) / f"attempt-{uuid.uuid4().hex}"  # a retried or speculative task never meets a half file
    attempt.mkdir(parents=True)
    try:
        stager = _Stager(attempt)
        rows = _FileRows(stager, rep, source, task, settings, batch)
        reader = RecordReader(
            Path(unit.path), unit.fmt, settings.ingest.max_row_chars, unit.span, unit.row_groups, unit.first_line
        )
        try:
            for record in reader:
                if limit is not None and rep.rows_read >= limit:
                    break
                rows.add(*record)
        except _read_errors() + (InputError,) as e:
            return {"error": f"cannot read {unit.path} ({unit.fmt}) after {rep.rows_read} rows: {e}"}
        tables = stager.close()
        for table, staged_file in tables.items():
            final = Path(root) / f"f{unit.file:06d}" / table / f"part-{unit.part:06d}.parquet"
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_file, final)
        return {
            "rows_read": rep.rows_read, "valid": rows.valid, "quarantined": rep.quarantined,
            "reasons": dict(rep.reasons), "payloads_cut": rep.payloads_cut, "blank_lines": reader.blank_lines,
            "lines": reader.lines, "encoding": reader.encoding, "layout": reader.layout,
        }  # fmt: skip
    finally:
        shutil.rmtree(attempt, ignore_errors=True)


def _stage_fn(units: list[Unit], batches: list[str], root: str, source: str, task: str, settings, limit):
    def fn(batches_in):
        for batch in batches_in:
            out = []
            for i in batch.column(0).to_pylist():
                u = units[i]
                out.append(json.dumps([i, _stage_unit(u, batches[u.file], root, source, task, settings, limit)]))
            yield pa.RecordBatch.from_pydict({"result": out})

    return fn


def _align(spark, units: list[Unit], files: list[tuple[Path, str]], source: str) -> list[str]:
    """The pre-pass (one Spark job): each file's batch id, and each byte range moved to line starts with its line
    ends counted, so that every range's ``first_line`` is exact. Ranges left without a line start are dropped."""
    items: list[tuple] = [("hash", source, str(p)) for p, _ in files]
    ranged = [u for u in units if u.span is not None]
    items += [("align", u.path, *u.span) for u in ranged]
    res = _spark_map(spark, items, _prepass_fn)
    batches = [r["batch"] for r in res[: len(files)]]
    before: Counter = Counter()
    for u, r in zip(ranged, res[len(files) :], strict=True):
        u.span, u.line_ends = tuple(r["span"]), r["line_ends"]
        u.first_line = 1 + before[u.file]
        before[u.file] += u.line_ends
    units[:] = [u for u in units if u.span is None or u.span[0] < u.span[1]]
    return batches


def stage_in_spark(
    spark, files: list[tuple[Path, str]], source: str, task: str, settings: Settings, limit: int | None = None
) -> tuple[list[Staged], list[str], Path]:
    """Parse the run's files in Spark tasks (the driver only plans): the staged files, the errors of the files that
    cannot be read, and the run's staging folder (the caller removes it).

    Per file: every unit's staged rows (``rows read = valid + quarantined``, bronze rows = rows read) and, for a split
    JSON Lines file, the lines the tasks read against the line ends the pre-pass counted.

    Raises:
        ConservationError: a file's units do not add up.
    """
    root = staging_dir(settings.root, "ingest")
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _stage_in_spark(spark, root, files, source, task, settings, limit)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _stage_in_spark(
    spark, root: Path, files: list[tuple[Path, str]], source: str, task: str, settings: Settings, limit: int | None
) -> tuple[list[Staged], list[str], Path]:
    units = plan_units(files, settings.ingest.split_bytes, limit)
    batches = _align(spark, units, files, source)
    log.info("ingest: %d files in %d Spark tasks", len(files), len(units))
    results = _spark_map(spark, units, lambda us: _stage_fn(us, batches, str(root), source, task, settings, limit))
    staged, failed = [], []
    by_file: dict[int, list[tuple[Unit, dict]]] = {}
    for u, r in zip(units, results, strict=True):
        by_file.setdefault(u.file, []).append((u, r))
    for i, (path, fmt) in enumerate(files):
        mine = by_file[i]
        errors = [r["error"] for _, r in mine if "error" in r]
        if errors:
            failed.append(errors[0])
            continue
        rep = FileReport(file=str(path), format=fmt)
        valid = 0
        for u, r in mine:
            rep.rows_read += r["rows_read"]
            rep.quarantined += r["quarantined"]
            rep.reasons.update(r["reasons"])
            rep.payloads_cut += r["payloads_cut"]
            rep.blank_lines += r["blank_lines"]
            valid += r["valid"]
            # a split file's last line may have no line end; every other line has one
            if u.span is not None and r["lines"] - u.line_ends not in ((0, 1) if u is mine[-1][0] else (0,)):
                raise ConservationError(f"{path}: bytes {u.span} hold {u.line_ends} lines, the task read {r['lines']}")
        rep.encoding, rep.layout = mine[0][1]["encoding"], mine[0][1]["layout"]
        folder = root / f"f{i:06d}"
        tables = {t: folder / t for t in ("candidates_bronze", "samples", "quarantine") if (folder / t).is_dir()}
        bronze = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((folder / "candidates_bronze").glob("*")))
        if rep.rows_read != valid + rep.quarantined or bronze != rep.rows_read:
            raise ConservationError(
                f"{path}: rows read {rep.rows_read} != valid {valid} + quarantined {rep.quarantined}"
                f" (staged bronze rows {bronze})"
            )
        staged.append(Staged(rep, folder, tables, valid, batches[i]))
    return staged, failed, root


def use_spark(settings: Settings, files: list[tuple[Path, str]]) -> bool:
    """``ingest.mode``: spark, driver, or (auto) spark from ``ingest.spark_min_bytes`` of input."""
    mode = settings.ingest.mode
    if mode != "auto":
        return mode == "spark"
    return sum(p.stat().st_size for p, _ in files) >= settings.ingest.spark_min_bytes


# ---- commit --------------------------------------------------------------------------------------------------


def _earlier_batches(store: TableStore, source: str, files: list[str]) -> dict[str, set[str]]:
    """Batch ids already in ``candidates_bronze`` for each of ``files`` under ``source``."""
    if not files or not store.exists("candidates_bronze"):
        return {}
    # cast: delta-rs may hand the columns over as string_view, and filters do not mix the two string types
    flt = (pc.field("source").cast(pa.string()) == source) & pc.field("file").cast(pa.string()).isin(files)
    if store.engine == "delta-rs":
        from deltalake import DeltaTable

        ds = DeltaTable(str(store.path("candidates_bronze"))).to_pyarrow_dataset()
        t = ds.to_table(columns=["file", "batch_id"], filter=flt)
    else:
        from pyspark.sql import functions as F

        df = store.read("candidates_bronze").where((F.col("source") == source) & F.col("file").isin(files))
        t = pa.Table.from_pandas(df.select("file", "batch_id").distinct().toPandas(), preserve_index=False)
    out: dict[str, set[str]] = {}
    for row in t.group_by(["file", "batch_id"]).aggregate([]).to_pylist():
        out.setdefault(row["file"], set()).add(row["batch_id"])
    return out


def _drop_batches(store: TableStore, table: str, batches: set[str], **match: str) -> int:
    """Delete the rows of earlier versions of a file (and of ``match``, e.g. one quarantine stage)."""
    return store.delete(table, {"batch_id": set(batches), **match}) if batches else 0


def _present_ids(store: TableStore, ids: pa.Array) -> set[str]:
    """The ``ids`` already in ``samples``."""
    if len(ids) == 0 or not store.exists("samples"):
        return set()
    if store.engine == "delta-rs":
        from deltalake import DeltaTable

        ds = DeltaTable(str(store.path("samples"))).to_pyarrow_dataset()
        t = ds.to_table(columns=["sample_id"], filter=pc.field("sample_id").cast(pa.string()).isin(ids))
        return set(t.column("sample_id").to_pylist())
    wanted = store.spark.createDataFrame(pa.table({"sample_id": ids}).to_pandas())
    return {r[0] for r in store.read("samples").select("sample_id").join(wanted, "sample_id").distinct().collect()}


def _new_per_file(store: TableStore, staged: list[Staged]) -> list[int]:
    """New samples of each file: ids neither in the pool nor in an earlier file of the run (the MERGE keeps the
    first row of a key, in file order)."""
    ids = [
        pq.read_table(s.tables["samples"], columns=["sample_id"]).column("sample_id").combine_chunks()
        if "samples" in s.tables else pa.array([], pa.string())
        for s in staged
    ]  # fmt: skip
    seen = _present_ids(store, pc.unique(pa.concat_arrays(ids)) if ids else pa.array([], pa.string()))
    out = []
    for a in ids:
        mine = set(a.to_pylist()) - seen
        out.append(len(mine))
        seen |= mine
    return out


def _chunks(staged: list[Staged], rows: int) -> list[list[int]]:
    """Indexes of consecutive staged files, grouped so that a group holds at most ``rows`` rows read (a bigger file
    is a group of its own): what one commit holds in memory."""
    out: list[list[int]] = []
    size = 0
    for i, s in enumerate(staged):
        if not out or size + s.report.rows_read > rows:
            out.append([])
            size = 0
        out[-1].append(i)
        size += s.report.rows_read
    return out


def commit(
    store: TableStore, staged: list[Staged], earlier: dict[str, set[str]], batch_rows: int = 200_000
) -> list[FileReport]:
    """MERGE the staged files of a run into quarantine, samples and candidates_bronze: consecutive files up to
    ``batch_rows`` rows (``ingest.batch_rows``) in one MERGE per table (and one more where files changed), so a folder
    of many small files costs a few commits, not a few per file; check conservation per file and for the run.

    ``earlier``: each file's batch ids already in bronze; any other than the file's own means the file changed, and
    the rows of those versions are replaced.
    """
    old = [earlier.get(s.report.file, set()) - {s.batch} for s in staged]
    for s, o in zip(staged, old, strict=True):
        s.report.changed = bool(o)
    stale = set().union(*old) if old else set()
    new = _new_per_file(store, staged)
    before = store.count("samples")
    if stale:
        _drop_batches(store, "quarantine", stale, stage="ingest")
    inserted = 0
    for chunk in _chunks(staged, batch_rows):
        for table in ("quarantine", "samples", "candidates_bronze"):
            groups = {False: chunk} if table == "samples" else {
                changed: [i for i in chunk if bool(old[i]) == changed] for changed in (False, True)
            }  # fmt: skip
            for changed, group in groups.items():
                parts = [pq.read_table(staged[i].tables[table]) for i in group if table in staged[i].tables]
                if parts:
                    res = store.merge(table, pa.concat_tables(parts), update=changed)
                    inserted += res.inserted if table == "samples" else 0
    for s, o, n in zip(staged, old, new, strict=True):
        rep = s.report
        rep.new_samples, rep.duplicates = n, s.valid - n
        if o:
            rep.stale_rows = _drop_batches(store, "candidates_bronze", o)
        rep.check()
    grew = store.count("samples") - before
    if not grew == inserted == sum(new):
        raise ConservationError(
            f"samples grew by {grew}, the merge reported {inserted} new rows, the files' new samples add up to"
            f" {sum(new)}"
        )
    return [s.report for s in staged]


def _check_args(source: str, task: str, limit: int | None) -> None:
    if task not in TASKS:
        raise InputError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if not source or not source.replace("-", "_").replace(".", "_").isidentifier():
        raise InputError(f"--source {source!r} must be a short name (letters, digits, - _ .)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"--limit {limit!r} must be a whole number >= 1 (rows read per file)")


def ingest(
    store: TableStore,
    paths: list[str],
    source: str,
    task: str,
    settings: Settings,
    on_file: Callable[[Path, int, int], None] | None = None,
    on_rows: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> IngestReport:
    """Ingest files into bronze / samples / quarantine: all of them, or none when one cannot be read.

    Args:
        store: the tables.
        paths: files, folders (recursive) and globs.
        source: name of this data source (selects ``ingest.sources.<source>`` column maps).
        task: ``math``, ``nli`` or ``generic``.
        settings: the config.
        on_file: called as ``(path, index, count)`` before each file is read.
        on_rows: called with the number of rows read since the last call.
        limit: read at most this many rows of each file (the rest is not read and not counted).

    Raises:
        InputError: a bad argument, a path that matches nothing, or files that cannot be read (all named; then
            nothing was written).
    """
    _check_args(source, task, limit)
    inputs = find_inputs(paths)
    report = IngestReport(source=source, task=task, skipped=inputs.skipped)
    staged: list[Staged] = []
    failed: list[str] = []
    spark_root: Path | None = None
    try:
        if inputs.files and use_spark(settings, inputs.files):
            staged, failed, spark_root = stage_in_spark(store.spark, inputs.files, source, task, settings, limit)
            for i, (path, _) in enumerate(inputs.files):
                if on_file is not None:
                    on_file(path, i, len(inputs.files))
            if on_rows is not None:
                on_rows(sum(s.report.rows_read for s in staged))
        else:
            for i, (path, fmt) in enumerate(inputs.files):
                if on_file is not None:
                    on_file(path, i, len(inputs.files))
                try:
                    staged.append(stage_file(path, fmt, source, task, settings, on_rows=on_rows, limit=limit))
                except InputError as e:
                    failed.append(str(e))
        if failed:
            raise InputError(
                f"{len(failed)} of {len(inputs.files)} files cannot be read, so nothing was written: "
                + "; ".join(failed),
                hint="fix or remove the files named; a run commits all of its files or none",
            )
        fault_point("ingest:staged")
        earlier = _earlier_batches(store, source, [s.report.file for s in staged])
        for rep in commit(store, staged, earlier, settings.ingest.batch_rows):
            log.info(
                "%s: %d read, %d new, %d duplicates, %d quarantined",
                rep.file,
                rep.rows_read,
                rep.new_samples,
                rep.duplicates,
                rep.quarantined,
            )
            report.files.append(rep)
    finally:
        for s in staged:
            shutil.rmtree(s.folder, ignore_errors=True)
        if spark_root is not None:
            shutil.rmtree(spark_root, ignore_errors=True)
    return report
