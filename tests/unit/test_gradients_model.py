"""Proxy loading (folder, GGUF conversion cache), completion-only encoding, and the projection spec."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from prismatic import assets
from prismatic.assets import sha256_file
from prismatic.config import ModelConfig, ScoringConfig
from prismatic.errors import AssetError, SpecMismatchError
from prismatic.gradients import model as gm
from prismatic.gradients.model import (
    IGNORE_INDEX,
    collate,
    completion_nll,
    encode,
    load_model,
    resolve_device,
    weights_sha256,
)
from prismatic.gradients.spec import ProjectionSpec, check_same_spec
from prismatic.gradients.tiny import save_tiny, tiny_llama, tiny_tokenizer

SHA = "ab" * 32


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_encode_labels_exactly_the_completion_turn(tok):
    e = encode(tok, "what is 2 plus 3 ?", "the answer is 5 .", max_tokens=64)
    head = tok.apply_chat_template(
        [{"role": "user", "content": "what is 2 plus 3 ?"}], add_generation_prompt=True, tokenize=False
    )
    n_prompt = len(tok(head, add_special_tokens=False)["input_ids"])
    assert e.error is None and not e.truncated
    assert e.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert e.labels[n_prompt:] == e.input_ids[n_prompt:]
    assert tok.decode(e.input_ids[n_prompt:]) == "the answer is 5 . <|im_end|>"
    assert e.n_tokens == len(e.input_ids) - n_prompt == 6


def test_encode_truncation_sides_are_honoured_and_recorded(tok):
    prompt, completion = " ".join(["w1"] * 30), " ".join(["w2"] * 30)
    full = encode(tok, prompt, completion, max_tokens=200)
    right = encode(tok, prompt, completion, max_tokens=40, truncation_side="right")
    left = encode(tok, prompt, completion, max_tokens=40, truncation_side="left")
    assert not full.truncated and right.truncated and left.truncated
    assert right.input_ids == full.input_ids[:40] and len(right) == 40
    assert left.input_ids == full.input_ids[-40:]
    assert left.n_tokens == full.n_tokens  # the whole completion is kept
    tail = encode(tok, prompt, completion, max_tokens=20, truncation_side="left")
    assert tail.input_ids == full.input_ids[-20:] and tail.n_tokens == 19  # its first token has no context
    assert right.n_tokens == 40 - (len(full) - full.n_tokens)
    cut = encode(tok, prompt, completion, max_tokens=20, truncation_side="right")
    assert cut.error == "empty_completion" and cut.truncated
    with pytest.raises(ValueError, match="truncation_side"):
        encode(tok, prompt, completion, 40, truncation_side="middle")


def test_encode_empty_completion_and_plain_format(tok):
    assert encode(tok, "what is 2 ?", "  ", 64).error == "empty_completion"
    e = encode(tok, "what is 2 ?", "5", 64, chat_template=False)
    assert e.input_ids == [tok.bos_token_id, *tok("what is 2 ?", add_special_tokens=False)["input_ids"],
                           tok.convert_tokens_to_ids("5"), tok.eos_token_id]  # fmt: skip
    assert e.labels[-2:] == e.input_ids[-2:] and e.n_tokens == 2
    assert encode(tok, "a", "b", 64, min_completion_tokens=5).error == "empty_completion"


def test_collate_right_pads_and_nll_is_the_completion_mean(tok):
    a, b = encode(tok, "what is 2 ?", "the answer is 2", 64), encode(tok, "w1 w2 w3 w4 w5", "w6", 64)
    ids, labels = collate([a, b], pad_id=2)
    assert ids.shape == (2, max(len(a), len(b)))
    assert (labels[1, len(b) :] == IGNORE_INDEX).all() and (ids[1, len(b) :] == 2).all()
    logits = torch.randn(2, ids.shape[1], len(tok), generator=torch.Generator().manual_seed(0))
    loss, n = completion_nll(logits, labels)
    logp = torch.log_softmax(logits, -1)
    for i, e in enumerate([a, b]):
        terms = [-logp[i, t - 1, e.labels[t]] for t in range(1, len(e)) if e.labels[t] != IGNORE_INDEX]
        assert n[i] == e.n_tokens == len(terms)
        assert torch.allclose(loss[i], torch.stack(terms).mean())


def test_load_folder_is_frozen_with_safetensors_sha(tiny_dir):
    loaded = load_model(ModelConfig(path=str(tiny_dir), device="cpu"))
    files = sorted(tiny_dir.glob("*.safetensors"))
    want = hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()
    assert loaded.weights_sha256 == want == weights_sha256(tiny_dir)
    assert loaded.model_id == tiny_dir.name and loaded.device == torch.device("cpu")
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    assert loaded.tokenizer.chat_template


def test_load_rejects_what_it_cannot_trust(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ValueError, match="safetensors"):
        load_model(ModelConfig(path=str(tmp_path), device="cpu"))
    with pytest.raises(ValueError, match="not .gguf"):
        load_model(ModelConfig(path=str(tmp_path / "weights.bin"), device="cpu"))
    with pytest.raises(ValueError, match="builtin"):
        load_model(ModelConfig(path="builtin:nope", device="cpu"))
    with pytest.raises(ValueError, match="neither"):
        load_model(ModelConfig(path="./no/such/place/x", device="cpu"))


def test_hub_id_goes_through_the_hub_client_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match="cannot fetch model 'HuggingFaceTB/SmolLM2-135M-Instruct'"):
        load_model(ModelConfig(path="HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_device_resolution_without_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


def test_gguf_is_converted_once_into_an_atomic_cache(tmp_path, monkeypatch):
    """The conversion path with transformers' GGUF readers stubbed by a tiny model (no GGUF writer needed)."""
    import transformers

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really" * 100)
    calls = []

    def fake_model(folder, gguf_file=None, trust_remote_code=False, **kw):
        calls.append((folder, gguf_file, trust_remote_code))
        return tiny_llama(len(tiny_tokenizer()))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    out = gm.convert_gguf(gguf, tmp_path / "converted")
    assert out == tmp_path / "converted" / sha256_file(gguf)[:16]
    assert calls == [(gguf.parent, "m.gguf", False)]
    marker = json.loads((out / gm.CONVERTED_MARKER).read_text())
    assert marker["source_sha256"] == sha256_file(gguf)
    files = sorted(out.glob("*.safetensors"))
    assert files and (out / "config.json").exists()
    assert marker["files"] == {f.name: sha256_file(f) for f in files}
    want = hashlib.sha256("".join(f"{f.name}:{sha256_file(f)}\n" for f in files).encode()).hexdigest()
    assert marker["weights_sha256"] == want == weights_sha256(out)  # what is loaded, not the GGUF
    assert [p.name for p in (tmp_path / "converted").iterdir()] == [out.name]  # no temp folder left
    assert gm.convert_gguf(gguf, tmp_path / "converted") == out and len(calls) == 1  # cached


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A GGUF path whose conversion is stubbed by the tiny model; returns (gguf, out_root, calls)."""
    import transformers

    monkeypatch.setenv("PRISM_ASSETS", str(tmp_path / "assets"))  # sidecar hash records go there
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-not-really" * 100)
    calls = []

    def fake_model(folder, gguf_file=None, trust_remote_code=False, **kw):
        calls.append(gguf_file)
        return tiny_llama(len(tiny_tokenizer()))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny_tokenizer())
    return gguf, tmp_path / "converted", calls


def _overwrite_weights(folder, n=16):
    """Overwrite n float32 weights in the middle of the safetensors file, as the integrity finding did."""
    f = next(folder.glob("*.safetensors"))
    data = bytearray(f.read_bytes())
    mid = len(data) // 2 - (len(data) // 2) % 4
    data[mid : mid + 4 * n] = b"\x00\x00\x80\x3f" * n  # 1.0f
    f.write_bytes(bytes(data))


def test_a_tampered_converted_cache_is_caught_and_converted_again(fake_gguf, caplog):
    gguf, root, calls = fake_gguf
    out = gm.convert_gguf(gguf, root)
    clean = weights_sha256(out)
    _overwrite_weights(out)
    assert weights_sha256(out) != clean  # size unchanged, mtime changed: the sidecar record is not trusted
    with caplog.at_level("WARNING", logger="prismatic.gradients.model"):
        again = gm.convert_gguf(gguf, root)
    assert again == out and len(calls) == 2 and weights_sha256(out) == clean
    assert "does not match its recorded sha256" in caplog.text
    assert [p.name for p in root.iterdir()] == [out.name]  # the bad copy is gone


def test_a_cache_without_its_own_record_is_converted_again(fake_gguf):
    gguf, root, calls = fake_gguf
    out = gm.convert_gguf(gguf, root)
    marker = out / gm.CONVERTED_MARKER
    old = json.loads(marker.read_text())
    marker.write_text(json.dumps({k: old[k] for k in ("source", "source_sha256", "converter")}))  # older prismatic
    assert gm.convert_gguf(gguf, root) == out and len(calls) == 2
    assert json.loads(marker.read_text())["weights_sha256"] == weights_sha256(out)


def test_a_bad_cache_that_cannot_be_moved_is_one_clear_error(fake_gguf, monkeypatch):
    gguf, root, _ = fake_gguf
    out = gm.convert_gguf(gguf, root)
    _overwrite_weights(out)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gm.os, "rename", refuse)
    with pytest.raises(AssetError, match=r"does not match its recorded sha256 \(.*\) and cannot be moved away") as err:
        gm.convert_gguf(gguf, root)
    assert str(out) in err.value.hint


def test_the_spec_follows_the_weights_that_were_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_ASSETS", str(tmp_path / "assets"))
    a, b = save_tiny(tmp_path / "a", seed=0), save_tiny(tmp_path / "b", seed=1)
    cfg = ScoringConfig(d=64)
    la, lb = (load_model(ModelConfig(path=str(d), device="cpu")) for d in (a, b))
    spec_a, spec_b = (ProjectionSpec.from_config(cfg, "same-name", m.weights_sha256) for m in (la, lb))
    assert spec_a.spec_id != spec_b.spec_id  # another weight file: another spec, even under one model name
    _overwrite_weights(a)
    tampered = load_model(ModelConfig(path=str(a), device="cpu"))
    assert tampered.weights_sha256 == weights_sha256(a) != la.weights_sha256
    assert ProjectionSpec.from_config(cfg, "same-name", tampered.weights_sha256).spec_id != spec_a.spec_id


def test_weights_that_change_while_loading_are_refused(tiny_dir, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("PRISM_ASSETS", str(tmp_path / "assets"))
    real = transformers.AutoModelForCausalLM.from_pretrained

    def touching(folder, **kw):
        model = real(folder, **kw)
        f = next(Path(folder).glob("*.safetensors"))
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", touching)
    with pytest.raises(AssetError, match="changed while they were loaded"):
        load_model(ModelConfig(path=str(tiny_dir), device="cpu"))


def test_weight_digests_are_remembered_by_size_and_mtime(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_ASSETS", str(tmp_path / "assets"))
    hashed = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p, *a, **k: hashed.append(Path(p).name) or real(p, *a, **k))
    first = weights_sha256(tiny_dir)
    assert hashed and weights_sha256(tiny_dir) == first and len(hashed) == len(list(tiny_dir.glob("*.safetensors")))
    assert list((tmp_path / "assets" / "hashes").glob("*.sha256"))


def _spec(**kw) -> ProjectionSpec:
    return ProjectionSpec(model_id="builtin:smollm2", weights_sha256=SHA, **kw)


def test_spec_id_is_the_hash_of_canonical_json_and_sees_every_field():
    s = _spec()
    assert s.spec_id == hashlib.sha256(s.canonical_json().encode()).hexdigest()[:16]
    assert json.loads(s.canonical_json())["projector"].startswith("prismatic-rademacher")
    changed = {
        "params": "layers", "d": 512, "seed": 1, "kind": "dense", "block": 4, "embed_block": 16,
        "dtype": "bfloat16", "max_tokens": 256, "truncation_side": "left", "chat_template": False,
        "loss": "sum", "weights_sha256": "cd" * 32, "model_id": "other",
    }  # fmt: skip
    ids = {replace(s, projector="", **{k: v}).spec_id for k, v in changed.items()}
    assert len(ids) == len(changed) and s.spec_id not in ids
    assert _spec().spec_id == s.spec_id  # stable


def test_spec_rows_round_trip_and_config():
    s = ProjectionSpec.from_config(ScoringConfig(d=256, seed=3, kind="dense"), "m", SHA)
    row = s.to_row()
    assert set(row) == {"spec_id", "spec_json", "model_id", "weights_sha256", "kind", "d", "seed"}
    assert (row["d"], row["seed"], row["kind"]) == (256, 3, "dense")
    assert ProjectionSpec.from_row(row) == s
    with pytest.raises(SpecMismatchError):
        ProjectionSpec.from_row({**row, "spec_id": "0" * 16})
    with pytest.raises(ValueError, match="kind"):
        _spec(kind="gaussian")
    with pytest.raises(ValueError, match="weights_sha256"):
        ProjectionSpec(model_id="m", weights_sha256="xyz")


def test_check_same_spec():
    assert check_same_spec(["a1", "a1", "a1"]) == "a1"
    with pytest.raises(SpecMismatchError, match="2 projection specs"):
        check_same_spec(["a1", "b2", "a1"])
    with pytest.raises(SpecMismatchError):
        check_same_spec(["a1", None])
    with pytest.raises(ValueError):
        check_same_spec([])
