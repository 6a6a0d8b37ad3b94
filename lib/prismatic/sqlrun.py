"""`prism sql`: run Spark SQL statements over the tables, addressed by their short names."""

from __future__ import annotations

from collections.abc import Iterator

from pyspark.errors import PySparkException

from prismatic.errors import PrismError
from prismatic.tables import TableStore


def split_statements(text: str) -> list[str]:
    """Split on ``;`` outside quotes and comments; drop empty statements and ``--`` comment lines."""
    stmts, buf, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"', "`"):
            quote = ch
            buf.append(ch)
        elif ch == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            i = len(text) if j < 0 else j
            continue
        elif ch == ";":
            stmts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    stmts.append("".join(buf))
    return [s.strip() for s in stmts if s.strip()]


def run_sql(store: TableStore, text: str, limit: int = 1000) -> Iterator[tuple[str, list[dict]]]:
    """Register the tables as views, run each statement, yield (statement head, rows as dicts)."""
    views = store.register_views()
    spark = store.spark
    for stmt in split_statements(text):
        try:
            df = spark.sql(stmt)
            rows = [r.asDict(recursive=True) for r in df.limit(limit).collect()] if df.columns else []
        except PySparkException as e:
            first = str(e).strip().splitlines()[0]
            raise PrismError(f"SQL failed: {first}", hint=f"tables here: {', '.join(views) or 'none yet'}") from None
        head = " ".join(stmt.split())[:80]
        yield head, rows
