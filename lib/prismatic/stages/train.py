"""Stage train: a student on the pool (probe on frozen sentence features, or a fine-tuned causal LM)."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class TrainStage(Stage):
    name = "train"
    help = (
        "Train a student on the pool (probe: classifier on frozen sentence features; lm: fine-tuned causal LM);"
        " tracked students are registered as MLflow models."
    )
    section = "train"
    reads = ("samples", "duplicates")
    writes = ()
    options = (Option("student", choices=("lm", "probe"), help="lm | probe (default train.student)"),)

    def run(self, ctx: Context, *, student):
        from prismatic.train import train_stage

        return train_stage(ctx.store, ctx.settings, student=student)

    def pipeline_calls(self, settings):
        return [{"student": settings.demo.get("student")}] if settings.demo.get("train") else []
