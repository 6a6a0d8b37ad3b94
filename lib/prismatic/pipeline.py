"""`prism run`: the whole pipeline on the config's inputs, stage after stage, each one idempotent."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.table import Table

from prismatic.assets import asset_dir, fetch
from prismatic.config import Settings, resource_path
from prismatic.errors import ConfigError, InputError
from prismatic.progress import StageProgress
from prismatic.tables import TABLES, TableStore

log = logging.getLogger(__name__)


def resolve_input_path(path: str) -> str:
    """``asset:NAME/FILE`` -> the fetched asset file; a relative path -> relative to the repo root if it exists.

    Raises:
        InputError: ``FILE`` resolves (through ``..``, an absolute path or a symlink) outside the asset's folder.
    """
    if path.startswith("asset:"):
        name, _, rest = path[len("asset:") :].partition("/")
        main = fetch(name)
        base = main if main.is_dir() else asset_dir(name)
        if not rest:
            return str(main)
        root, target = asset_dir(name).resolve(), (base / rest).resolve()
        if target != root and root not in target.parents:
            raise InputError(
                f"{path!r} points outside the folder of asset {name!r} ({root})",
                hint="name a file inside the asset, e.g. asset:snli/snli_1.0_test.jsonl",
            )
        return str(target)
    p = resource_path(path)
    return str(p) if p.exists() else path


def demo_inputs(settings: Settings) -> list[dict]:
    inputs = settings.demo.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and {"path", "source"} <= set(i) for i in inputs):
        raise ConfigError("config key 'demo.inputs': must be a list of {path, source, task?, limit?}")
    return inputs


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


def run_pipeline(store: TableStore, settings: Settings, console: Console | None = None) -> dict:
    """Ingest every configured input, dedup, score, diversity, ``demo.synth_rounds`` synthesis rounds (with
    ``synth.train_each_round``: a student trained and evaluated per round); print each stage's counts, then the
    table summary, the round table and the command that opens the MLflow UI. Safe to run again.

    The run is one MLflow run (params = the flattened config, tags = table versions before and after,
    metrics = counts and G-Vendi); the synthesis rounds are its nested runs.
    """
    from prismatic import tracking
    from prismatic.ingest import ingest
    from prismatic.stages import dedup_stage, diversity_stage, score_stage

    console = console or Console()
    results: dict = {"ingest": []}
    demo = settings.demo
    with tracking.run(settings, "pipeline", params=tracking.safe_params(settings)) as mlrun:
        if mlrun is not None:
            tracking.log_table_versions(store.versions(), "versions_read")
        for item in demo_inputs(settings):
            path = resolve_input_path(item["path"])
            rep = ingest(store, [path], item["source"], item.get("task", "generic"), settings, limit=item.get("limit"))
            console.print(
                f"[bold]ingest[/] {item['source']}: {rep.summary()}"
                + (f"  (quarantine: {dict(rep.reasons)})" if rep.reasons else "")
            )
            results["ingest"].append(rep)
        dd = dedup_stage(store, settings)
        console.print(f"[bold]dedup[/] {dd.summary()}")
        results["dedup"] = dd
        with StageProgress(console, "score") as progress:
            sc = score_stage(
                store, settings, where=demo.get("score_where"), limit=demo.get("score_limit"), progress=progress
            )
        console.print(f"[bold]score[/] {sc.summary()}")
        results["score"] = sc
        div = diversity_stage(store, settings, group_by=["source"])
        results["diversity"] = div
        console.print(
            "[bold]diversity[/] "
            + ", ".join(
                f"{r.group_key}: G-Vendi {r.value:.2f} (n={r.n})" for r in div.itertuples() if r.metric == "g_vendi"
            )
        )
        rounds = int(demo.get("synth_rounds", 0) or 0)
        if rounds:
            from prismatic.synth.loop import synthesize

            reports = synthesize(store, demo_synth_settings(settings), rounds=rounds)
            results["synthesize"] = reports
            for r in reports:
                console.print(f"[bold]synthesize[/] {r.summary()}")
            if not reports:
                console.print(
                    f"[bold]synthesize[/] rounds 1..{rounds} of {', '.join(settings.synth.task_list)}"
                    " are done: nothing to do"
                )
        if demo.get("train"):
            from prismatic.train import eval_stage, train_stage

            tr = train_stage(store, settings, student=demo.get("student"))
            console.print(f"[bold]train[/] {tr.summary()}")
            ev = eval_stage(store, settings, model_path=tr.path, benchmarks=demo.get("benchmarks"))
            console.print(
                "[bold]eval[/] " + ", ".join(f"{r['benchmark']}: {r['accuracy']:.3f} (n={r['n']})" for r in ev)
            )
            results["train"], results["eval"] = tr, ev
        if mlrun is not None:
            import mlflow

            metrics = {
                "pool": dd.pool,
                "duplicates_exact": dd.exact,
                "duplicates_near": dd.near,
                "scored": sc.scored,
                "score_quarantined": sc.quarantined,
            }
            metrics.update(
                {f"{r.metric}.{r.scope}.{r.group_key}": float(r.value) for r in div.itertuples() if r.value == r.value}
            )
            mlflow.log_metrics({k.replace(":", "_"): v for k, v in metrics.items()})
            tracking.log_table_versions(store.versions(), "versions_written")
    console.print(table_summary(store))
    if store.exists("rounds"):
        from prismatic.synth.rounds import round_table

        console.print(round_table(store))
    if settings.tracking.enabled:
        from prismatic.tracking import ui_command

        console.print(f"MLflow: {ui_command(settings)}")
    return results
