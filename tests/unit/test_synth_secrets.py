"""API-key resolution and redaction (prismatic.synth.secrets)."""

from __future__ import annotations

import json
import logging
import pickle

import pytest

from prismatic.config import GeneratorConfig, Settings, to_flat_dict
from prismatic.errors import ConfigError
from prismatic.synth.secrets import (
    RedactingFilter,
    Secret,
    forget_secrets,
    install_redaction,
    redact,
    register_secret,
    resolve_api_key,
)

KEY = "dapi-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean():
    forget_secrets()
    yield
    forget_secrets()


class FakeDbutils:
    class secrets:  # noqa: N801 - mirrors dbutils.secrets
        store = {("llm", "token"): KEY}

        @classmethod
        def get(cls, scope, key):
            if (scope, key) not in cls.store:
                raise RuntimeError(f"Secret does not exist with scope: {scope} and key: {key}")
            return cls.store[(scope, key)]


def test_secret_never_prints_itself():
    s = Secret(KEY)
    assert s.reveal() == KEY
    for text in (repr(s), str(s), f"{s}", repr([s]), repr({"k": s})):
        assert KEY not in text and "***" in text
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError):
        Secret("")


def test_redact_replaces_every_registered_value():
    register_secret(KEY)
    register_secret("ab")  # too short to register: redacting it would wreck ordinary text
    assert redact(f"Authorization: Bearer {KEY}; again {KEY}") == "Authorization: Bearer ***; again ***"
    assert redact("tab stop") == "tab stop"
    assert redact(123) == "123"


def test_key_from_env_var(monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    key = resolve_api_key(GeneratorConfig(api_key_env="MY_KEY"))
    assert isinstance(key, Secret) and key.reveal() == KEY
    assert redact(f"x {KEY}") == "x ***"  # resolving registers it


def test_no_key_configured_is_none(monkeypatch):
    monkeypatch.delenv("PRISM_GENERATOR_API_KEY", raising=False)
    assert resolve_api_key(GeneratorConfig()) is None


def test_key_from_databricks_secret(monkeypatch):
    monkeypatch.delenv("PRISM_GENERATOR_API_KEY", raising=False)
    cfg = GeneratorConfig(api_key_secret="llm/token")
    assert resolve_api_key(cfg, dbutils=FakeDbutils).reveal() == KEY
    with pytest.raises(ConfigError, match="cannot read Databricks secret llm/other") as ei:
        resolve_api_key(GeneratorConfig(api_key_secret="llm/other"), dbutils=FakeDbutils)
    assert KEY not in str(ei.value)


def test_databricks_secret_outside_databricks(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("PRISM_GENERATOR_API_KEY", raising=False)
    cfg = GeneratorConfig(api_key_secret="llm/token")
    with pytest.raises(ConfigError, match="needs Databricks"):
        resolve_api_key(cfg)
    monkeypatch.setenv("PRISM_GENERATOR_API_KEY", KEY)  # the env var is the fallback
    assert resolve_api_key(cfg).reveal() == KEY


def test_config_holds_names_only():
    with pytest.raises(ValueError, match="environment variable name"):
        GeneratorConfig(api_key_env="sk-live-abc123")
    with pytest.raises(ValueError, match="scope/key"):
        GeneratorConfig(api_key_secret="justakey")
    flat = to_flat_dict(Settings())
    assert flat["synth.generator.api_key_env"] == "PRISM_GENERATOR_API_KEY"


def test_logging_filter_masks_messages_args_and_tracebacks(caplog):
    register_secret(KEY)
    install_redaction(logging.getLogger())
    caplog.handler.addFilter(RedactingFilter())
    log = logging.getLogger("prismatic.test.secrets")
    with caplog.at_level(logging.INFO):
        log.info("calling with key %s", KEY)
        log.warning(f"inline {KEY}")
        try:
            raise RuntimeError(f"server said {KEY}")
        except RuntimeError:
            log.exception("failed")
    assert KEY not in caplog.text
    assert caplog.text.count("***") >= 3
    assert install_redaction() is install_redaction()  # idempotent


def test_json_formatted_logs_do_not_leak_the_exception_message():
    import io

    from pyspark.logger.logger import JSONFormatter

    register_secret(KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())  # reads record.exc_info itself, not the redacted exc_text
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("prismatic.test.secrets.json")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"server said {KEY}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert KEY not in stream.getvalue()
    assert entry["exception"]["class"] == "RuntimeError" and entry["exception"]["msg"] == "server said ***"
    assert entry["exception"]["stacktrace"], "the traceback frames are kept"
