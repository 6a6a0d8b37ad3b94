"""`prism assets export-proxy`: the exported folder scores with the same spec_id and the same vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prismatic.config import ModelConfig, ScoringConfig
from prismatic.errors import AssetError
from prismatic.gradients.model import PROXY_MANIFEST, export_proxy, load_model, resolve_model_path, weights_sha256
from prismatic.gradients.scoring import Scorer
from prismatic.gradients.udf import spec_for

pytestmark = pytest.mark.model
PAIRS = [("What is 12 plus 30?", "12 + 30 = 42. The answer is 42."), ("Is the sky green?", "No.")]


def test_exported_proxy_gives_the_same_spec_and_vectors(tmp_path):
    out = tmp_path / "volume" / "models" / "smollm2-proxy"
    manifest = export_proxy(ModelConfig(path="builtin:smollm2"), out)
    assert json.loads((out / PROXY_MANIFEST).read_text()) == manifest
    assert manifest["model_id"] == "builtin:smollm2" and manifest["weights_sha256"] == weights_sha256(out)
    assert {"config.json", "model.safetensors"} <= set(manifest["files"]) and "prismatic_source.json" not in manifest[
        "files"
    ]
    shipped = ScoringConfig(d=64, model=ModelConfig(path="builtin:smollm2", device="cpu"))
    exported = ScoringConfig(d=64, model=ModelConfig(path=str(out), device="cpu"))
    assert spec_for(exported).spec_id == spec_for(shipped).spec_id
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    try:
        a = Scorer(load_model(shipped.model), shipped).score(PAIRS)
        b = Scorer(load_model(exported.model), exported).score(PAIRS)
    finally:
        torch.set_num_threads(n)
    assert np.array_equal(np.stack([r.vector for r in a]), np.stack([r.vector for r in b]))
    assert [r.loss for r in a] == [r.loss for r in b]


def test_export_refuses_a_folder_with_files_and_a_changed_copy_is_refused(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(AssetError, match="not an empty folder"):
        export_proxy(ModelConfig(path="builtin:smollm2"), tmp_path / "busy")
    out = tmp_path / "proxy"
    export_proxy(ModelConfig(path="builtin:smollm2"), out)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(AssetError, match="not the exported builtin:smollm2"):
        resolve_model_path(ModelConfig(path=str(out)))


def test_prism_assets_export_proxy(tmp_path, capsys):
    from prismatic.cli import main

    out = tmp_path / "proxy"
    assert main(["assets", "export-proxy", str(out)]) == 0
    manifest = json.loads((out / PROXY_MANIFEST).read_text())
    assert f"builtin:smollm2 -> {out}" in capsys.readouterr().out and manifest["model_id"] == "builtin:smollm2"
    assert main(["assets", "export-proxy", str(out)]) == 2  # not an empty folder: one line, exit 2
