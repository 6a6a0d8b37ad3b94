"""The stages in pipeline order: the one list the CLI, ``prism run``, ``jobs/<stage>.py`` and the bundle test
are built from."""

from __future__ import annotations

from prismatic.stages.base import Stage
from prismatic.stages.cluster import ClusterStage
from prismatic.stages.dedup import DedupStage
from prismatic.stages.diversity import DiversityStage
from prismatic.stages.embed import EmbedStage
from prismatic.stages.eval import EvalStage
from prismatic.stages.ingest import IngestStage
from prismatic.stages.score import ScoreStage
from prismatic.stages.study import StudyStage
from prismatic.stages.synthesize import SynthesizeStage
from prismatic.stages.train import TrainStage

STAGES: tuple[Stage, ...] = (
    IngestStage(),
    DedupStage(),
    ScoreStage(),
    EmbedStage(),
    DiversityStage(),
    ClusterStage(),
    SynthesizeStage(),
    TrainStage(),
    EvalStage(),
    StudyStage(),
)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    from prismatic.errors import PrismError

    raise PrismError(f"no stage named {name!r}", hint="stages: " + ", ".join(stage_names()))
