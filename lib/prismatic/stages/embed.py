"""Stage embed: sentence embeddings of the pool (for ``cluster.feature_space = embedding``) -> ``gradients``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class EmbedStage(Stage):
    name = "embed"
    help = "Sentence embeddings of the pool under the encoder spec (diversity.embedding_model) -> `gradients`."
    section = "diversity"
    reads = ("samples", "duplicates", "gradients")
    writes = ("projection_specs", "gradients")
    options = (Option("where", help="SQL filter on the pool, e.g. \"task = 'math'\""),)

    def run(self, ctx: Context, *, where):
        from prismatic.stages._core import embed_stage

        with ctx.progress("embed") as progress:
            return embed_stage(ctx.store, ctx.settings, where=where, progress=progress)
