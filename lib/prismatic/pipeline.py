"""`prism run`: the whole pipeline on the config's inputs, the registry's stages in order, each one idempotent."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.console import Console
from rich.table import Table

from prismatic.config import Settings
from prismatic.errors import ConfigError
from prismatic.output import pipeline_line, report_rows
from prismatic.stages.base import Context
from prismatic.tables import TABLES, TableStore


def table_summary(store: TableStore) -> Table:
    t = Table(title="tables")
    for col in ("table", "rows", "version"):
        t.add_column(col, justify="left" if col == "table" else "right")
    for name in TABLES:
        if store.exists(name):
            t.add_row(name, str(store.count(name)), str(store.version(name)))
    return t


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def demo_synth_settings(settings: Settings) -> Settings:
    """``settings`` with the ``demo.synth`` keys laid over the ``synth`` section (validated), the synthesis config
    of ``prism run``; unchanged when there are none.

    Raises:
        ConfigError: a ``demo.synth`` key that the ``synth`` section does not accept.
    """
    over = settings.demo.get("synth") or {}
    if not over:
        return settings
    from pydantic import ValidationError

    from prismatic.config import SynthConfig

    if not isinstance(over, dict):
        raise ConfigError(f"demo.synth must be a mapping of synth keys, got {over!r}")
    try:
        synth = SynthConfig.model_validate(_deep_merge(settings.synth.model_dump(exclude_unset=True), over))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(["demo.synth", *(str(x) for x in first["loc"])])
        raise ConfigError(f"{where}: {first['msg']}") from None
    return settings.model_copy(update={"synth": synth})


def run_pipeline(ctx: Context, console: Console | None = None) -> dict[str, list]:
    """Every registered stage's :meth:`~prismatic.stages.base.Stage.pipeline_calls`, in the registry's order, on
    one context (the spec resolved once): ingest each configured input, dedup, score, diversity,
    ``demo.synth_rounds`` synthesis rounds (under ``demo.synth``), then train and eval with ``demo.train``. Print a
    line per call, the table summary, the round table and the command that opens the MLflow UI. Safe to run again.

    The run is one MLflow run (params = the flattened config, tags = table versions before and after,
    metrics = counts and G-Vendi); the synthesis rounds are its nested runs.

    Returns:
        Each stage's reports, by stage name, in call order.
    """
    from prismatic import tracking
    from prismatic.stages.registry import STAGES

    console = console or Console()
    settings, store = ctx.settings, ctx.store
    results: dict[str, list] = {}
    with tracking.run(settings, "pipeline", params=tracking.safe_params(settings)) as mlrun:
        ctx.mlflow_run = mlrun
        if mlrun is not None:
            tracking.log_table_versions(store.versions(), "versions_read")
        for stage in STAGES:
            stage_ctx = _stage_context(ctx, stage.name)
            for call in stage.pipeline_calls(settings):
                report = stage(stage_ctx, **call)
                results.setdefault(stage.name, []).append(report)
                for line in _lines(stage.name, report, call, settings):
                    console.print(line)
        if mlrun is not None:
            import mlflow

            mlflow.log_metrics(_metrics(results))
            tracking.log_table_versions(store.versions(), "versions_written")
    console.print(table_summary(store))
    if store.exists("rounds"):
        from prismatic.synth.rounds import round_table

        console.print(round_table(store))
    if settings.tracking.enabled:
        from prismatic.tracking import ui_command

        console.print(f"MLflow: {ui_command(settings)}")
    return results


def _stage_context(ctx: Context, stage: str) -> Context:
    """The context a stage runs in: the run's own; synthesis under ``demo.synth`` (the same store, MLflow run and
    resolved specs: ``demo.synth`` changes only the ``synth`` section, which no spec depends on)."""
    if stage != "synthesize":
        return ctx
    synth_settings = demo_synth_settings(ctx.settings)
    if synth_settings is ctx.settings:
        return ctx
    return dataclasses.replace(ctx, settings=synth_settings)


def _lines(stage: str, report: Any, call: dict, settings: Settings) -> list[str]:
    if stage == "synthesize" and not report:
        rounds = call.get("rounds")
        return [
            f"[bold]synthesize[/] rounds 1..{rounds} of {', '.join(settings.synth.task_list)} are done: nothing to do"
        ]
    return pipeline_line(stage, report, call)


def _metrics(results: dict[str, list]) -> dict[str, float]:
    """The parent run's metrics: pool and duplicates (dedup), scored and quarantined (score), every diversity value
    (``<metric>.<scope>.<group_key>`` with characters MLflow refuses, such as the comma of ``source,round``, as
    ``_``)."""
    from prismatic.synth.rounds import metric_key

    metrics: dict[str, float] = {}
    for dd in results.get("dedup", []):
        metrics.update({"pool": dd.pool, "duplicates_exact": dd.exact, "duplicates_near": dd.near})
    for sc in results.get("score", []):
        metrics.update({"scored": sc.scored, "score_quarantined": sc.quarantined})
    for div in results.get("diversity", []):
        metrics.update(
            {
                f"{r['metric']}.{r['scope']}.{r['group_key']}": float(r["value"])
                for r in report_rows(div)
                if r["value"] == r["value"]
            }
        )
    return {metric_key(k): v for k, v in metrics.items()}  # g_vendi.source_round.seed_math/0
