"""Shared fixtures: one local Spark session per test run; tiers gated by markers (``--slow``, ``--bundle``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption("--bundle", action="store_true", default=False, help="also run tests marked bundle")


def pytest_collection_modifyitems(config, items):
    for marker in ("slow", "bundle"):
        if config.getoption(f"--{marker}"):
            continue
        skip = pytest.mark.skip(reason=f"{marker}: run with --{marker}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def spark():
    from prismatic.config import SparkConfig
    from prismatic.spark import get_spark

    session = get_spark(SparkConfig(master="local[2]", driver_memory="3g", shuffle_partitions=4))
    yield session
    session.stop()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised llama checkpoint (safetensors + tokenizer) for loop / study / training tests."""
    from prismatic.gradients.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
