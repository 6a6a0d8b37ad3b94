"""Helpers shared by integration tests: build files of each format, compare tables."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from prismatic.tables import TABLES, TableStore


def good_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"prompt": f"Question {i}: what is {i} plus {i + 1}?", "completion": f"It is {2 * i + 1}."}
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def snapshot(store: TableStore, name: str) -> list[dict]:
    """Table content without run metadata (timestamps), sorted by key: equal for equivalent runs."""
    td = TABLES[name]
    t = store.read_arrow(name)
    cols = [c for c in t.column_names if c not in td.volatile]
    rows = t.select(cols).to_pylist()
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in td.key))
