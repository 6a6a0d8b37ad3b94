"""Stage score: projected per-sample gradients of the pool under the scoring spec -> ``gradients``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class ScoreStage(Stage):
    name = "score"
    help = "Projected per-sample gradients of the pool under the scoring spec -> `gradients`."
    section = "scoring"
    reads = ("samples", "duplicates", "gradients")
    writes = ("projection_specs", "gradients", "score_quarantine")
    options = (
        Option("where", help="SQL filter on the pool, e.g. \"source = 'snli'\""),
        Option("limit", kind=int, min=1, help="score at most N samples (smallest sample_id first)"),
    )

    def run(self, ctx: Context, *, where, limit):
        from prismatic.stages._core import score_stage

        with ctx.progress("score") as progress:
            return score_stage(ctx.store, ctx.settings, where=where, limit=limit, progress=progress)

    def pipeline_calls(self, settings):
        return [{"where": settings.demo.get("score_where"), "limit": settings.demo.get("score_limit")}]
