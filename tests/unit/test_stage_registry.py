"""The stage registry: each stage declares a real config section, real tables and the options its run() takes."""

from __future__ import annotations

import inspect

import pytest

from prismatic.config import Settings
from prismatic.stages.base import Stage
from prismatic.stages.registry import STAGES, get_stage, stage_names
from prismatic.tables import TABLES


def test_names_are_unique_and_found():
    assert len(set(stage_names())) == len(STAGES)
    assert all(get_stage(s.name) is s for s in STAGES)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_declarations_name_real_sections_tables_and_run_parameters(stage: Stage):
    assert type(stage).__module__ == f"prismatic.stages.{stage.name}"  # one module per stage, named after it
    assert stage.section in Settings.model_fields
    assert set(stage.reads) <= set(TABLES) and set(stage.writes) <= set(TABLES)
    params = inspect.signature(stage.run).parameters
    declared = [o.name for o in stage.options]
    assert sorted(p for p in params if p not in ("self", "ctx")) == sorted(declared)
    assert len(set(declared)) == len(declared)


def test_unknown_option_and_unknown_stage_are_errors():
    from prismatic.errors import PrismError

    with pytest.raises(TypeError, match="unknown option"):
        get_stage("dedup")(None, where="x")  # type: ignore[arg-type]
    with pytest.raises(PrismError, match="no stage named 'bogus'"):
        get_stage("bogus")
