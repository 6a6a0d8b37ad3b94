"""Where the pipeline's input files are: ``asset:NAME/FILE`` references, repo-relative paths and the demo's list.

Kept apart from :mod:`prismatic.pipeline` so that stages (ingest, the synthesis round's eval sets, the per-round
benchmarks) resolve their inputs without importing the ``prism run`` driver.
"""

from __future__ import annotations

from prismatic.assets import asset_dir, fetch
from prismatic.config import Settings, resource_path
from prismatic.errors import ConfigError, InputError


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
    """The ``demo.inputs`` list of the config: ``{path, source, task?, limit?}`` items, checked."""
    inputs = settings.demo.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and {"path", "source"} <= set(i) for i in inputs):
        raise ConfigError("config key 'demo.inputs': must be a list of {path, source, task?, limit?}")
    return inputs
