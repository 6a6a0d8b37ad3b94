"""Fast projector: every sample's projected gradient from ONE batched forward + backward.

For a linear layer W (out × in) the per-sample gradient is G = Σ_t δ_t x_tᵀ (x_t: the layer's input at
position t, δ_t = ∂ℓ/∂(W x_t): the gradient of the sample's loss at the layer's output). With seeded
Rademacher P_o (k × out) and P_i (k × in), entries ±1/√k (so E‖P_o G P_iᵀ‖² = ‖G‖²),

    P_o G P_iᵀ = Σ_t (P_o δ_t)(P_i x_t)ᵀ       (k × k; = (P_o ⊗ P_i) vec G),

so forward hooks keep P_i x_t (k numbers per token) and tensor hooks on the layer outputs turn δ_t into
P_o δ_t during the backward; no per-sample gradient is ever formed. The weights stay frozen
(``requires_grad=False``) and the input-embedding output is made a leaf that requires grad, so the
backward computes activation gradients only: no weight-gradient GEMMs.

Other parameter groups (all per sample, in the same backward):

- embedding (V × h): G = Σ_t e_{id_t} δ_tᵀ, so P_o G P_iᵀ = Σ_t P_o[:, id_t] (P_i δ_t)ᵀ — a gather of
  P_o's columns per token. Tokens equal to ``padding_idx`` are skipped (their row gets no gradient in
  ``nn.Embedding``). A tied LM head adds its Linear term to the same block with the same P_o, P_i. The
  input / output embedding is one matrix with a large share of ‖g‖² (17 % on SmolLM2), so it gets a
  larger block, k_e × k_e (``embed_block``), at the cost of one (V × k_e) product per token;
- RMSNorm / LayerNorm weights: exact, Σ_t δ_t ⊙ n_t (n_t the normalized input); biases: exact, Σ_t δ_t.

A side of size n ≤ k is kept exactly (P = I): a sketch that does not compress would only add noise.
The blocks of the selected parameters are concatenated (in ``named_parameters`` order) into z ∈ R^D and
projected to d by a seeded sign hash (:class:`SignHashProjector`: each coordinate of z added, with a random
sign, to one of the d outputs; the second moment of a dense Rademacher matrix at O(D) cost instead of
O(D · d)), then normalized. Because the second stage is O(D), wide blocks cost only their hooks: the
defaults k = 32, k_e = 64 give D ≈ 254 K on SmolLM2 (k = 8, k_e = 32 with a dense second stage, the former
default, gave D ≈ 50 K and 2–3× the stage-1 G-Vendi error on bench/gradients' hardest set; the curve is in
bench/results/projection_tradeoff.txt).

Loss: Σ_b ℓ_b with ℓ_b the mean completion-token NLL of sample b, so the hooks see every sample's own
gradient. Sequences are right-padded and run without an attention mask (causal attention: real positions
never see the padding, and padded positions have no loss, hence δ = 0 there; they are masked as well).
Prompt positions carry no loss but do carry gradient (later completion tokens attend to them), so they
count, exactly as in autograd.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from prismatic.gradients.model import Encoded, collate, completion_nll, pad_id_of
from prismatic.gradients.persample import select_params
from prismatic.gradients.projectors import DenseRademacherProjector, RademacherGenerator, SignHashProjector

FINAL_KINDS = ("hash", "dense")


def _norm_kind(mod: nn.Module) -> tuple[str, float] | None:
    """("layer" | "rms", eps) for normalization modules whose per-sample gradients are computed exactly."""
    if isinstance(mod, nn.LayerNorm):
        return ("layer", float(mod.eps)) if mod.elementwise_affine else None
    w = getattr(mod, "weight", None)
    if "RMSNorm" in type(mod).__name__ and isinstance(w, nn.Parameter) and w.ndim == 1:
        eps = getattr(mod, "variance_epsilon", getattr(mod, "eps", None))
        if eps is not None:
            return "rms", float(eps)
    return None


def normalized(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    """n_t, the normalized input that a norm layer's weight multiplies (float32), as transformers computes it.

    RMS: x · rsqrt(mean(x²) + eps) in float32, rounded to the input dtype (llama's ``LlamaRMSNorm``); for
    float32 inputs that is ``F.rms_norm`` (one fused op). Layer: ``F.layer_norm`` without affine.
    """
    if kind == "rms" and x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    if kind == "rms":
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype).float()
    if kind == "layer":
        return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    raise ValueError(f"unknown norm {kind=}")


@dataclass
class BatchResult:
    """Per-sample outputs of one batch. ``vectors`` rows are unit norm, NaN where ``errors[b]`` is set."""

    vectors: np.ndarray
    loss: np.ndarray
    n_tokens: np.ndarray
    errors: list[str | None]


def finish(y: torch.Tensor, loss: torch.Tensor, n_tokens: torch.Tensor) -> BatchResult:
    """Unit-normalize projected rows and flag the ones that cannot be used (for quarantine by the caller)."""
    y = y.detach().double().cpu()
    norm = y.norm(dim=1)
    loss_np = loss.detach().double().cpu().numpy()
    errors: list[str | None] = []
    for b in range(y.shape[0]):
        if not np.isfinite(loss_np[b]):
            errors.append("nonfinite_loss")
        elif not torch.isfinite(norm[b]):
            errors.append("nonfinite_gradient")
        elif norm[b] == 0:
            errors.append("zero_gradient")
        else:
            errors.append(None)
    ok = torch.tensor([e is None for e in errors])
    vec = torch.full_like(y, float("nan"))
    vec[ok] = y[ok] / norm[ok, None]
    return BatchResult(vec.float().numpy(), loss_np, n_tokens.detach().cpu().numpy().astype(np.int64), errors)


class KroneckerProjector:
    """Hooks that turn one batched forward + backward into (B, d) projected per-sample gradients.

    Args:
        model: a causal LM whose parameters live in Linear, Embedding and RMSNorm/LayerNorm modules (llama,
            qwen2, mistral, ...). Its parameters are frozen while it scores.
        d: output dimension.
        seed: seeds P_o, P_i of every block and the final projection.
        block: k, the side of each linear weight's k × k block.
        embed_block: k_e, the side of the input / output embedding's block (one matrix that carries a large
            share of the gradient norm, so it gets a larger sketch; the extra cost is a (V × k_e) product).
        params: ``all`` or a regex of parameter names to include.
        device: where the projections run (default: the model's device).
        final: the second stage, z (D) -> d: ``hash`` (default; :class:`SignHashProjector`, O(D) per sample, so
            wide blocks stay cheap) or ``dense`` (:class:`DenseRademacherProjector`, O(D · d), the former default).
        cache_bytes: memory for keeping the dense final D × d matrix between batches (0: regenerate each time).
    """

    def __init__(
        self,
        model: nn.Module,
        d: int = 1024,
        seed: int = 0,
        block: int = 32,
        embed_block: int = 64,
        params: str = "all",
        device: torch.device | str | None = None,
        final: str = "hash",
        cache_bytes: int = 512 << 20,
    ):
        if block < 1 or embed_block < 1:
            raise ValueError(f"block and embed_block must be >= 1, got {block=}, {embed_block=}")
        if final not in FINAL_KINDS:
            raise ValueError(f"unknown final projection {final=}; use one of {FINAL_KINDS}")
        self.model = model
        self.d, self.seed, self.k, self.k_embed = int(d), int(seed), int(block), int(embed_block)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        selected = select_params(model, params)
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
        chosen = {id(p) for _, p in selected}

        def key(p: nn.Parameter | None) -> str | None:
            return names[id(p)] if p is not None and id(p) in chosen else None

        self._linear: list[tuple[nn.Module, str | None, str | None]] = []
        self._embed: list[tuple[nn.Module, str | None, int | None]] = []
        self._norms: list[tuple[nn.Module, str | None, str | None, str, float]] = []
        matrices: dict[str, tuple[int, int]] = {}
        covered: set[int] = set()
        for _, mod in model.named_modules():
            if isinstance(mod, nn.Linear):
                wk, bk = key(mod.weight), key(mod.bias)
                self._linear.append((mod, wk, bk))
                if wk:
                    matrices[wk] = tuple(mod.weight.shape)
            elif isinstance(mod, nn.Embedding):
                wk = key(mod.weight)
                self._embed.append((mod, wk, mod.padding_idx))
                if wk:
                    matrices[wk] = tuple(mod.weight.shape)
            elif (nk := _norm_kind(mod)) is not None:
                self._norms.append((mod, key(mod.weight), key(getattr(mod, "bias", None)), *nk))
            else:
                continue
            covered.update(id(p) for p in mod.parameters(recurse=False))
        missing = [n for n, p in selected if id(p) not in covered]
        if missing:
            raise ValueError(
                f"the kronecker projector handles Linear, Embedding and RMSNorm/LayerNorm parameters; "
                f"unsupported selected parameters: {missing[:8]}; narrow scoring.params or use kind='dense'"
            )
        if not self._embed:
            raise ValueError("the model has no nn.Embedding input layer to start the backward from")
        embedding_keys = set()
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            emb = getattr(model, getter, lambda: None)()
            if emb is not None and isinstance(getattr(emb, "weight", None), nn.Parameter):
                embedding_keys.add(key(emb.weight))
        # P_o (k_o × out), P_i (k_i × in), contiguous: applied as F.linear(x, P) = x Pᵀ, nn.Linear's own layout,
        # which MKL runs about twice as fast for k = 8 as x @ M with M (in × k) (measured on 2 cores).
        self._proj = {
            name: (
                self._sketch(name, "out", out, self.k_embed if name in embedding_keys else self.k),
                self._sketch(name, "in", inp, self.k_embed if name in embedding_keys else self.k),
            )
            for name, (out, inp) in matrices.items()
        }
        # the embedding gathers columns of P_o per token id: keep those as contiguous rows of M_o = P_oᵀ
        self._rows = {wk: self._proj[wk][0].t().contiguous() for _, wk, _ in self._embed if wk}
        self.layout = [
            (n, self._proj[n][0].shape[0] * self._proj[n][1].shape[0] if n in self._proj else p.numel())
            for n, p in selected
        ]
        self.final_kind = final
        self.final: SignHashProjector | DenseRademacherProjector
        if final == "hash":
            self.final = SignHashProjector(
                self.layout, self.d, self.seed, device=self.device, namespace="kronecker-hash"
            )
        else:
            self.final = DenseRademacherProjector(
                self.layout, self.d, self.seed, device=self.device, namespace="kronecker", cache_bytes=cache_bytes
            )
        self._acc: dict[str, torch.Tensor] = {}
        self._mask: torch.Tensor | None = None
        self._leaf = False

    def _sketch(self, name: str, side: str, n: int, k: int) -> torch.Tensor:
        """P (k × n), contiguous: seeded Rademacher ±1/√k (P = Mᵀ, M the generator's n × k matrix), or the
        identity when k ≥ n (no compression, no noise)."""
        if k >= n:
            return torch.eye(n, device=self.device)
        return RademacherGenerator(k, self.device).matrix(self.seed, f"kronecker/{name}/{side}", n).t().contiguous()

    # ------------------------------------------------------------------ hooks

    def _token_mask(self, like: torch.Tensor) -> torch.Tensor | None:
        """(B, T, 1, ...) mask of real positions broadcastable to ``like`` (None when nothing is padded)."""
        m = self._mask
        if m is None or like.ndim < 3 or like.shape[:2] != m.shape:
            return None
        return m.view(*m.shape, *([1] * (like.ndim - 2)))

    def _add(self, key: str, value: torch.Tensor) -> None:
        self._acc[key].add_(value.reshape(value.shape[0], -1))

    def _lin_fwd(self, wkey, bkey, mod, inputs, output):
        if not (wkey or bkey) or not output.requires_grad:
            return
        xp = None
        if wkey:
            x = inputs[0].detach()
            xp = F.linear(x.reshape(x.shape[0], -1, x.shape[-1]).float(), self._proj[wkey][1])  # (B, T, k) = P_i x_t
            if (m := self._token_mask(xp)) is not None:
                xp = xp * m  # padded positions contribute nothing (their δ is 0 as well)
        output.register_hook(partial(self._lin_bwd, wkey, bkey, xp))

    def _lin_bwd(self, wkey, bkey, xp, grad):
        g = grad.float()
        g = g.reshape(g.shape[0], -1, g.shape[-1])
        if wkey:
            a = F.linear(g, self._proj[wkey][0])  # (B, T, k) = P_o δ_t
            self._add(wkey, torch.bmm(a.transpose(1, 2), xp))  # Σ_t a_t xp_tᵀ per sample, (B, k_o, k_i)
        if bkey:
            m = self._token_mask(g)
            self._add(bkey, (g if m is None else g * m).sum(1))

    def _emb_fwd(self, wkey, padding_idx, mod, inputs, output):
        out = output.detach().requires_grad_(True)  # a leaf: the backward flows, no weight gradient is formed
        self._leaf = True
        if wkey:
            ids = inputs[0].detach()
            keep = torch.ones(ids.shape, device=ids.device) if self._mask is None else self._mask.clone()
            if padding_idx is not None:
                keep = keep * (ids != padding_idx)  # nn.Embedding gives the padding_idx row no gradient
            out.register_hook(partial(self._emb_bwd, wkey, ids, keep))
        return out

    def _emb_bwd(self, wkey, ids, keep, grad):
        gp = F.linear(grad.float(), self._proj[wkey][1])  # (B, T, k) = P_i δ_t
        rows = self._rows[wkey][ids] * keep.unsqueeze(-1)  # (B, T, k) = P_o e_{id_t}, zero where masked
        self._add(wkey, torch.bmm(rows.transpose(1, 2), gp))

    def _norm_fwd(self, wkey, bkey, kind, eps, mod, inputs, output):
        if not (wkey or bkey) or not output.requires_grad:
            return
        n = normalized(inputs[0].detach(), kind, eps)
        m = self._token_mask(n)
        output.register_hook(partial(self._norm_bwd, wkey, bkey, n if m is None else n * m, m))

    def _norm_bwd(self, wkey, bkey, n, m, grad):
        g = grad.float()
        b, h = g.shape[0], g.shape[-1]
        if wkey:
            self._add(wkey, (g * n).reshape(b, -1, h).sum(1))
        if bkey:
            self._add(bkey, (g if m is None else g * m).reshape(b, -1, h).sum(1))

    @contextlib.contextmanager
    def _hooked(self):
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        handles = []
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            for mod, wk, bk in self._linear:
                handles.append(mod.register_forward_hook(partial(self._lin_fwd, wk, bk)))
            for mod, wk, pad in self._embed:
                handles.append(mod.register_forward_hook(partial(self._emb_fwd, wk, pad)))
            for mod, wk, bk, kind, eps in self._norms:
                handles.append(mod.register_forward_hook(partial(self._norm_fwd, wk, bk, kind, eps)))
            yield
        finally:
            for h in handles:
                h.remove()
            for p, flag in saved:
                p.requires_grad_(flag)
            self._mask = None

    def blocks(
        self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Per-sample blocks before the final projection.

        Args:
            input_ids, labels: (B, T) right-padded (labels -100 where no loss).
            lengths: real length of each row (default: T for every row).

        Returns:
            ({parameter name: (B, k·k) Kronecker block or (B, numel) exact gradient}, loss (B,), n_tokens (B,)).
            A k × k block flattened row-major is P_o G P_iᵀ with P_o = M_oᵀ, P_i = M_iᵀ (``self.matrices``).
        """
        b, t = input_ids.shape
        input_ids, labels = input_ids.to(self.device), labels.to(self.device)
        if lengths is None:
            lengths = torch.full((b,), t)
        lengths = lengths.to(self.device)
        padded = bool((lengths < t).any())
        self._mask = (torch.arange(t, device=self.device)[None, :] < lengths[:, None]).float() if padded else None
        self._acc = {n: torch.zeros(b, s, device=self.device) for n, s in self.layout}
        self._leaf = False
        with self._hooked(), torch.enable_grad():
            logits = self.model(input_ids=input_ids, use_cache=False).logits
            loss, n_tokens = completion_nll(logits, labels)
            if not self._leaf or not loss.requires_grad:
                raise RuntimeError("the backward cannot reach the embedding output; is this a causal LM?")
            loss.sum().backward()
        acc, self._acc = self._acc, {}
        return acc, loss.detach(), n_tokens

    @property
    def matrices(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{parameter name: (M_o (out × k), M_i (in × k))}``; P_o = M_oᵀ, P_i = M_iᵀ, entries ±1/√k."""
        return {name: (p_o.t(), p_i.t()) for name, (p_o, p_i) in self._proj.items()}

    def project_blocks(self, blocks: dict[str, torch.Tensor]) -> torch.Tensor:
        """z = concat(blocks) -> z S (B, d), not normalized."""
        return self.final.project({n: blocks[n] for n, _ in self.layout})

    def project(
        self, input_ids: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> BatchResult:
        """Unit-normalized (B, d) projected gradients, per-sample loss and token counts, error flags."""
        blocks, loss, n_tokens = self.blocks(input_ids, labels, lengths)
        return finish(self.project_blocks(blocks), loss, n_tokens)

    def score_encoded(self, batch: list[Encoded], pad_id: int | None = None) -> BatchResult:
        """Collate a batch of encoded samples (right padding) and project it."""
        pad = pad_id if pad_id is not None else pad_id_of(None, self.model)
        ids, labels = collate(batch, pad, self.device)
        lengths = torch.tensor([len(e) for e in batch])
        return self.project(ids, labels, lengths)
