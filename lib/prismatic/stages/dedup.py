"""Stage dedup: exact + near duplicates of ``samples`` -> ``duplicates`` (the pool = samples minus duplicates)."""

from __future__ import annotations

from prismatic.stages.base import Context, Stage


class DedupStage(Stage):
    name = "dedup"
    help = "Remove exact and near duplicates from the pool (recorded in `duplicates`)."
    section = "dedup"
    reads = ("samples", "duplicates")
    writes = ("duplicates",)

    def run(self, ctx: Context):
        from prismatic.stages._core import dedup_stage

        return dedup_stage(ctx.store, ctx.settings)

    def pipeline_calls(self, settings):
        return [{}]
