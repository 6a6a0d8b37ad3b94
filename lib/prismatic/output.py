"""What the ``prism`` commands and the job entry points print: a stage's report (or a query's rows) as a table for
people, one JSON document, or CSV.

- ``table``: each stage's human output (ingest's file table, notes and conservation line; the diversity and eval
  tables; the rounds' lines and the synthesis round table; otherwise the report's summary). On a terminal it is as
  wide as the terminal; piped (``| cat``, ``> file``, a job log) nothing is cut to 80 columns.
- ``json``: the report's ``rows()`` as one JSON array (NaN and infinities as null, timestamps as ISO text).
- ``csv``: the same rows with a header; nested values (lists, mappings) as JSON text in their cell.

Stage output goes to stdout; progress, spinners and errors go to stderr, so ``prism ingest ... --format json | jq``
gets a document and nothing else.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "csv")
SQL_FORMATS = ("table", "json", "jsonl", "csv")
CELL_CHARS = 120  # a table cell longer than this ends in "…" (json / csv keep the whole value)
PIPED_WIDTH = 1_000_000  # piped output: as wide as the content (rich pads tables to their width, not the console's)


def stdout_console() -> Console:
    """A console on the current stdout: the terminal's width on a terminal, no width limit when piped."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=PIPED_WIDTH)


# ---- rows --------------------------------------------------------------------------------------------------


def report_rows(result: Any) -> list[dict]:
    """The rows of a stage's result: its ``rows()``; a DataFrame's records; a list's rows one after the other; a
    dataclass's fields as one row."""
    if hasattr(result, "rows") and callable(result.rows):
        return list(result.rows())
    if hasattr(result, "to_dict") and hasattr(result, "columns"):  # a pandas DataFrame
        return result.to_dict("records")
    if isinstance(result, list | tuple):
        return [row for item in result for row in report_rows(item)]
    if isinstance(result, Mapping):
        return [dict(result)]
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return [dataclasses.asdict(result)]
    return [] if result is None else [{"result": str(result)}]


def _plain(value: Any) -> Any:
    """``value`` as JSON-safe data: NaN / inf -> None, numpy scalars and arrays -> Python, timestamps -> ISO."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalar or array, pandas Timestamp has isoformat (above) or str (below)
        return _plain(value.tolist())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def json_text(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON (no NaN)."""
    return json.dumps(_plain(data), indent=indent, allow_nan=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


def print_jsonl(items: list[Any]) -> None:
    for item in items:
        sys.stdout.write(json_text(item, indent=None) + "\n")
    sys.stdout.flush()


def print_csv(rows: list[dict]) -> None:
    """Rows with a header (the union of the rows' keys, in first-seen order); nested values as JSON text."""
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(sys.stdout, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_cell(r.get(k)) for k in fields})
    sys.stdout.flush()


def _csv_cell(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else value


def cell(value: Any) -> str:
    """One table cell: floats to 6 significant digits, long text cut to ``CELL_CHARS``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    s = str(value)
    return s if len(s) <= CELL_CHARS else s[: CELL_CHARS - 3] + "…"


def rows_table(rows: list[dict], title: str = "") -> Table:
    t = Table(title=title or None)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    for col in fields:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*[cell(r.get(k, "")) for k in fields])
    return t


def print_rows(rows: list[dict], fmt: str, title: str = "", console: Console | None = None) -> None:
    """Rows as a table, one JSON array or CSV."""
    if fmt == "json":
        print_json(rows)
    elif fmt == "csv":
        print_csv(rows)
    else:
        (console or stdout_console()).print(rows_table(rows, title))


# ---- stage reports as tables -------------------------------------------------------------------------------


def _items(result: Any) -> list:
    """A stage's reports: a list of them (synthesize: one per round) or the one report."""
    return list(result) if isinstance(result, list | tuple) else [result]


def _ingest_table(report: Any, console: Console, ctx: Any) -> None:
    t = Table(title=f"ingest {report.source} ({report.task})")
    for col in ("file", "read", "new", "duplicates", "quarantined"):
        t.add_column(col, justify="left" if col == "file" else "right")
    for f in report.files:
        t.add_row(Path(f.file).name, str(f.rows_read), str(f.new_samples), str(f.duplicates), str(f.quarantined))
    console.print(t)
    if report.reasons:
        console.print("quarantine reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(report.reasons.items())))
    for note in report.notes():  # skipped files, empty / decoded / changed files, payloads cut
        console.print(note, markup=False, highlight=False)
    console.print(f"conservation ok: {report.summary()}")


def _diversity_table(report: Any, console: Console, ctx: Any) -> None:
    console.print(rows_table(report_rows(report), "diversity"))


def _eval_table(report: Any, console: Console, ctx: Any) -> None:
    cols = ("benchmark", "split", "accuracy", "n", "model")
    console.print(rows_table([{k: r[k] for k in cols if k in r} for r in report_rows(report)], "eval"))


def _summaries(report: Any, console: Console, ctx: Any) -> None:
    for item in _items(report):
        console.print(item.summary())


def _synthesize_table(report: Any, console: Console, ctx: Any) -> None:
    reports = _items(report)
    for r in reports:
        console.print(r.summary())
    if not reports:
        console.print("nothing to do: the requested rounds are done (or a stop condition holds)")
    if ctx is not None and ctx.store.exists("rounds"):
        from prismatic.synth.rounds import round_table

        console.print(round_table(ctx.store))


def _guidance_table(report: Any, console: Console, ctx: Any) -> None:
    from prismatic.synth.guidance import guidance_table

    console.print(guidance_table(report))
    console.print(report.summary())


TABLES: dict[str, Callable[[Any, Console, Any], None]] = {
    "guidance": _guidance_table,
    "ingest": _ingest_table,
    "diversity": _diversity_table,
    "eval": _eval_table,
    "synthesize": _synthesize_table,
}


def render(stage: str, result: Any, fmt: str = "table", ctx: Any = None, console: Console | None = None) -> None:
    """Print a stage's result in ``fmt`` (``table``: the stage's own layout, by default its summary line)."""
    if fmt in ("json", "csv"):
        print_rows(report_rows(result), fmt)
        return
    console = console or stdout_console()
    TABLES.get(stage, _summaries)(result, console, ctx)


# ---- `prism run`: one line per stage call ------------------------------------------------------------------


def gvendi_rows(result: Any) -> list[dict]:
    return [r for r in report_rows(result) if r.get("metric") == "g_vendi"]


def pipeline_line(stage: str, result: Any, call: Mapping[str, Any]) -> list[str]:
    """The console lines ``prism run`` prints after one stage call (markup: the stage name in bold)."""
    head = f"[bold]{stage}[/] "
    if stage == "ingest":
        reasons = f"  (quarantine: {dict(result.reasons)})" if result.reasons else ""
        return [f"{head}{call.get('source')}: {result.summary()}{reasons}"]
    if stage == "diversity":
        return [
            head + ", ".join(f"{r['group_key']}: G-Vendi {r['value']:.2f} (n={r['n']})" for r in gvendi_rows(result))
        ]
    if stage == "eval":
        return [head + ", ".join(f"{r['benchmark']}: {r['accuracy']:.3f} (n={r['n']})" for r in report_rows(result))]
    return [head + item.summary() for item in _items(result)]
