"""Shared parameter handling of the bundle tasks: every job is one registered stage, run by :func:`run_stage`.

Base parameters (all optional, every job):
  --config FILE        YAML config (default conf/default.yaml; on Databricks conf/databricks.yaml)
  --set key=value      config override, repeatable
  --catalog / --schema Unity Catalog location of the tables (storage.catalog / storage.schema_name)
  --experiment NAME    MLflow experiment (tracking.experiment)
  --git-commit SHA     logged as the MLflow tag git_commit
  --git-branch NAME    branch of the deployed code (${bundle.git.branch}; env PRISM_GIT_BRANCH)
  --git-url URL        repository of the deployed code (${bundle.git.origin_url}; env PRISM_GIT_URL)

Then the stage's own options, generated from the same declarations as `prism <stage>` (prismatic.stages): the
same long names, e.g. `--where`, `--limit N`; a flag is a flag (`--exact`), a negatable one also has `--no-x`; a
repeatable option (`--task`, `--benchmark`) takes the flag again or a comma list (bundle variables are strings);
the CLI's positional PATHS is `--paths`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from prismatic.config import Settings, load_config
from prismatic.errors import PrismError
from prismatic.stages.base import Context, Option, Stage
from prismatic.stages.registry import get_stage


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override key.path=value")
    p.add_argument("--catalog", default=None, help="Unity Catalog catalog of the tables")
    p.add_argument("--schema", default=None, help="schema of the tables")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    p.add_argument("--git-commit", default=None, help="commit of the deployed code (MLflow tag)")
    p.add_argument("--git-branch", default=None, help="branch of the deployed code (MLflow tag)")
    p.add_argument("--git-url", default=None, help="repository URL of the deployed code (MLflow tag)")
    return p


BASE_DESTS = frozenset(
    {"config", "overrides", "catalog", "schema", "experiment", "git_commit", "git_branch", "git_url"}
)


def _at_least(minimum: int):
    def convert(value: str) -> int:
        n = int(value)
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum} (got {n})")
        return n

    convert.__name__ = "int"  # argparse names the type in its error: "invalid int value"
    return convert


def _comma_list(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def add_option(p: argparse.ArgumentParser, o: Option) -> None:
    """One stage Option as an argparse argument (dest = the option's name)."""
    kw: dict = {"dest": o.name, "help": o.help, "default": o.default}
    if o.kind is bool:
        kw["action"] = argparse.BooleanOptionalAction if o.negatable else "store_true"
        p.add_argument(o.flag, **kw)
        return
    if o.argument:
        kw["action"] = "append"
    elif o.multiple:
        kw.update(action="extend", type=_comma_list)
    elif o.min is not None:
        kw["type"] = _at_least(o.min)
    elif o.kind is not str:
        kw["type"] = o.kind
    if o.choices:
        kw["choices"] = o.choices
    if o.required:
        kw["required"] = True
    if o.metavar:
        kw["metavar"] = o.metavar
    p.add_argument(o.flag, **kw)


def build_parser(stage: Stage) -> argparse.ArgumentParser:
    """The base parameters plus the stage's declared options."""
    p = parser(f"Bundle task {stage.name.capitalize()}: {stage.help}")
    for o in stage.options:
        add_option(p, o)
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = list(args.overrides)
    if args.catalog:
        overrides.append(f"storage.catalog={args.catalog}")
    if args.schema:
        overrides.append(f"storage.schema_name={args.schema}")
    if args.experiment:
        overrides.append(f"tracking.experiment={args.experiment}")
    if args.git_commit:
        os.environ["PRISM_GIT_COMMIT"] = args.git_commit
    if args.git_branch:
        os.environ["PRISM_GIT_BRANCH"] = args.git_branch
    if args.git_url:
        os.environ["PRISM_GIT_URL"] = args.git_url
    return load_config(args.config, overrides)


def store_for(settings: Settings):
    from prismatic.spark import get_spark
    from prismatic.tables import open_store

    return open_store(settings, get_spark(settings.spark))


def run_stage(name: str, argv: Sequence[str] | None = None) -> None:
    """Parse the task's parameters, build the validated config, run stage ``name`` on the active SparkSession and
    print its report (the table of ``prism <stage>``); a PrismError is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        stage = get_stage(name)
        args = build_parser(stage).parse_args(argv)
        settings = settings_from(args)
        options = {k: v for k, v in vars(args).items() if k not in BASE_DESTS}
        ctx = Context(settings, store_for(settings))
        report = stage(ctx, **options)
        from prismatic.output import render

        render(stage.name, report, "table", ctx)
    except PrismError as e:
        print(f"error: {e}\nhint: {e.hint}", file=sys.stderr)
        sys.exit(2)
