"""`prism sql` is read-only by construction: Spark's parser decides what a statement is, the guard walks the plan.

The hostile statements below are the issue's reproductions (they deleted a Delta table, copied the pool out, printed
the API key, read /etc/hostname, dropped a table) and their disguises (inside a CTE, a named window, a subquery,
an EXPLAIN, IDENTIFIER(...)). Each must exit 2 with one error line and leave every file of the data root as it was;
the queries the project documents must still pass.
"""

from __future__ import annotations

import hashlib

import pytest
from helpers import good_rows, write_jsonl

from prismatic.cli import main
from prismatic.errors import PrismError, SqlRefusedError
from prismatic.sqlrun import BLOCKED_FUNCTIONS, TABLE_FUNCTIONS, ReadOnlyGuard, split_statements

pytestmark = pytest.mark.spark

HOSTILE = dict(  # statement -> the exact error line ({shown}: the statement as the error quotes it)
    [
        (
            "INSERT OVERWRITE DIRECTORY '{root}/tables/samples' USING parquet SELECT * FROM samples LIMIT 1",
            "error: prism sql is read-only: {shown} refused, INSERT OVERWRITE DIRECTORY writes files",
        ),
        (
            "CREATE TABLE t LOCATION '{outside}' AS SELECT * FROM samples",
            "error: prism sql is read-only: {shown} refused, CREATE TABLE ... AS SELECT writes a table",
        ),
        (
            "SELECT java_method('java.lang.System','getenv','PRISM_GENERATOR_API_KEY')",
            "error: java_method() refused: it calls Java methods or reads files or secrets",
        ),
        (
            "SELECT * FROM text.`/etc/hostname`",
            "error: text.`/etc/hostname` refused: only the tables of this data root, by their short names,"
            " can be read",
        ),
        ("DROP TABLE samples", "error: prism sql is read-only: {shown} refused, DROP TABLE deletes a table"),
    ]
)


def shown(stmt: str) -> str:
    """How an error quotes a statement: whitespace collapsed, cut at 60 characters, in Python quotes."""
    flat = " ".join(stmt.split())
    return repr(flat if len(flat) <= 60 else flat[:59] + "…")


DISGUISED = [
    "EXPLAIN INSERT INTO samples SELECT * FROM samples",
    "WITH a AS (SELECT reflect('java.lang.System', 'getenv', 'HOME') AS v) SELECT * FROM a",
    "SELECT row_number() OVER w FROM samples WINDOW w AS (PARTITION BY try_reflect('java.lang.System', 'exit', 0)"
    " ORDER BY sample_id)",
    "SELECT * FROM samples WHERE EXISTS (SELECT java_method('java.lang.System', 'getenv', 'HOME'))",
    "SELECT (SELECT count(*) FROM csv.`/etc/passwd`) AS n",
    "SELECT * FROM IDENTIFIER('text.`/etc/hostname`')",
    "SELECT IDENTIFIER('java_method')('java.lang.System', 'getenv', 'HOME')",
    "SELECT builtin.java_method('java.lang.System', 'getenv', 'HOME')",
    "SELECT system.builtin.reflect('java.lang.System', 'getenv', 'HOME')",
    "SELECT TRANSFORM(prompt) USING 'cat' FROM samples",
    "SELECT * FROM spark_catalog.default.samples",
    "SELECT * FROM samples WITH ('path' = '/etc')",
    "SELECT * FROM python_worker_logs()",
    "SELECT from_protobuf(x'00', 'Msg', '/etc/hostname')",
    "EXECUTE IMMEDIATE 'DROP TABLE samples'",
    "SET spark.master=local[1]",
    "SET",
    "RESET",
    "CACHE TABLE samples",
    "ADD JAR /tmp/evil.jar",
    "CREATE TEMPORARY VIEW v AS SELECT 1",
    "DECLARE VARIABLE v INT",
    "DELETE FROM samples",
    "INSERT INTO samples SELECT * FROM samples",
    "MERGE INTO samples t USING pool s ON t.sample_id = s.sample_id WHEN MATCHED THEN DELETE",
    "TRUNCATE TABLE samples",
    "LOAD DATA LOCAL INPATH '/etc/passwd' INTO TABLE samples",
    "USE default",
    "REFRESH TABLE samples",
    "DESCRIBE text.`/etc/hostname`",
]

ACCEPTED = [
    "SELECT task, count(*) AS n FROM samples GROUP BY task",
    "WITH p AS (SELECT * FROM pool) SELECT count(*) FROM p",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT * FROM (SELECT task, source FROM samples) PIVOT (count(*) FOR task IN ('math', 'nli'))",
    "SELECT s.* FROM samples s LEFT ANTI JOIN quarantine q ON s.file = q.file ORDER BY 1 LIMIT 5 OFFSET 1",
    "SELECT * FROM samples TABLESAMPLE (50 PERCENT) LATERAL VIEW explode(array(1, 2)) t AS x",
    "SELECT row_number() OVER w AS rk FROM samples WINDOW w AS (PARTITION BY task ORDER BY sample_id)",
    "SELECT * FROM range(3) r JOIN (VALUES (1, 'a'), (2, 'b')) AS v(id, s) ON r.id = v.id",
    "FROM samples |> WHERE task = 'math' |> AGGREGATE count(*) AS n GROUP BY source",
    "SELECT * FROM samples WHERE sample_id IN (SELECT sample_id FROM pool) AND EXISTS (SELECT 1)",
    "SELECT xpath_string('<a>b</a>', 'a'), transform(array(1, 2), x -> x + 1)",
    "VALUES (1, 2)",
    "TABLE samples",
    "SHOW TABLES",
    "SHOW VIEWS",
    "SHOW FUNCTIONS",
    "SHOW COLUMNS IN samples",
    "DESCRIBE samples",
    "DESCRIBE FUNCTION reflect",
    "DESCRIBE QUERY SELECT 1",
    "EXPLAIN SELECT count(*) FROM samples",
    "EXPLAIN FORMATTED WITH a AS (SELECT 1) SELECT * FROM a",
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory, spark):
    root = tmp_path_factory.mktemp("readonly") / "lake"
    data = write_jsonl(tmp_path_factory.mktemp("in") / "a.jsonl", good_rows(8) + [{"prompt": "no completion"}])
    assert main(["--set", f"data_root={root}", "ingest", str(data), "--source", "demo", "--task", "math"]) == 0
    return root


@pytest.fixture(scope="module")
def guard(spark):
    return ReadOnlyGuard(spark)


def tree_digest(root) -> dict[str, str]:
    """sha256 of every file under ``root``: a refused statement must leave all of them (and no new one)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def prism_sql(root, capfd, *args) -> tuple[int, str, str]:
    rc = main(["--set", f"data_root={root}", "sql", *args])
    cap = capfd.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("template", list(HOSTILE))
def test_the_issue_reproductions_are_refused_and_change_nothing(template, lake, tmp_path, capfd):
    outside = tmp_path / "x"
    stmt = template.format(root=lake, outside=outside)
    before = tree_digest(lake)
    rc, out, err = prism_sql(lake, capfd, stmt)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0] == HOSTILE[template].format(shown=shown(stmt))
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert "Traceback" not in err and "at org.apache" not in err and "SQLQueryContextLogger" not in err
    assert tree_digest(lake) == before and not outside.exists()
    assert main(["--set", f"data_root={lake}", "status"]) == 0  # every table still readable
    assert "UNREADABLE" not in capfd.readouterr().out


@pytest.mark.parametrize("stmt", DISGUISED)
def test_disguised_writes_calls_and_paths_are_refused(stmt, guard):
    with pytest.raises(SqlRefusedError):
        guard.check_statement(stmt)


@pytest.mark.parametrize("stmt", ACCEPTED)
def test_queries_pass_the_guard(stmt, guard):
    guard.check_statement(stmt)


def test_accepted_queries_run_and_return_rows(lake, capfd):
    import json

    rc, out, _ = prism_sql(lake, capfd, "SELECT count(*) AS n FROM pool", "--format", "json")
    assert rc == 0 and json.loads(out) == [{"n": 8}]
    rc, out, _ = prism_sql(lake, capfd, "SHOW TABLES", "--format", "json")
    assert rc == 0 and {"samples", "pool", "quarantine"} <= {r["tableName"] for r in json.loads(out)}
    rc, out, _ = prism_sql(lake, capfd, "EXPLAIN SELECT count(*) FROM samples", "--format", "json")
    assert rc == 0 and "Physical Plan" in json.loads(out)[0]["plan"]


def test_a_file_with_one_refused_statement_runs_none(lake, tmp_path, capfd):
    f = tmp_path / "mixed.sql"
    f.write_text("SELECT count(*) AS n FROM samples;\nDROP TABLE samples;\n")
    before = tree_digest(lake)
    rc, out, err = prism_sql(lake, capfd, "-f", str(f))
    assert rc == 2 and out == ""  # the first statement did not run either
    assert err.startswith("error: prism sql is read-only: 'DROP TABLE samples' refused")
    assert tree_digest(lake) == before


def test_syntax_and_analysis_errors_are_one_line(lake, capfd):
    rc, _, err = prism_sql(lake, capfd, "SELEC 1")
    assert rc == 2 and err.splitlines()[0] == (
        "error: SQL failed: [PARSE_SYNTAX_ERROR] Syntax error at or near 'SELEC'. SQLSTATE: 42601 (line 1, pos 0)"
    )
    rc, _, err = prism_sql(lake, capfd, "SELECT nope FROM samples")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 2
    assert lines[0].startswith(
        "error: SQL failed: [UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function"
        " parameter with name `nope` cannot be resolved."
    )
    assert lines[1] == "hint: tables here: candidates_bronze, samples, quarantine, pool"
    assert '{"ts"' not in err and "Traceback" not in err


def test_every_reflection_alias_in_the_registry_is_blocked(guard, spark):
    """The live Spark 4.2 registry: any function implemented by a reflection / protobuf / avro class is refused,
    and every table function outside the allow-list is refused (python_worker_logs is the one in 4.2)."""
    blocked = guard._blocked_names()
    assert {"reflect", "java_method", "try_reflect"} <= blocked <= BLOCKED_FUNCTIONS
    for name in sorted(blocked):
        with pytest.raises(SqlRefusedError, match=rf"^{name}\(\) refused"):
            guard.check_statement(f"SELECT {name}('java.lang.System', 'getenv', 'HOME')")
    tvf = spark._jsparkSession.sessionState().tableFunctionRegistry()
    it, live = tvf.listFunction().iterator(), set()
    while it.hasNext():
        live.add(it.next().funcName())
    assert TABLE_FUNCTIONS <= live and live - TABLE_FUNCTIONS  # the list is real, and it does leave some out
    for name in sorted(live - TABLE_FUNCTIONS):
        with pytest.raises(SqlRefusedError, match="table function"):
            guard.check_statement(f"SELECT * FROM {name}()")


def test_the_documented_queries_pass_the_guard(guard):
    """sql/*.sql (run for real in test_sql_files.py) and every `prism sql "..."` example in the README."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    stmts = [s for f in sorted((repo / "sql").glob("*.sql")) for s in split_statements(f.read_text())]
    readme = [m for m in re.findall(r'prism sql "([^"]+)"|\$P sql "([^"]+)"', (repo / "README.md").read_text())]
    examples = [s for a, b in readme if "…" not in (a or b) for s in split_statements(a or b)]  # `;`-separated too
    assert len(stmts) >= 9 and examples, "the documented queries were not found"
    for stmt in stmts + examples:
        guard.check_statement(stmt)


def test_where_filters_follow_the_same_rules(lake, spark):
    from prismatic.config import load_config
    from prismatic.stages.common import pool_frame
    from prismatic.tables import open_store

    store = open_store(load_config(overrides=[f"data_root={lake}"]), spark)
    assert pool_frame(store, ["sample_id", "task"], "task = 'math'").count() == 8
    with pytest.raises(SqlRefusedError, match=r"^java_method\(\) refused"):
        pool_frame(store, ["sample_id"], "java_method('java.lang.System', 'getenv', 'HOME') IS NOT NULL")
    with pytest.raises(SqlRefusedError, match="text.`/etc/hostname` refused"):
        pool_frame(store, ["sample_id"], "sample_id IN (SELECT value FROM text.`/etc/hostname`)")
    with pytest.raises(PrismError) as e:  # a parse error: Spark's reason, not an empty one
        pool_frame(store, ["sample_id"], "task = = 'math'")
    assert str(e.value).startswith("--where \"task = = 'math'\" is not a valid filter: [PARSE_SYNTAX_ERROR]")
    with pytest.raises(PrismError) as e:
        pool_frame(store, ["sample_id"], "no_such_col = 1")
    assert str(e.value).startswith("--where 'no_such_col = 1' is not a valid filter on samples: [UNRESOLVED_COLUMN")
