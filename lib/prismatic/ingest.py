"""Ingest: files (JSONL / JSONL.gz / Parquet / CSV; files, folders, globs) -> bronze, samples, quarantine.

Each file is parsed completely into a staging folder first; only a file that was read to its end is merged,
so a file that cannot be read is one error and nothing of it is written. Merges are keyed (bronze on
(source, file, line), samples on sample_id, quarantine on its key), so re-ingesting a file, or re-running
after a crash, changes nothing. Conservation is checked per file:
``rows read = new samples + duplicates (of the pool or within the file) + quarantined``.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.config import ColumnMap, IngestConfig, NormalizeConfig, Settings
from prismatic.errors import ConservationError, InputError
from prismatic.normalize import sample_id as make_sample_id
from prismatic.tables import TABLES, TableStore, conform

log = logging.getLogger(__name__)

TASKS = ("math", "nli", "generic")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
# sample_id normalization is fixed (not the dedup settings) so that ids stay stable when dedup is re-tuned
SAMPLE_ID_NORMALIZATION = NormalizeConfig(nfkc=True, lowercase=False, collapse_whitespace=True)
CHAT_ROLES = {"system", "user", "assistant"}
STAGING_ROWS = 50_000


@dataclass
class FileReport:
    file: str
    format: str
    rows_read: int = 0
    new_samples: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)

    def check(self) -> None:
        if self.rows_read != self.new_samples + self.duplicates + self.quarantined:
            raise ConservationError(
                f"{self.file}: rows read {self.rows_read} != new {self.new_samples} + duplicates {self.duplicates}"
                f" + quarantined {self.quarantined}"
            )


@dataclass
class IngestReport:
    source: str
    task: str
    files: list[FileReport] = field(default_factory=list)

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


class Bad(Exception):
    """A row that cannot become a sample: reason code + detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and FORMATS.get(suffixes[-1]) == "jsonl":
            return "jsonl.gz"
        raise InputError(f"{path}: only .jsonl.gz is supported among gzip files")
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InputError(f"{path}: unknown file type; expected one of .jsonl, .jsonl.gz, .parquet, .csv")
    return fmt


def resolve_inputs(paths: list[str]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursive) and globs into a sorted list of (file, format)."""
    if not paths:
        raise InputError("no input path given")
    found: list[Path] = []
    for p in paths:
        if any(ch in p for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(p, recursive=True))
            if not matches:
                raise InputError(f"no file matches {p!r}")
            found.extend(m for m in matches if m.is_file())
        elif os.path.isdir(p):
            inner = sorted(
                q for q in Path(p).rglob("*") if q.is_file() and not q.name.startswith((".", "_")) and _known(q)
            )
            if not inner:
                raise InputError(f"folder {p} holds no .jsonl, .jsonl.gz, .parquet or .csv file")
            found.extend(inner)
        elif os.path.isfile(p):
            found.append(Path(p))
        else:
            raise InputError(f"no such file or folder: {p}")
    seen: dict[Path, str] = {}
    for f in found:
        seen.setdefault(f.resolve(), detect_format(f))
    return sorted(seen.items(), key=lambda kv: str(kv[0]))


def _known(p: Path) -> bool:
    try:
        detect_format(p)
        return True
    except InputError:
        return False


# ---- raw records -----------------------------------------------------------------------------------------

Record = tuple[int, str, Any, Bad | None]  # (line, payload text, parsed object, error)


def _iter_jsonl(path: Path, gz: bool) -> Iterator[Record]:
    opener = gzip.open if gz else open
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, raw.decode("utf-8", "backslashreplace"), None, Bad("not_utf8", str(e))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield i, text, None, Bad("invalid_json", f"{e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield i, text, None, Bad("wrong_type", f"row is a JSON {type(obj).__name__}, not an object")
                continue
            yield i, text, obj, None


def _iter_parquet(path: Path) -> Iterator[Record]:
    pf = pq.ParquetFile(path)
    i = 0
    for batch in pf.iter_batches(batch_size=STAGING_ROWS):
        for row in batch.to_pylist():
            i += 1
            yield i, json.dumps(row, ensure_ascii=False, default=str), row, None


def _iter_csv(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return
        for i, row in enumerate(reader, 1):
            payload = json.dumps(row, ensure_ascii=False, default=str)
            values = [v for v in row.values() if isinstance(v, str)]
            if any(_has_surrogates(v) for v in values):
                fixed = payload.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                yield i, fixed, None, Bad("not_utf8", "field holds bytes that are not UTF-8")
                continue
            if None in row:
                yield i, payload, None, Bad("bad_csv_row", f"{len(row[None])} more fields than the header")
                continue
            if any(v is None for v in row.values()):
                yield i, payload, None, Bad("bad_csv_row", "fewer fields than the header")
                continue
            yield i, payload, row, None


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def iter_records(path: Path, fmt: str) -> Iterator[Record]:
    if fmt == "jsonl":
        return _iter_jsonl(path, gz=False)
    if fmt == "jsonl.gz":
        return _iter_jsonl(path, gz=True)
    if fmt == "parquet":
        return _iter_parquet(path)
    if fmt == "csv":
        return _iter_csv(path)
    raise InputError(f"unknown format {fmt!r}")


# ---- validation ------------------------------------------------------------------------------------------


def _text_field(row: dict, col: str, name: str) -> str:
    if col not in row or row[col] is None:
        raise Bad("missing_field", f"no {name!r} field (column {col!r})")
    v = row[col]
    if not isinstance(v, str):
        raise Bad("wrong_type", f"{name!r} (column {col!r}) is {type(v).__name__}, not a string")
    return v


def _chat(row: dict, cols: ColumnMap) -> tuple[str, str, str]:
    msgs = row[cols.messages]
    if isinstance(msgs, str):
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError as e:
            raise Bad("bad_messages", f"messages is a string but not JSON: {e.msg}") from None
    if hasattr(msgs, "tolist"):
        msgs = msgs.tolist()
    if not isinstance(msgs, list) or not msgs:
        raise Bad("bad_messages", "messages must be a non-empty list of {role, content}")
    clean = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in CHAT_ROLES:
            raise Bad("bad_messages", f"message {j} needs role in {sorted(CHAT_ROLES)} and string content")
        clean.append({"role": m["role"], "content": m["content"]})
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
    """Map one parsed row to sample fields, or raise ``Bad`` with a reason code."""
    messages = label = None
    if task == "nli":
        premise = _text_field(row, cols.premise, "premise")
        hypothesis = _text_field(row, cols.hypothesis, "hypothesis")
        raw_label = _text_field(row, cols.label, "label")
        label = raw_label.strip().lower()
        if label not in cfg.nli_labels:
            raise Bad("bad_label", f"label {raw_label!r} is not one of {cfg.nli_labels}")
        if not premise.strip() or not hypothesis.strip():
            raise Bad("empty_text", "premise or hypothesis is empty")
        prompt = cfg.nli_prompt_template.format(premise=premise.strip(), hypothesis=hypothesis.strip())
        completion = label
    elif cols.messages in row and row[cols.messages] is not None:
        prompt, completion, messages = _chat(row, cols)
    else:
        prompt = _text_field(row, cols.prompt, "prompt")
        completion = _text_field(row, cols.completion, "completion")
    if not prompt.strip() or not completion.strip():
        raise Bad("empty_text", "prompt or completion is empty")
    if len(prompt) + len(completion) > cfg.max_chars:
        raise Bad("too_long", f"{len(prompt) + len(completion)} characters > ingest.max_chars = {cfg.max_chars}")
    return {"prompt": prompt, "completion": completion, "messages": messages, "label": label}


def bucket_of(sid: str, buckets: int) -> int:
    return int(sid[:8], 16) % buckets


def batch_id_of(source: str, path: Path) -> str:
    st = path.stat()
    key = f"{source}\x1f{path}\x1f{st.st_size}\x1f{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ---- staging and merge -----------------------------------------------------------------------------------


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


def ingest_file(
    store: TableStore,
    path: Path,
    fmt: str,
    source: str,
    task: str,
    settings: Settings,
    on_rows: Callable[[int], None] | None = None,
    limit: int | None = None,
) -> FileReport:
    """Parse one file fully into staging, then MERGE it; returns the file's conservation report."""
    cfg = settings.ingest
    cols = cfg.sources.get(source, cfg.columns)
    now = datetime.now(UTC)
    batch = batch_id_of(source, path)
    rep = FileReport(file=str(path), format=fmt)
    stage = settings.root / "_staging" / f"ingest-{uuid.uuid4().hex}"
    stage.mkdir(parents=True, exist_ok=True)
    try:
        stager = _Stager(stage)
        valid = 0
        try:
            for line, payload, obj, bad in iter_records(path, fmt):
                if limit is not None and rep.rows_read >= limit:
                    break
                rep.rows_read += 1
                if bad is None:
                    try:
                        fields = validate_row(obj, task, cols, cfg)
                    except Bad as b:
                        bad = b
                status = "quarantined" if bad else "valid"
                stager.add("candidates_bronze", {
                    "source": source, "file": str(path), "line": line, "batch_id": batch, "format": fmt,
                    "payload": payload, "status": status, "ingested_at": now,
                })
                if bad is not None:
                    rep.quarantined += 1
                    rep.reasons[bad.reason] += 1
                    stager.add("quarantine", {
                        "stage": "ingest", "source": source, "file": str(path), "line": line, "item_id": "",
                        "reason": bad.reason, "detail": bad.detail[:500], "payload": payload[: cfg.payload_chars],
                        "batch_id": batch, "created_at": now,
                    })
                else:
                    valid += 1
                    sid = make_sample_id(task, fields["prompt"], fields["completion"], SAMPLE_ID_NORMALIZATION)
                    stager.add("samples", {
                        "sample_id": sid, "task": task, "source": source, **fields, "origin": "seed", "round": 0,
                        "bucket": bucket_of(sid, cfg.buckets), "file": str(path), "line": line,
                        "batch_id": batch, "created_at": now,
                    })
                if on_rows is not None and rep.rows_read % 10_000 == 0:
                    on_rows(10_000)
        except _read_errors() as e:
            msg = f"cannot read {path} ({fmt}) after {rep.rows_read} rows: {e}; nothing of it was written"
            raise InputError(msg) from e
        staged = stager.close()
        if on_rows is not None:
            on_rows(rep.rows_read % 10_000)
        before = store.count("samples")
        for table in ("quarantine", "samples", "candidates_bronze"):
            if table in staged:
                res = store.merge(table, pq.read_table(staged[table]))
                if table == "samples":
                    rep.new_samples = res.inserted
        rep.duplicates = valid - rep.new_samples
        after = store.count("samples")
        if after - before != rep.new_samples:
            raise ConservationError(f"samples grew by {after - before} but the merge reported {rep.new_samples}")
        rep.check()
        return rep
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
    """Ingest files into bronze / samples / quarantine. All inputs are resolved before anything is written.

    Args:
        limit: read at most this many rows of each file (the rest is not read and not counted).
    """
    if task not in TASKS:
        raise InputError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    if not source or not source.replace("-", "_").replace(".", "_").isidentifier():
        raise InputError(f"--source {source!r} must be a short name (letters, digits, - _ .)")
    files = resolve_inputs(paths)
    report = IngestReport(source=source, task=task)
    for i, (path, fmt) in enumerate(files):
        if on_file is not None:
            on_file(path, i, len(files))
        rep = ingest_file(store, path, fmt, source, task, settings, on_rows=on_rows, limit=limit)
        log.info("%s: %d read, %d new, %d duplicates, %d quarantined", path, rep.rows_read, rep.new_samples,
                 rep.duplicates, rep.quarantined)
        report.files.append(rep)
    return report
