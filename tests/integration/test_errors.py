"""Every error is one line `error: ...` and one `hint: ...`, exit 2, with no Java stack, no Spark JSON log record and
no Python traceback unless --debug.

Bad Spark settings and a bad data root are caught by config validation, before any JVM starts: those tests run
`prism` as a subprocess and check that the JVM's start-up line never appears. The rest run in-process on the shared
Spark session, and one subprocess checks what a real terminal sees from a failing query.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import good_rows, write_jsonl

from prismatic.cli import main

CONFIG_HINT = "hint: fix the key in your config file or --set override (see conf/default.yaml for every key)"
NOISE = ("Traceback", "at org.apache", '{"ts"', "SQLQueryContextLogger", "Py4JJavaError", "Setting default log level")
JVM_BANNER = "WARNING: Using incubator modules"  # the JVM prints it as it starts


def run_prism(*args: str, root: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PRISM_DATA_ROOT", None)
    pre = ["--set", f"data_root={root}"] if root is not None else []
    prism = Path(sys.executable).parent / "prism"  # the console script, as a user runs it
    return subprocess.run([str(prism), *pre, *args], capture_output=True, text=True, env=env, timeout=timeout)


def error_lines(err: str) -> list[str]:
    """stderr without the JVM's start-up banner (printed by the JVM itself, not by prism)."""
    return [ln for ln in err.strip().splitlines() if not ln.startswith(JVM_BANNER)]


def assert_one_error(proc_or_err: subprocess.CompletedProcess | str, first: str, hint: str | None = None) -> None:
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    lines = error_lines(err)
    assert lines[0] == first, err
    assert len(lines) == 2 and lines[1].startswith("hint: "), err
    if hint is not None:
        assert lines[1] == hint
    assert not any(n in err for n in NOISE), err


@pytest.mark.parametrize(
    "override, first",
    [
        (
            "spark.master=bogus://x",
            "error: config key 'spark.master': must be local, local[N], local[*], local[N,F],"
            " spark://host:port, yarn or k8s://URL (got 'bogus://x')",
        ),
        (
            "spark.driver_memory=lots",
            "error: config key 'spark.driver_memory': must be a JVM memory size: a whole number"
            " with k, m, g or t, e.g. 4g or 2048m (got 'lots')",
        ),
        (
            "spark.driver_memory=64m",
            "error: config key 'spark.driver_memory': is below 256m, too small for the Spark driver (got '64m')",
        ),
    ],
)
def test_bad_spark_settings_fail_before_the_jvm_starts(tmp_path, override, first):
    for command in (["status"], ["sql", "SELECT 1"]):
        proc = run_prism("--set", override, *command, root=tmp_path / "lake")
        assert proc.returncode == 2
        assert_one_error(proc, first, CONFIG_HINT)
        assert JVM_BANNER not in proc.stderr  # no JVM was started with the bad value


def test_a_file_as_data_root_is_one_error_for_every_command(tmp_path):
    f = tmp_path / "hostname"
    f.write_text("box\n")
    data = write_jsonl(tmp_path / "a.jsonl", good_rows(2))
    for command in (["status"], ["ingest", str(data), "--source", "s"], ["sql", "SELECT 1"]):
        proc = run_prism(*command, root=f)
        assert proc.returncode == 2 and proc.stdout == ""  # status no longer lists "no tables" and exits 0
        assert_one_error(
            proc,
            f"error: config key 'data_root': {f} is a file, not a folder; the data root holds"
            f" tables/, mlflow/ and _staging/ (got '{f}')",
            CONFIG_HINT,
        )
    proc = run_prism("status", root=f / "lake")
    assert proc.returncode == 2 and f"is under {f}, which is a file" in proc.stderr


def test_usage_errors_are_click_messages_exit_2(tmp_path):
    proc = run_prism("ingest", str(tmp_path))
    assert proc.returncode == 2
    assert_one_error(
        proc,
        "error: Missing option '--source' / '-s'.",
        "hint: Usage: prism ingest [OPTIONS] PATHS... (see prism ingest --help)",
    )
    proc = run_prism("frobnicate")
    assert proc.returncode == 2
    assert_one_error(
        proc,
        "error: No such command 'frobnicate'.",
        "hint: Usage: prism [OPTIONS] COMMAND [ARGS]... (see prism --help)",
    )
    proc = run_prism("score", "--limit", "many")
    assert proc.returncode == 2 and proc.stderr.startswith("error: Invalid value for '--limit':")


@pytest.mark.parametrize("command", [["ingest", "in.jsonl", "--source", "s"], ["score"], ["sql", "SELECT 1"]])
def test_a_negative_limit_is_refused_before_anything_runs(tmp_path, command):
    """`--limit -5` once read nothing and exited 0; now it is a usage error and no data root is created."""
    proc = run_prism(*command, "--limit", "-5", root=tmp_path / "lake")
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_error(proc, "error: Invalid value for '--limit': Input should be greater than or equal to 1")
    assert not (tmp_path / "lake").exists()


def test_bare_prism_prints_the_help(tmp_path):
    for args in ([], ["assets"]):
        proc = run_prism(*args)
        assert proc.returncode == 0 and proc.stderr == ""
        assert "Usage: prism" in proc.stdout and "Commands" in proc.stdout


@pytest.mark.spark
def test_a_failing_query_prints_one_line_in_a_terminal(tmp_path, spark):
    """A real `prism` process: no PySpark JSON record, no Spark banner, no task-failure stack from the JVM."""
    from prismatic.config import load_config
    from prismatic.ingest import ingest
    from prismatic.tables import open_store

    root = tmp_path / "lake"
    settings = load_config(overrides=[f"data_root={root}"])
    ingest(open_store(settings, spark), [str(write_jsonl(tmp_path / "a.jsonl", good_rows(3)))], "s", "math", settings)
    script = (
        "import sys; from prismatic.cli import main\n"
        f"a = main(['--set', 'data_root={root}', '--set', 'spark.master=local[1]', 'sql',"
        " 'SELECT nope FROM samples'])\n"
        "print('---', file=sys.stderr, flush=True)\n"
        f"b = main(['--set', 'data_root={root}', '--set', 'spark.master=local[1]', 'sql',"
        " \"SELECT assert_true(task = 'nli') FROM samples\"])\n"
        "sys.exit(10 * a + b)\n"
    )
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 22, proc.stderr
    analysis, runtime = proc.stderr.split("---\n")
    assert_one_error(
        analysis,
        "error: SQL failed: [UNRESOLVED_COLUMN.WITH_SUGGESTION] A column, variable, or function"
        " parameter with name `nope` cannot be resolved. Did you mean one of the following? [`file`,"
        " `line`, `label`, `prompt`, `round`]. SQLSTATE: 42703; line 1 pos 7;",
        "hint: tables here: candidates_bronze, samples, pool",
    )
    assert_one_error(runtime, "error: SQL failed: [USER_RAISED_EXCEPTION] '(task = nli)' is not true! SQLSTATE: P0001")
    assert "Exception in task" not in proc.stderr and "ERROR" not in proc.stderr


@pytest.fixture
def lake(tmp_path, spark):
    root = tmp_path / "lake"
    data = write_jsonl(tmp_path / "a.jsonl", good_rows(6) + [{"prompt": "no completion"}])
    assert main(["--set", f"data_root={root}", "ingest", str(data), "--source", "demo", "--task", "math"]) == 0
    return root


@pytest.mark.spark
def test_a_missing_model_path_is_one_line(lake, capsys):
    capsys.readouterr()
    assert main(["--set", f"data_root={lake}", "--set", "scoring.model.path=/nonexistent", "score"]) == 2
    assert_one_error(
        capsys.readouterr().err,
        "error: model.path '/nonexistent' does not exist: neither a folder, a .gguf file, a hub id nor builtin:<name>",
        "hint: set scoring.model.path (or train.model.path) to a local folder of safetensors weights,"
        " a .gguf file, a hub id (org/name) or builtin:smollm2",
    )


@pytest.mark.spark
def test_delta_spark_engine_without_delta_is_one_line(lake, capsys):
    capsys.readouterr()
    for command in (["status"], ["sql", "SELECT 1"]):
        assert main(["--set", f"data_root={lake}", "--set", "storage.engine=delta-spark", *command]) == 2
        err = capsys.readouterr().err
        assert_one_error(
            err,
            "error: storage.engine is delta-spark but this Spark session has no Delta Lake"
            " (io.delta.sql.DeltaSparkSessionExtension is not in spark.sql.extensions)",
        )
        assert "storage.engine=auto or delta-rs" in err


@pytest.mark.spark
def test_status_names_a_damaged_table(lake, capsys):
    """INSERT OVERWRITE DIRECTORY once replaced samples' folder with bare parquet: status must say so, exit 2."""
    capsys.readouterr()
    assert main(["--set", f"data_root={lake}", "status"]) == 0
    tables = lake / "tables"
    shutil.rmtree(tables / "samples" / "_delta_log")
    log = sorted((tables / "quarantine" / "_delta_log").glob("*.json"))[-1]
    log.write_text("{ not json\n")
    assert main(["--set", f"data_root={lake}", "status"]) == 2
    cap = capsys.readouterr()
    assert "candidates_bronze" in cap.out and cap.out.count("UNREADABLE") == 2
    first = error_lines(cap.err)[0]
    assert first.startswith(
        f"error: 2 table(s) under {tables} cannot be read: samples (the folder holds files but"
        " no _delta_log); quarantine ("
    )
    assert "Traceback" not in cap.err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "--set", "spark.master=bogus://x", "--set", f"data_root={tmp_path}", "status"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: config key 'spark.master'" in err


@pytest.mark.spark
def test_empty_inputs_say_so(tmp_path, capsys):
    """An empty file (or one of blank lines) is not a silent exit 0: the output names it and says no rows were read."""
    empty, blank = tmp_path / "in" / "empty.jsonl", tmp_path / "in" / "blank.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    blank.write_text("\n\n")
    capsys.readouterr()
    assert main(["--set", f"data_root={tmp_path / 'lake'}", "ingest", str(empty.parent), "--source", "s"]) == 0
    out = capsys.readouterr().out
    assert "empty.jsonl: empty, no rows" in out and "blank.jsonl: empty, no rows (2 blank lines)" in out
    assert "no rows were read: every input is empty" in out


@pytest.mark.spark
def test_a_rejected_where_says_why(lake, tiny_model, capsys):
    """`prism score --where` with a bad filter: Spark's reason (or the read-only rule), never an empty one."""
    base = ["--set", f"data_root={lake}", "--set", f"scoring.model.path={tiny_model}", "score", "--where"]
    capsys.readouterr()
    cases = [
        (
            "task = = 'math'",
            "error: --where \"task = = 'math'\" is not a valid filter: [PARSE_SYNTAX_ERROR] Syntax"
            " error at or near '='. SQLSTATE: 42601 (line 1, pos 7)",
        ),
        (
            "no_such_col = 1",
            "error: --where 'no_such_col = 1' is not a valid filter on samples: [UNRESOLVED_COLUMN.WITH_SUGGESTION]",
        ),
        (
            "java_method('java.lang.System', 'getenv', 'HOME') IS NULL",
            "error: java_method() refused: it calls Java methods or reads files or secrets",
        ),
    ]
    for where, first in cases:
        assert main([*base, where]) == 2
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert lines[0].startswith(first), err
        assert len(lines) == 2 and lines[1].startswith("hint: ") and not any(n in err for n in NOISE), err
