"""API keys for hosted generators, and redaction so that a key never reaches a log, an error or MLflow.

A key comes from a Databricks secret (``api_key_secret: scope/key``, read with ``dbutils`` when the code runs
on Databricks) or from the environment variable named by ``api_key_env``. Config objects hold only those
*names*; the value lives in a :class:`Secret`, whose ``repr``/``str`` print ``***``. Every resolved value is
registered here, and :func:`redact` / :class:`RedactingFilter` replace registered values with ``***`` in any
text or log record.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from prismatic.errors import ConfigError

MASK = "***"
# shorter values are not registered: replacing every "ab" in a log line would only destroy the log
_MIN_SECRET_CHARS = 4

_lock = threading.Lock()
_registered: set[str] = set()


class Secret:
    """A secret string that does not print itself. Call :meth:`reveal` where the raw value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str) or not value:
            raise ValueError("a Secret needs a non-empty string")
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        """Return the raw value (only to put it in an HTTP header)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # pickling (Spark closures) keeps the value but re-registers it on the other side
        return (Secret, (self._value,))


def register_secret(value: str) -> None:
    """Add ``value`` to the set that :func:`redact` masks (values shorter than 4 characters are ignored)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
        with _lock:
            _registered.add(value)


def has_secrets() -> bool:
    """True when at least one value is registered (callers skip redaction work otherwise)."""
    with _lock:
        return bool(_registered)


def forget_secrets() -> None:
    """Clear the registry (tests)."""
    with _lock:
        _registered.clear()


def redact(text: Any) -> str:
    """Return ``str(text)`` with every registered secret value replaced by ``***`` (longest values first)."""
    s = text if isinstance(text, str) else str(text)
    with _lock:
        values = sorted(_registered, key=len, reverse=True)
    for v in values:
        if v in s:
            s = s.replace(v, MASK)
    return s


class RedactingFilter(logging.Filter):
    """Logging filter that masks registered secrets in the formatted message and in exception text.

    Attach it to handlers (``install_redaction``) so that records from every logger pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.exc_info and record.exc_info[1] is not None:
            # structured formatters (JSON logs: PySpark's, Databricks') read the exception object, not exc_text
            exc_type, exc, tb = record.exc_info
            text = str(exc)
            if redact(text) != text:
                record.exc_info = (exc_type, _RedactedException(redact(text)), tb)
        return True


class _RedactedException(Exception):
    """Stands in for a logged exception whose message held a secret (its type and traceback are kept)."""


_FILTER = RedactingFilter()


def install_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Attach the redacting filter to every handler of ``logger`` (default: the root logger); idempotent."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    return _FILTER


def _dbutils() -> Any | None:
    """The notebook/job ``dbutils`` when running on Databricks, else None."""
    try:  # Databricks notebooks and jobs put dbutils in the IPython user namespace
        import IPython

        ip = IPython.get_ipython()
        if ip is not None and "dbutils" in ip.user_ns:
            return ip.user_ns["dbutils"]
    except Exception:
        pass
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        try:
            from databricks.sdk.runtime import dbutils

            return dbutils
        except Exception:
            return None
    return None


def resolve_api_key(cfg: Any, dbutils: Any | None = None) -> Secret | None:
    """Find the API key named by a generator config.

    Order: the Databricks secret ``cfg.api_key_secret`` (``scope/key``) when ``dbutils`` is available, then the
    environment variable ``cfg.api_key_env``. A server without auth (a local vLLM) needs neither: None.

    Args:
        cfg: a ``GeneratorConfig`` (anything with ``api_key_env`` and ``api_key_secret``).
        dbutils: Databricks utilities; found automatically on Databricks when None.

    Returns:
        The key wrapped in :class:`Secret` (and registered for redaction), or None.

    Raises:
        ConfigError: a secret is configured but neither dbutils nor the env var can provide a key.
    """
    ref = getattr(cfg, "api_key_secret", None)
    env_name = getattr(cfg, "api_key_env", None)
    if ref:
        scope, _, key = ref.partition("/")
        utils = dbutils if dbutils is not None else _dbutils()
        if utils is not None:
            try:
                value = utils.secrets.get(scope=scope, key=key)
            except Exception as e:
                raise ConfigError(
                    f"cannot read Databricks secret {scope}/{key}: {type(e).__name__}",
                    hint="check the scope and key with `databricks secrets list-secrets <scope>`",
                ) from None
            if value:
                return Secret(value)
    value = os.environ.get(env_name) if env_name else None
    if value:
        return Secret(value)
    if ref:
        raise ConfigError(
            f"generator.api_key_secret={ref} needs Databricks (dbutils) and env var {env_name} is not set",
            hint=f"export {env_name}=... when running outside Databricks",
        )
    return None
