"""Readers: input files -> raw records, one row at a time, each row's failure its own.

Why a module of its own: ingest must never let one row cost another. A reader yields every row with either its
parsed object or the reason it cannot be one (:class:`Bad`), so a byte that is not UTF-8, a row nested 10,000
levels deep, a repeated key or a 50 MB line becomes a quarantine row while the good rows of the same file land.
Only what makes a whole file unreadable (a truncated gzip, a corrupt Parquet footer, a UTF-16 file with a broken
byte sequence, a JSON array document that does not parse, a CSV header that repeats a column) is one error naming
the file. What a *text field* may hold (NUL, lone surrogates, invisible-only text) is checked in validation
(:func:`prismatic.ingest.validate_row`), after the column map has said which fields are text.

The rules, each exercised by the bad-input corpus (``tests/bad_input``):

- Encoding: UTF-8 with or without a BOM (the BOM is dropped). UTF-16 and UTF-32 are recognised by their BOM, or
  without one by the NUL bytes of their first (ASCII) characters, and decoded; a broken sequence in such a file is
  an error for the file. In a UTF-8 file, bytes that are not UTF-8 make only their own row ``not_utf8``.
- Lines: ``\\n``, ``\\r\\n`` and a lone ``\\r`` each end a line. Blank lines are not rows (they are counted). A line
  longer than ``ingest.max_row_chars`` is ``row_too_large``; it is skipped in bounded chunks, never held whole.
  A UTF-8 JSON Lines file may be read in byte ranges (Spark ingest): :func:`line_start` moves a range's ends to
  line starts by these same rules and :func:`count_line_ends` counts its lines, so line numbers stay exact.
- JSON: Python's parser is lenient, so each row is also checked: nesting deeper than :data:`MAX_DEPTH` (or deeper
  than the parser can go) is ``too_deep``; a key repeated within one object is ``duplicate_key`` (parsers disagree
  on which value wins); an integer too long for Python is ``invalid_json``. ``NaN`` and ``Infinity`` are read as
  Python reads them; in a text field they are ``wrong_type``.
- ``.json`` files: a file whose first character is ``[`` is an array of rows (``line`` = 1-based position in the
  array); a pretty-printed object (its first line alone is not JSON) is one row; anything else is JSON Lines. Such
  a document is parsed whole, so it may be at most :data:`MAX_DOCUMENT_CHARS` characters.
- CSV: the header line picks the delimiter (``,`` ``;`` tab or ``|``, whichever splits it into the most columns);
  header names are stripped of surrounding blanks. Quoted fields may hold delimiters and newlines; ``line`` is the
  record number, header excluded.
- Parquet: each row as a dict (nested columns as dicts and lists); its payload is the JSON of the row.
- Folders and globs: files of an unsupported type, hidden files (``.`` / ``_`` prefixes, such as Spark's
  ``_SUCCESS`` and ``.crc`` files, and every file under a hidden folder of a folder named, such as
  ``_delta_log/``) and names that are not valid UTF-8 are listed as skipped with the reason, never dropped without
  a word. A file named explicitly must be of a supported type.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from prismatic.errors import InputError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SUPPORTED = ".jsonl, .ndjson, .json (and each of them .gz), .parquet, .csv"
MAX_DEPTH = 100
MAX_DOCUMENT_CHARS = 256 << 20
PARQUET_BATCH = 50_000
CSV_DELIMITERS = (",", ";", "\t", "|")
_SNIFF_BYTES = 64


class Bad(Exception):
    """A row that cannot become a sample: reason code + detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


Record = tuple[int, str, Any, Bad | None]  # (line, payload text, parsed object, error)


# ---- which files ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Files to read, each with its format, and the files passed over, each with the reason."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def detect_format(path: Path) -> str:
    """``jsonl``, ``json``, ``parquet`` or ``csv``, with ``.gz`` appended for gzip files of the JSON kinds.

    Raises:
        InputError: the name's suffix is not a supported type.
    """
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if gz and fmt in ("jsonl", "json"):
        return f"{fmt}.gz"
    if gz:
        raise InputError(f"{path}: only JSON Lines / JSON files may be gzipped (.jsonl.gz, .json.gz)")
    if fmt is None:
        raise InputError(f"{path}: unknown file type; expected one of {SUPPORTED}")
    return fmt


def _skip_reason(path: Path, root: Path | None = None) -> str | None:
    """Why a file found in a folder (``root``) or by a glob is not read, or None."""
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    if any(part.startswith((".", "_")) for part in parts):  # also files in _delta_log/, .git/, _temporary/
        return "hidden file (name starts with . or _)"
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    try:
        detect_format(path)
    except InputError:
        return f"unsupported file type (supported: {SUPPORTED})"
    return None


def find_inputs(paths: list[str]) -> Inputs:
    """Expand files, folders (recursive) and globs into sorted (file, format) pairs plus the skipped files.

    Raises:
        InputError: no path, a path that does not exist, a glob that matches nothing, a folder or glob without one
            readable file, or a file named explicitly whose type is not supported.
    """
    if not paths:
        raise InputError("no input path given")
    found: list[Path] = []
    out = Inputs()
    for p in paths:
        root = None
        if any(ch in p for ch in "*?["):
            candidates = sorted(Path(m) for m in glob.glob(p, recursive=True))
            if not candidates:
                raise InputError(f"no file matches {p!r}")
        elif os.path.isdir(p):
            root, candidates = Path(p), sorted(Path(p).rglob("*"))
        elif os.path.isfile(p):
            _explicit_ok(Path(p))
            found.append(Path(p))
            continue
        else:
            raise InputError(f"no such file or folder: {p}")
        readable = []
        for c in candidates:
            if not c.is_file():
                continue
            reason = _skip_reason(c, root)
            if reason is None:
                readable.append(c)
            else:
                out.skipped.append((os.fsdecode(c).encode("utf-8", "backslashreplace").decode(), reason))
        if not readable:
            raise InputError(f"{p} holds no readable file ({SUPPORTED}); {len(out.skipped)} skipped")
        found.extend(readable)
    seen: dict[Path, str] = {}
    for f in found:
        seen.setdefault(f.resolve(), detect_format(f))
    out.files = sorted(seen.items(), key=lambda kv: str(kv[0]))
    return out


def _explicit_ok(path: Path) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{os.fsdecode(path)!r}: the file name is not valid UTF-8; rename the file") from None
    detect_format(path)


# ---- text streams ---------------------------------------------------------------------------------------------


def sniff_encoding(head: bytes) -> str:
    """The codec of a text file from its first bytes: a BOM, else the NUL pattern of UTF-16 / UTF-32 ASCII text.

    Returns ``utf-8-sig`` (plain UTF-8 that also drops a BOM) when nothing else fits.
    """
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "utf-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    n = len(head) - len(head) % 4
    if n >= 4:
        quads = [head[i : i + 4] for i in range(0, n, 4)]
        if all(q[0] and not any(q[1:]) for q in quads):
            return "utf-32-le"
        if all(q[3] and not any(q[:3]) for q in quads):
            return "utf-32-be"
        pairs = [head[i : i + 2] for i in range(0, n, 2)]
        if all(a and not b for a, b in pairs):
            return "utf-16-le"
        if all(b and not a for a, b in pairs):
            return "utf-16-be"
    return "utf-8-sig"


def _binary(path: Path, gz: bool) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 - closed by the text wrapper


def has_surrogates(s: str) -> bool:
    """True if ``s`` holds a code point in U+D800-U+DFFF (not encodable as UTF-8)."""
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def escaped(text: str) -> str:
    """``text`` made encodable for storage: bytes that were not UTF-8 (``surrogateescape``) as ``\\xNN``, other lone
    surrogates as ``\\udNNN``."""
    if not has_surrogates(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _lines(f: io.TextIOBase, cap: int) -> Iterator[tuple[str, int]]:
    """Each line without its end, and its length; a line over ``cap`` characters comes back cut at ``cap`` and is
    read past in bounded chunks."""
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith("\n"):
            total = len(line)
            while more := f.readline(1 << 20):
                total += len(more)
                if more.endswith("\n"):
                    total -= 1
                    break
            yield line[:cap], total
        elif line.endswith("\n"):
            yield line[:-1], len(line) - 1
        else:
            yield line, len(line)


# ---- JSON -------------------------------------------------------------------------------------------------------


class _DupKeyDict(dict):
    """An object in which a key appeared more than once (``dup`` names it); json keeps the last value."""

    dup: str = ""


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        out = _DupKeyDict(d)
        out.dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return out
    return d


def loads(text: str) -> Any:
    """``json.loads`` that marks objects with a repeated key (see :func:`inspect_json`)."""
    return json.loads(text, object_pairs_hook=_pairs_hook)


def inspect_json(obj: Any, max_depth: int = MAX_DEPTH) -> Bad | None:
    """Walk a parsed value without recursion: nesting deeper than ``max_depth`` or a repeated key is a ``Bad``."""
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if d > max_depth:
            return Bad("too_deep", f"nested more than {max_depth} levels deep")
        if isinstance(v, dict):
            if isinstance(v, _DupKeyDict):
                return Bad("duplicate_key", f"key {v.dup[:100]!r} appears more than once in one object")
            stack.extend((x, d + 1) for x in v.values() if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return None


def dump(obj: Any) -> str:
    """JSON text of a row for its payload; always encodable (escapes lone surrogates), never raises."""
    try:
        text = json.dumps(obj, ensure_ascii=False, default=str)
        return json.dumps(obj, default=str) if has_surrogates(text) else text
    except (ValueError, RecursionError, TypeError):
        return escaped(repr(obj)[:100_000])


def json_row(line: int, text: str) -> Record:
    """Parse one JSON Lines row into a record (the object, or the reason it is not one)."""
    if has_surrogates(text):  # surrogateescape: bytes that are not UTF-8
        col = next(i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff")
        byte = ord(text[col]) - 0xDC00
        detail = f"byte 0x{byte:02x} at column {col + 1} is not valid UTF-8" if byte < 256 else "not valid UTF-8"
        return line, escaped(text), None, Bad("not_utf8", detail)
    try:
        obj = loads(text)
    except json.JSONDecodeError as e:
        return line, text, None, Bad("invalid_json", f"{e.msg} at column {e.colno}")
    except RecursionError:
        return line, text, None, Bad("too_deep", "nested deeper than the JSON parser can go")
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        return line, text, None, Bad("invalid_json", str(e)[:200])
    if not isinstance(obj, dict):
        return line, text, None, Bad("wrong_type", f"row is a JSON {type(obj).__name__}, not an object")
    bad = inspect_json(obj)
    return line, text, (None if bad else obj), bad


# ---- readers ------------------------------------------------------------------------------------------------


class RecordReader:
    """Iterate one file's records. After (or during) iteration, ``encoding``, ``layout`` and ``blank_lines`` say
    how the file was read.

    Args:
        path: the file.
        fmt: its format (:func:`detect_format`).
        max_row_chars: a row longer than this (characters of its line, CSV record or Parquet row JSON) is
            ``row_too_large`` and is not parsed.
        span: read only the bytes ``[start, end)`` of a UTF-8 JSON Lines file, both line starts
            (:func:`line_start`); its lines are numbered from ``first_line``.
        row_groups: read only these row groups of a Parquet file; its rows are numbered from ``first_line``.
        first_line: the number of the first line / row read.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        max_row_chars: int,
        span: tuple[int, int] | None = None,
        row_groups: list[int] | None = None,
        first_line: int = 1,
    ):
        self.path, self.fmt, self.cap = path, fmt, max_row_chars
        self.span, self.row_groups, self.first_line = span, row_groups, first_line
        self.encoding = "utf-8"
        self.layout = fmt
        self.blank_lines = 0
        self.lines = 0  # lines (blank ones included) / rows seen

    def __iter__(self) -> Iterator[Record]:
        if self.fmt == "parquet":
            return self._parquet()
        if self.fmt == "csv":
            return self._csv()
        if self.fmt in ("jsonl", "jsonl.gz", "json", "json.gz"):
            return self._json()
        raise InputError(f"unknown format {self.fmt!r}")

    def _open(self, newline: str | None) -> io.TextIOWrapper:
        if self.span is not None:  # a line-aligned byte range of a UTF-8 file (a BOM can only be at byte 0)
            start, end = self.span
            raw = io.BufferedReader(_Window(self.path, start, end))
            encoding = "utf-8-sig" if start == 0 else "utf-8"
            return io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline=newline)
        gz = self.fmt.endswith(".gz")
        raw = _binary(self.path, gz)
        try:
            encoding = sniff_encoding(raw.read(_SNIFF_BYTES))
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
        self.encoding = "utf-8" if encoding == "utf-8-sig" else encoding
        errors = "surrogateescape" if encoding == "utf-8-sig" else "strict"
        return io.TextIOWrapper(raw, encoding=encoding, errors=errors, newline=newline)

    def _too_large(self, line: int, cut: str, total: int) -> Record:
        detail = f"{total} characters > ingest.max_row_chars = {self.cap}"
        return line, escaped(cut), None, Bad("row_too_large", detail)

    def _json(self) -> Iterator[Record]:
        kind = self._document_kind() if self.fmt in ("json", "json.gz") and self.span is None else None
        if kind is not None:
            with self._open(newline=None) as f:
                value = self._document(f.read(MAX_DOCUMENT_CHARS + 1), array=kind == "array")
            if value is not None:
                self.layout = "one JSON document"
                yield from self._elements(value)
                return
        yield from self._json_lines()  # JSON Lines (also a .json whose first row is merely broken)

    def _document_kind(self) -> str | None:
        """``array`` when the first character is ``[``; ``object`` when the first line is an unfinished ``{``."""
        with self._open(newline=None) as f:
            for text, total in _lines(f, self.cap):
                s = text.lstrip()
                if not s:
                    continue
                if s.startswith("["):
                    return "array"
                return "object" if s.startswith("{") and total <= self.cap and not _parses(s) else None
        return None

    def _json_lines(self) -> Iterator[Record]:
        with self._open(newline=None) as f:
            for i, (text, total) in enumerate(_lines(f, self.cap), self.first_line):
                self.lines += 1
                if not text.strip():
                    self.blank_lines += 1
                else:
                    yield self._too_large(i, text, total) if total > self.cap else json_row(i, text)

    def _document(self, text: str, array: bool) -> Any:
        """The parsed document; None when an object-like start does not parse (then the file is JSON Lines)."""
        if len(text) > MAX_DOCUMENT_CHARS:
            raise InputError(
                f"{self.path} is one JSON document of more than {MAX_DOCUMENT_CHARS} characters; "
                "write it as JSON Lines (one object per line) to ingest it"
            )
        try:
            return loads(text)
        except RecursionError:
            raise InputError(f"{self.path}: the JSON document is nested deeper than the parser can go") from None
        except ValueError as e:
            if not array:
                return None
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)[:200]
            raise InputError(f"{self.path}: the JSON array does not parse: {msg}{where}") from None

    def _elements(self, value: Any) -> Iterator[Record]:
        for i, obj in enumerate(value if isinstance(value, list) else [value], 1):
            payload = dump(obj)
            if len(payload) > self.cap:
                yield self._too_large(i, payload[: self.cap], len(payload))
            elif not isinstance(obj, dict):
                yield i, payload, None, Bad("wrong_type", f"element is a JSON {type(obj).__name__}, not an object")
            else:
                bad = inspect_json(obj)
                yield i, payload, (None if bad else obj), bad

    def _parquet(self) -> Iterator[Record]:
        pf = pq.ParquetFile(self.path)
        i = self.first_line - 1
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=self.row_groups):
            for row in batch.to_pylist():
                i += 1
                self.lines += 1
                payload = dump(row)
                if len(payload) > self.cap:
                    yield self._too_large(i, payload[: self.cap], len(payload))
                else:
                    yield i, payload, row, None

    def _csv(self) -> Iterator[Record]:
        marker = f"\x00prismatic-cut-{uuid.uuid4().hex}\x00"
        csv.field_size_limit(max(csv.field_size_limit(), self.cap + len(marker) + 2))
        with self._open(newline="") as f:
            header_line = f.readline(self.cap + 1)
            if not header_line.strip():
                return
            if len(header_line) > self.cap:
                raise InputError(f"{self.path}: the CSV header is longer than ingest.max_row_chars = {self.cap}")
            if has_surrogates(header_line):
                raise InputError(f"{self.path}: the CSV header is not valid UTF-8")
            delim = sniff_delimiter(header_line)
            if delim != ",":
                self.layout = f"csv ({delim!r}-separated)"
            sizes: list[int] = []
            lines = itertools.chain([header_line], _csv_lines(f, self.cap, marker, sizes))
            reader = csv.reader(lines, delimiter=delim)
            header = [h.strip() for h in next(reader)]
            dup = next((h for h in header if header.count(h) > 1), None)
            if dup is not None:
                raise InputError(f"{self.path}: the CSV header names column {dup!r} more than once")
            yield from self._csv_records(reader, header, marker, sizes)

    def _csv_records(self, reader, header: list[str], marker: str, sizes: list[int]) -> Iterator[Record]:
        i = 0
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                i += 1
                reason = "row_too_large" if "field limit" in str(e) else "bad_csv_row"
                yield i, "", None, Bad(reason, f"CSV record ending at line {reader.line_num}: {e}")
                continue
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                self.blank_lines += 1
                continue
            i += 1
            if any(marker in v for v in rec) or sum(map(len, rec)) > self.cap:
                total = sizes.pop(0) if sizes else sum(map(len, rec))
                cut = escaped(",".join(rec).replace(marker, "")[: self.cap])
                yield i, cut, None, Bad("row_too_large", f"{total} characters > ingest.max_row_chars = {self.cap}")
                continue
            yield _csv_record(i, header, rec)


# ---- byte ranges of JSON Lines files (parsed in Spark tasks) ----------------------------------------------------


class _Window(io.RawIOBase):
    """The bytes ``[start, end)`` of a file as a stream of their own."""

    def __init__(self, path: Path, start: int, end: int):
        self._f = open(path, "rb")  # noqa: SIM115 - closed with the window
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(memoryview(b)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def line_start(path: Path, pos: int, size: int | None = None) -> int:
    """The first line start at or after byte ``pos`` (``size`` when none): byte 0, or a byte after ``\\n``, or after
    a ``\\r`` that does not begin ``\\r\\n`` (the line ends :func:`_lines` knows)."""
    size = os.path.getsize(path) if size is None else size
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    with open(path, "rb") as f:
        at = pos - 1  # the byte before pos decides whether pos itself starts a line
        f.seek(at)
        while chunk := f.read(1 << 20):
            hits = [k for k in (chunk.find(b"\n"), chunk.find(b"\r")) if k >= 0]
            if hits:
                q = at + min(hits)
                if chunk[min(hits)] == 0x0A:
                    return q + 1
                f.seek(q + 1)
                return q + 2 if f.read(1) == b"\n" else q + 1
            at += len(chunk)
    return size


def count_line_ends(path: Path, start: int, end: int) -> int:
    """Line ends (``\\n``, ``\\r\\n``, a lone ``\\r``) in the bytes ``[start, end)``; both must be line starts, so
    no ``\\r\\n`` straddles them."""
    n, last = 0, b""
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0 and (chunk := f.read(min(left, 8 << 20))):
            left -= len(chunk)
            n += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if last == b"\r" and chunk[:1] == b"\n":
                n -= 1
            last = chunk[-1:]
    return n


def _csv_record(i: int, header: list[str], rec: list[str]) -> Record:
    row: dict[str, Any] = dict(zip(header, rec, strict=False))
    if len(rec) > len(header):
        row[""] = rec[len(header) :]
    payload = dump(row)
    if any(has_surrogates(v) for v in rec):
        bad = Bad("not_utf8", "a field holds bytes that are not UTF-8")
        return i, escaped(json.dumps(row, ensure_ascii=False)), None, bad
    if len(rec) > len(header):
        return i, payload, None, Bad("bad_csv_row", f"{len(rec) - len(header)} more fields than the header")
    if len(rec) < len(header):
        return i, payload, None, Bad("bad_csv_row", f"{len(header) - len(rec)} fewer fields than the header")
    return i, payload, row, None


def _csv_lines(f: io.TextIOBase, cap: int, marker: str, sizes: list[int]) -> Iterator[str]:
    """Physical lines for the csv reader; a line over ``cap`` becomes ``marker`` (its length goes to ``sizes``)."""
    while True:
        line = f.readline(cap + 1)
        if not line:
            return
        if len(line) > cap and not line.endswith(("\n", "\r")):
            total = len(line)
            while more := f.readline(1 << 20):
                total += len(more)
                if more.endswith(("\n", "\r")):
                    break
            sizes.append(total)
            yield marker + "\n"
        else:
            yield line


def sniff_delimiter(header_line: str) -> str:
    """The delimiter among ``, ; tab |`` that splits a CSV header line into the most fields (``,`` on a tie)."""
    best, most = ",", 1
    for d in CSV_DELIMITERS:
        n = len(next(csv.reader([header_line], delimiter=d), []))
        if n > most:
            best, most = d, n
    return best


def _parses(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (ValueError, RecursionError):
        return False
