"""Stage ingest: files -> ``candidates_bronze``, ``samples``, ``quarantine`` (all files or none)."""

from __future__ import annotations

from typing import Any

from prismatic.stages.base import Context, Option, Stage


class IngestStage(Stage):
    name = "ingest"
    help = "Read candidate samples into candidates_bronze, samples and quarantine (all files or none)."
    section = "ingest"
    reads = ()
    writes = ("candidates_bronze", "samples", "quarantine")
    options = (
        Option(
            "paths",
            multiple=True,
            argument=True,
            required=True,
            help="files, folders, globs (.jsonl, .json, .jsonl.gz, .parquet, .csv) or asset:NAME/FILE",
        ),
        Option("source", short="-s", required=True, help="name of this data source"),
        Option("task", short="-t", default="generic", help="math | nli | generic"),
        Option("limit", kind=int, min=1, help="read at most N rows of each file"),
    )

    def check(self, settings, *, paths, **_: Any) -> None:
        """Fail on a missing input before the store opens (no Spark start, no writer lock for a typo)."""
        from prismatic.ingest import resolve_inputs

        local = [p for p in paths if not p.startswith("asset:")]
        if local:
            resolve_inputs(local)

    def run(self, ctx: Context, *, paths, source, task, limit) -> Any:
        from prismatic.ingest import ingest, resolve_inputs
        from prismatic.inputs import resolve_input_path

        paths = [resolve_input_path(p) if p.startswith("asset:") else p for p in paths]
        files = resolve_inputs(paths)
        with ctx.progress(f"ingest {source}") as progress:
            return ingest(
                ctx.store,
                paths,
                source,
                task,
                ctx.settings,
                on_file=lambda path, i, n: progress(i, len(files)),
                limit=limit,
            )

    def pipeline_calls(self, settings) -> list[dict[str, Any]]:
        from prismatic.inputs import demo_inputs

        return [
            {"paths": [i["path"]], "source": i["source"], "task": i.get("task", "generic"), "limit": i.get("limit")}
            for i in demo_inputs(settings)
        ]
