"""Shared parameter handling of the bundle tasks: every job takes the same base parameters.

Parameters (all optional):
  --config FILE        YAML config (default conf/default.yaml; on Databricks conf/databricks.yaml)
  --set key=value      config override, repeatable
  --catalog / --schema Unity Catalog location of the tables (storage.catalog / storage.schema_name)
  --experiment NAME    MLflow experiment (tracking.experiment)
  --git-commit SHA     logged as the MLflow tag git_commit
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from prismatic.config import Settings, load_config
from prismatic.errors import PrismError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override key.path=value")
    p.add_argument("--catalog", default=None, help="Unity Catalog catalog of the tables")
    p.add_argument("--schema", default=None, help="schema of the tables")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    p.add_argument("--git-commit", default=None, help="commit of the deployed code (MLflow tag)")
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
    return load_config(args.config, overrides)


def store_for(settings: Settings):
    from prismatic.spark import get_spark
    from prismatic.tables import open_store

    return open_store(settings, get_spark(settings.spark))


def main(fn) -> None:
    """Run ``fn()``; a PrismError is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        fn()
    except PrismError as e:
        print(f"error: {e}\nhint: {e.hint}", file=sys.stderr)
        sys.exit(2)
