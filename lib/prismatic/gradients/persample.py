"""Per-sample gradients by a plain loop (the paper's method): one forward + backward per sample.

For sample i with completion-only mean loss ℓ_i, g_i = ∇_θ ℓ_i over the selected parameters θ
(``params``: ``all`` or a regex searched in parameter names; tied weights appear once, under their first
name). Gradients are returned per parameter (a dict) or flattened in layout order, and can be written
to a :class:`GradientStore` that keeps N samples × |θ| floats in RAM or, when large, in a disk memmap
laid out block by block so that one parameter block of every sample is one contiguous read.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prismatic.gradients.model import Encoded, collate, completion_nll


def select_params(model: torch.nn.Module, params: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters to differentiate, in ``named_parameters`` order (tied weights once).

    Args:
        params: ``all``, or a regex; a parameter is selected when ``re.search(params, name)`` matches.
    """
    named = list(model.named_parameters(remove_duplicate=True))
    if params == "all":
        out = named
    else:
        try:
            rx = re.compile(params)
        except re.error as e:
            raise ValueError(f"scoring.params={params!r} is not a valid regex: {e}") from None
        out = [(n, p) for n, p in named if rx.search(n)]
    if not out:
        raise ValueError(f"scoring.params={params!r} selects no parameter of the model")
    return out


def param_layout(model: torch.nn.Module, params: str = "all") -> list[tuple[str, int]]:
    """``[(name, numel), ...]`` of the selected parameters: the block layout of a flat gradient."""
    return [(n, p.numel()) for n, p in select_params(model, params)]


@contextlib.contextmanager
def grads_enabled(model: torch.nn.Module, named: Sequence[tuple[str, torch.nn.Parameter]]):
    """Temporarily make exactly ``named`` require grad (every other parameter frozen), then restore all flags."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for _, p in named}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@dataclass
class SampleGrad:
    """One sample's loss, loss-bearing token count and gradient per parameter name (float32, on CPU)."""

    loss: float
    n_tokens: int
    grads: dict[str, torch.Tensor]

    def flat(self, layout: Sequence[tuple[str, int]]) -> torch.Tensor:
        return torch.cat([self.grads[n].reshape(-1) for n, _ in layout])


def per_sample_gradients(
    model: torch.nn.Module, samples: Sequence[Encoded], params: str = "all", device: torch.device | None = None
) -> Iterator[SampleGrad]:
    """Yield each sample's gradient from its own forward + backward (no padding, batch of one).

    Args:
        model: the causal LM (its parameters' requires_grad flags are restored afterwards).
        samples: encoded pairs; a sample with ``error`` set is an error here (filter first).
        params: ``all`` or a regex of parameter names.
        device: where to run (default: the model's device).
    """
    named = select_params(model, params)
    dev = device or next(model.parameters()).device
    with grads_enabled(model, named):
        for s in samples:
            if s.error:
                raise ValueError(f"sample cannot be differentiated: {s.error}")
            ids, labels = collate([s], pad_id=0, device=dev)
            logits = model(input_ids=ids, use_cache=False).logits
            loss, n = completion_nll(logits, labels)
            grads = torch.autograd.grad(loss[0], [p for _, p in named], allow_unused=True)
            out = {
                name: (g if g is not None else torch.zeros_like(p)).detach().float().cpu()
                for (name, p), g in zip(named, grads, strict=True)
            }
            yield SampleGrad(float(loss[0].detach()), int(n[0]), out)


class GradientStore:
    """N × |θ| gradients stored block by block (RAM below ``max_ram_bytes``, else a disk memmap).

    Block ``name`` of every sample is the contiguous (N, size) array ``store.block(name)``.

    Args:
        layout: ``[(block_name, size), ...]``.
        n: number of samples.
        directory: where a memmap goes (default: a temporary folder, removed by :meth:`close`).
        max_ram_bytes: above this the store is a memmap.
        dtype: ``float32`` keeps gradients as they are. ``float16`` halves the bytes for large oracles: each
            gradient is stored as g · √|θ| / ‖g‖ (unit-normalized, entries of order 1, so float16's range and
            11-bit mantissa lose nothing that matters for cosines: errors of 1e-5 on a 21K-parameter model, less
            on larger ones). Only directions survive (``scaled`` is True), which is all the cosine kernel,
            G-Vendi and a normalized projection use.
    """

    def __init__(
        self,
        layout: Sequence[tuple[str, int]],
        n: int,
        directory: str | Path | None = None,
        max_ram_bytes: int = 2 << 30,
        dtype: str = "float32",
    ):
        if n < 1:
            raise ValueError(f"GradientStore needs n >= 1, got {n=}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"GradientStore dtype must be float32 or float16, got {dtype=}")
        self.layout = [(str(a), int(b)) for a, b in layout]
        self.n = int(n)
        self.dtype = np.dtype(dtype)
        self.scaled = dtype == "float16"
        self.dim = sum(s for _, s in self.layout)
        total = self.n * self.dim
        self._tmp: Path | None = None
        if total * self.dtype.itemsize <= max_ram_bytes:
            self._data = np.zeros(total, dtype=self.dtype)
        else:
            if directory is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="prism-grads-"))
                directory = self._tmp
            path = Path(directory) / f"gradients.{self.dtype.name}"
            self._data = np.memmap(path, dtype=self.dtype, mode="w+", shape=(total,))
        self._blocks: dict[str, np.ndarray] = {}
        off = 0
        for name, size in self.layout:
            self._blocks[name] = self._data[off : off + self.n * size].reshape(self.n, size)
            off += self.n * size
        self.losses = np.full(self.n, np.nan)
        self.n_tokens = np.zeros(self.n, dtype=np.int64)
        self.norms = np.full(self.n, np.nan)  # ‖g_i‖ (float64), kept even when only directions are stored

    @property
    def on_disk(self) -> bool:
        return isinstance(self._data, np.memmap)

    def write(self, i: int, sample: SampleGrad) -> None:
        norm = math.sqrt(sum(float(sample.grads[n].double().pow(2).sum()) for n, _ in self.layout))
        self.norms[i] = norm
        scale = math.sqrt(self.dim) / norm if self.scaled and norm > 0 and math.isfinite(norm) else 1.0
        for name, _ in self.layout:
            g = sample.grads[name].reshape(-1).numpy()
            self._blocks[name][i] = g * np.float32(scale) if scale != 1.0 else g
        self.losses[i] = sample.loss
        self.n_tokens[i] = sample.n_tokens

    def block(self, name: str) -> np.ndarray:
        return self._blocks[name]

    def blocks(self) -> dict[str, np.ndarray]:
        return dict(self._blocks)

    def close(self) -> None:
        self._blocks.clear()  # drop every view of the memmap; on POSIX the file can then be removed
        self._data = np.zeros(0, dtype=np.float32)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> GradientStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fill_store(
    model: torch.nn.Module,
    samples: Sequence[Encoded],
    params: str = "all",
    directory: str | Path | None = None,
    max_ram_bytes: int = 2 << 30,
    dtype: str = "float32",
) -> GradientStore:
    """Run the per-sample loop over ``samples`` and keep every gradient in a :class:`GradientStore`."""
    store = GradientStore(param_layout(model, params), len(samples), directory, max_ram_bytes, dtype)
    try:
        for i, g in enumerate(per_sample_gradients(model, samples, params)):
            store.write(i, g)
    except BaseException:
        store.close()
        raise
    return store
