"""Stage synthesize: Prismatic Synthesis rounds (cluster, generate, verify, keep sparse-cluster samples, merge)."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class SynthesizeStage(Stage):
    name = "synthesize"
    help = "Prismatic Synthesis rounds: cluster, generate, verify, keep sparse-cluster samples, merge; resumable."
    section = "synth"
    reads = ("samples", "duplicates", "gradients", "clusters", "assignments", "rounds")
    writes = ("samples", "gradients", "clusters", "assignments", "synth_candidates", "rounds")
    options = (
        Option("rounds", kind=int, help="rounds to have done (default synth.rounds)"),
        Option("target_pool_size", kind=int, help="stop at this pool size"),
        Option("token_budget", kind=int, help="stop after this many generated tokens"),
    )

    def run(self, ctx: Context, *, rounds, target_pool_size, token_budget):
        from prismatic.synth.loop import synthesize

        return synthesize(
            ctx.store,
            ctx.settings,
            rounds=rounds,
            target_pool_size=target_pool_size,
            token_budget=token_budget,
            console=ctx.console,
        )

    def pipeline_calls(self, settings):
        rounds = int(settings.demo.get("synth_rounds", 0) or 0)
        return [{"rounds": rounds}] if rounds else []
