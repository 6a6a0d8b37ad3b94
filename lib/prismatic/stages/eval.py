"""Stage eval: accuracy of a student on benchmark files or built-in benchmarks -> ``eval_results``."""

from __future__ import annotations

from prismatic.stages.base import Context, Option, Stage


class EvalStage(Stage):
    name = "eval"
    help = "Accuracy of a student on benchmark files or built-in benchmarks -> `eval_results`."
    section = "train"
    reads = ()
    writes = ("eval_results",)
    options = (
        Option(
            "model",
            help="student folder, or a registered model: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model"
            " (default: the latest trained)",
        ),
        Option("benchmark", short="-b", multiple=True, help="built-in name or JSONL file"),
        Option(
            "method", choices=("loglik", "generate"), help="lm student: loglik | generate (default train.eval_method)"
        ),
    )

    def run(self, ctx: Context, *, model, benchmark, method):
        from prismatic.train import eval_stage

        return eval_stage(
            ctx.store, ctx.settings, model_path=model, benchmarks=list(benchmark or ()) or None, method=method
        )

    def pipeline_calls(self, settings):
        return [{"benchmark": settings.demo.get("benchmarks")}] if settings.demo.get("train") else []
