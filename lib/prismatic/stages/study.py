"""Stage study: diversity-vs-OOD study (Spearman rho of each metric against OOD accuracy) -> ``study``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class StudyStage(Stage):
    name = "study"
    help = "Diversity-vs-OOD study: Spearman rho of each diversity metric against OOD accuracy -> `study`, MLflow."
    section = "study"
    reads = ("samples", "duplicates", "gradients")
    writes = ("study", "eval_results")
    options = (
        Option("subsets", kind=int, help="K subsets (default study.subsets)"),
        Option("student", choices=("lm", "probe"), help="probe | lm (default study.student)"),
        Option("force", kind=bool, default=False, help="recompute a study already recorded"),
    )

    def run(self, ctx: Context, *, subsets, student, force):
        from prismatic.train import study_stage

        with ctx.progress("study") as progress:
            return study_stage(
                ctx.store, ctx.settings, subsets=subsets, student=student, force=force, progress=progress
            )
