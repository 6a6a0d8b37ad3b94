"""The ``prism`` command line. ``prism <stage>`` is built from each registered stage's declared options
(:mod:`prismatic.stages.registry`) and runs it on one :class:`~prismatic.stages.base.Context`; ``status``, ``sql``,
``run``, ``vacuum`` and ``assets`` are written here. What they print is :mod:`prismatic.output`'s."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from prismatic.config import Settings, load_config
from prismatic.errors import PrismError
from prismatic.output import FORMATS, SQL_FORMATS, print_csv, print_json, print_jsonl, print_rows, render
from prismatic.output import stdout_console as out
from prismatic.stages.base import Context, Option, Stage
from prismatic.stages.registry import STAGES

HELP = {"help_option_names": ["-h", "--help"]}  # -h like any Unix tool, on every command
# the help text is the callback's docstring (for users), not this module's
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=HELP)
assets_app = typer.Typer(
    no_args_is_help=True, help="Offline models and data (fetched from package archives).", context_settings=HELP
)
app.add_typer(assets_app, name="assets")
experiment_app = typer.Typer(
    no_args_is_help=True, help="Experiments that compare ways of growing a pool.", context_settings=HELP
)
app.add_typer(experiment_app, name="experiment")
bundle_app = typer.Typer(
    no_args_is_help=True, help="The Databricks bundle (databricks.yml) on this machine.", context_settings=HELP
)
app.add_typer(bundle_app, name="bundle")

console = Console(stderr=True)  # progress, spinners and errors; results go to stdout (prismatic.output)
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
        out().print(f"prism (prismatic) {v}", highlight=False)
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


# ---- stage commands: one per registered stage, built from its Option declarations ---------------------------

FORMAT_HELP = "table | json (the report's rows, one document) | csv"


def _annotation(o: Option) -> Any:
    """The typer parameter of one stage Option: its type and ``typer.Option`` / ``typer.Argument``."""
    kind: Any = Literal[o.choices] if o.choices else o.kind
    if o.multiple:
        kind = list[kind]
    if not o.required and o.kind is not bool:
        kind = kind | None
    show_default = o.default is not None and (o.kind is not bool or o.negatable)
    if o.argument:
        metavar = o.metavar or o.name.upper()  # PATHS, as click names arguments
        return Annotated[kind, typer.Argument(help=o.help, metavar=metavar, show_default=False)]
    decls = [o.flag + (f"/--no-{o.flag[2:]}" if o.negatable else "")] + ([o.short] if o.short else [])
    extra = {"min": o.min} if o.min is not None else {}
    return Annotated[kind, typer.Option(*decls, help=o.help, metavar=o.metavar, show_default=show_default, **extra)]


def _register_stage(stage: Stage, group: typer.Typer = app) -> None:
    """Add ``prism <stage.name>`` (or the command under ``group``): every declared option, plus ``--format``; it
    runs :func:`run_stage`."""
    annotations: dict[str, Any] = {o.name: _annotation(o) for o in stage.options}
    annotations["fmt"] = Annotated[Literal[FORMATS], typer.Option("--format", help=FORMAT_HELP)]
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(o.name, keyword, default=inspect.Parameter.empty if o.required else o.default,
                          annotation=annotations[o.name])
        for o in stage.options
    ]  # fmt: skip
    params.append(inspect.Parameter("fmt", keyword, default="table", annotation=annotations["fmt"]))

    def command(fmt: str = "table", **options: Any) -> None:
        run_stage(stage, fmt, options)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what typer reads
    command.__annotations__ = annotations
    command.__name__ = stage.name
    group.command(stage.name, help=stage.help)(command)


def run_stage(stage: Stage, fmt: str, options: dict[str, Any]) -> None:
    """One ``prism <stage>``: check the options, open the store (writer lock, Spark), run, print the report."""
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    s = settings()
    check = getattr(stage, "check", None)  # what can fail before Spark starts (a missing input file)
    if check is not None:
        check(s, **options)
    ctx = Context(s, store(spark=stage.needs_spark), console=console)
    with console.status(f"{stage.name}…"):  # a spinner on a terminal; a stage's progress bar shows under it
        report = stage(ctx, **options)
    render(stage.name, report, fmt, ctx)


for _stage in STAGES:
    _register_stage(_stage)


def _register_experiments() -> None:
    """``prism experiment guidance``: built like a stage command (options, --format), not a pipeline stage."""
    from prismatic.synth.guidance import GuidanceExperiment

    _register_stage(GuidanceExperiment(), experiment_app)


_register_experiments()


@app.command()
def status(
    fmt: Annotated[Literal[FORMATS], typer.Option("--format", help="table | json | csv: one row per table")] = "table",
) -> None:
    """Every table with row count, Delta version and last operation; a damaged table is named, exit 2."""
    from prismatic.errors import TableError
    from prismatic.tables import TABLES

    s = settings()
    # delta-rs answers from the Delta logs alone: no Spark session to start (seconds instead of ten)
    st = store(spark=s.storage.engine == "delta-spark" or "spark.sql.extensions" in s.spark.extra)
    rows = [row for row in (_status_row(st, name) for name in TABLES) if row is not None]
    if fmt != "table":
        print_rows(rows, fmt)
    else:
        t = Table(title=f"tables ({st.engine}) under {s.root}")
        for col in ("table", "rows", "version", "last operation", "when"):
            t.add_column(col)
        for r in rows:
            if r["unreadable"]:
                t.add_row(r["table"], "?", "?", f"UNREADABLE: {r['unreadable']}", "", style="red")
            else:
                t.add_row(r["table"], str(r["rows"]), str(r["version"]), r["last_operation"], r["when"])
        out().print(t)
        if not rows:
            out().print(f"no tables under {s.root} yet: `prism ingest` creates them")
    damaged = {r["table"]: r["unreadable"] for r in rows if r["unreadable"]}
    if damaged:
        raise TableError(
            f"{len(damaged)} table(s) under {s.root / 'tables'} cannot be read: "
            + "; ".join(f"{n} ({p})" for n, p in damaged.items()),
            hint="restore the table folder (its Delta log) from a backup, or move it away and re-run the stage that"
            " writes it; no stage reads a damaged table",
        )


def _status_row(st, name: str) -> dict | None:
    """A table's row (rows, version, last operation, when; ``unreadable``: why it cannot be read), None when the
    table does not exist."""
    from prismatic.errors import first_line

    row = {"table": name, "rows": None, "version": None, "last_operation": None, "when": None, "unreadable": None}
    if not st.exists(name):
        folder = st.path(name) if hasattr(st, "path") else None  # delta-rs: a folder without its Delta log
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            return {**row, "unreadable": "the folder holds files but no _delta_log"}
        return None
    try:
        h = st.history(name, 1)
        op = h[0].get("operation", "") if h else ""
        ts = h[0].get("timestamp") if h else None
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts / 1000)) if isinstance(ts, int | float) else str(ts)
        return {**row, "rows": st.count(name), "version": st.version(name), "last_operation": op, "when": when}
    except Exception as e:  # noqa: BLE001 - a damaged log or a missing data file: name the table, go on
        return {**row, "unreadable": first_line(e, 160)}


SQL_FORMAT_HELP = (
    "table | json (one statement: its rows as an array; several: an array of {statement, rows}) |"
    " jsonl (one {statement, rows} object per line) | csv"
)


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="a Spark SQL statement over the tables by name")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="run the statements in this .sql file")] = None,
    fmt: Annotated[Literal[SQL_FORMATS], typer.Option("--format", help=SQL_FORMAT_HELP)] = "table",
    limit: Annotated[int, typer.Option("--limit", min=1, help="rows to print at most")] = 1000,
) -> None:
    """Run read-only Spark SQL over the tables (every table is a view under its name; `pool` = samples minus
    duplicates). Only queries (SELECT / WITH / SHOW / DESCRIBE / EXPLAIN) run; writes, file paths, SET and Java-calling
    functions are refused, and nothing runs if one statement is refused."""
    from prismatic.sqlrun import run_sql

    if (query is None) == (file is None):
        raise PrismError("give either a query or --file FILE.sql", hint='prism sql "SELECT count(*) FROM samples"')
    text = query if query is not None else _read_sql(file)
    results = [{"statement": stmt, "rows": rows} for stmt, rows in run_sql(store(), text, limit=limit)]
    if fmt == "jsonl":
        print_jsonl(results)
    elif fmt == "json":
        print_json(results[0]["rows"] if len(results) == 1 else results)
    elif fmt == "csv":
        for r in results:  # one header + rows block per statement
            print_csv(r["rows"])
    else:
        console_out = out()
        for r in results:
            title = r["statement"] if len(results) > 1 else ""
            print_rows(r["rows"], "table", title[:80], console=console_out)


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
    run_pipeline(Context(s, store(), console=console), out())


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
    out().print(t)
    if dry_run:
        for u in rep.tables:
            for f in u.removed:
                out().print(f"would remove {u.table}/{f}", soft_wrap=True, highlight=False)
        for p in rep.staging.removed:
            out().print(f"would remove {p}", soft_wrap=True, highlight=False)
    out().print(rep.summary())


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
        out().print(f"{n}: {p}", soft_wrap=True)


@assets_app.command("export-proxy")
def assets_export_proxy(
    folder: Annotated[Path, typer.Argument(help="new (or empty) folder to write, e.g. then uploaded to a volume")],
) -> None:
    """Write the scoring proxy (scoring.model) as safetensors + tokenizer + prismatic_proxy.json with its sha256.

    Scoring with `scoring.model.path` set to the folder gives the same spec_id and vectors as the source."""
    from prismatic.gradients.model import export_proxy

    s = settings()
    with console.status(f"exporting {s.scoring.model.path}…"):
        manifest = export_proxy(s.scoring.model, folder)
    out().print(
        f"{manifest['model_id']} -> {folder} (weights sha256 {manifest['weights_sha256']},"
        f" {len(manifest['files'])} files)",
        soft_wrap=True,
        highlight=False,
    )


@assets_app.command("export-gsm")
def assets_export_gsm(
    out_file: Annotated[Path, typer.Argument(help="JSONL file to write (prompt / completion rows): raw/gsm.jsonl")],
    size: Annotated[int, typer.Option("--size", "-n", min=1, help="problems to generate")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="generator seed; the gsm_symbolic benchmark uses 1")] = 0,
) -> None:
    """Write GSM-Symbolic problems with their worked solutions as a math pool file (needs the `gsm` extra).

    The completion is the chain of thought ending `#### <answer>`, so the scored gradient carries the reasoning."""
    from prismatic.errors import InputError
    from prismatic.train.benchmarks import gsm_symbolic_rows

    if seed == 1:
        raise InputError("seed 1 is the gsm_symbolic benchmark's: a pool with it would train on the test problems")
    rows = gsm_symbolic_rows(size, seed=seed)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out_file)
    out().print(f"{len(rows)} of {size} GSM-Symbolic problems (seed {seed}) -> {out_file}", soft_wrap=True)


@bundle_app.command("run-local")
def bundle_run_local(
    job: Annotated[
        list[str] | None, typer.Option("--job", help="job key of the bundle (repeatable; default: all)")
    ] = None,
    target: Annotated[str, typer.Option("--target", "-t", help="bundle target whose variables apply")] = "dev",
    root: Annotated[
        Path, typer.Option("--root", help="local stand-in of /Volumes and /Workspace (tables, MLflow, logs)")
    ] = Path("bundle-local"),
    var: Annotated[list[str] | None, typer.Option("--var", help="bundle variable NAME=VALUE (repeatable)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="job parameter NAME=VALUE (repeatable)")] = None,
) -> None:
    """Run every task of the bundle's jobs here, in depends_on order, each through its jobs/<stage>.py entry point
    with the target's resolved parameters: Volume and workspace paths under ROOT, the embedded engine (delta-rs,
    local Spark and MLflow, the local generator), small sizes. Exit 1 at the first failing task."""
    from prismatic.bundle_local import parse_assignments, run_local

    results = run_local(
        target=target,
        local_root=root,
        jobs=job,
        variables=parse_assignments(var, "--var"),
        params=parse_assignments(param, "--param"),
        echo=lambda line: out().print(line, soft_wrap=True, highlight=False),
    )
    failed = [r for r in results if not r.ok]
    total = sum(r.seconds for r in results)
    if failed:
        r = failed[0]
        console.print(f"{r.job}.{r.key} failed; its stderr ends:\n{r.stderr_tail}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    out().print(f"{len(results)} tasks ok in {total:.1f} s (logs under {root}/logs)", soft_wrap=True, highlight=False)


def command():
    """The click group of ``prism``: typer's, with every boolean flag shown as a flag (typer shows ``<bool>``)."""
    if "command" not in _GROUP:
        group = typer.main.get_command(app)
        _flags_as_flags(group)
        _GROUP["command"] = group
    return _GROUP["command"]


_GROUP: dict[str, Any] = {}


def _flags_as_flags(cmd) -> None:
    for p in cmd.params:
        if getattr(p, "is_flag", False):
            p.metavar = ""  # the help's type column stays empty: `--exact`, not `--exact <bool>`
    made = cmd.get_help_option  # -h / --help, made when first asked for

    def help_option(ctx, made=made):
        opt = made(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = help_option
    for sub in getattr(cmd, "commands", {}).values():
        _flags_as_flags(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line + hint for expected errors, the traceback only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for k in ("settings", "store", "own_spark", "lock"):
        STATE.pop(k, None)
    try:
        command().main(args=argv, prog_name="prism", standalone_mode=False)
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
            out().print(text, highlight=False, markup=False)
        return 0
    ctx = getattr(e, "ctx", None)
    usage = " ".join(ctx.get_usage().split()) if ctx is not None else "prism [OPTIONS] COMMAND [ARGS]..."
    usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), usage)  # typer shows an argument as {paths}
    command = ctx.command_path if ctx is not None else "prism"
    message = e.format_message().replace("Value error, ", "")  # typer's coercion (pydantic) prefixes choices
    return _fail(message, f"{usage} (see {command} --help)", 2)


if __name__ == "__main__":
    sys.exit(main())
