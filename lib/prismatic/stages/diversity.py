"""Stage diversity: G-Vendi of the scored pool (overall and per group) plus baselines -> ``diversity``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class DiversityStage(Stage):
    name = "diversity"
    help = "G-Vendi of the scored pool (overall and per group) plus baselines -> `diversity`."
    section = "diversity"
    reads = ("samples", "duplicates", "gradients", "assignments")
    writes = ("diversity",)
    options = (
        Option("group_by", help="comma list of source, task, round, origin, cluster"),
        Option("exact", kind=bool, default=False, help="also the exact (d = inf) G-Vendi; small pools only"),
        Option(
            "baselines", kind=bool, default=True, negatable=True, help="embedding Vendi, n-gram entropy, distinct-n"
        ),
    )

    def run(self, ctx: Context, *, group_by, exact, baselines):
        from prismatic.stages._core import diversity_stage

        return diversity_stage(ctx.store, ctx.settings, (group_by or "").split(","), exact=exact, baselines=baselines)

    def pipeline_calls(self, settings):
        return [{"group_by": "source"}]
