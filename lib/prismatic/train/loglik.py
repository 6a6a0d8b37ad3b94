"""Option log-likelihood: score each candidate answer's likelihood given the prompt, pick the highest.

This is how lm-evaluation-harness scores multiple choice, and it is what makes a small causal LM's accuracy mean
something on a CPU: a 135M model rarely *writes* a parseable label, but it always assigns each label a
probability. For one item with prompt x and options a_1 … a_K,

    ℓ_k = Σ_{t ∈ a_k} log p(a_k,t | x, a_k,<t)

over the option's tokens, encoded exactly as training encodes a (prompt, completion) pair
(:func:`prismatic.gradients.model.encode`: the chat template applied, the option as the assistant turn, its
end-of-turn token included, so "entailment" is scored as a whole answer and not as the prefix of a longer one).
The prediction is argmax_k of

* ``none``: ℓ_k (the harness's ``acc``),
* ``tokens``: ℓ_k / n_tokens(a_k) (mean per token),
* ``chars``: ℓ_k / len(a_k) (the harness's ``acc_norm``, per character of the option text).

Ties go to the first option. Everything runs under ``torch.no_grad``. The options of one item share its prompt, so
:func:`option_scores` runs the prompt once and its K options as one batch on the prompt's key / value cache (K + 1
short passes instead of K full ones: ~3× less compute for three NLI labels, what makes a CPU evaluation
affordable). :func:`sequence_logprobs` is the plain reference (every sequence in full, right-padded and batched by
length; with causal attention and padding after every real token no attention mask is needed, see ``collate``),
used with ``shared_prefix=False`` and as an oracle in the tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

NORMALIZE = ("none", "tokens", "chars")


@dataclass(frozen=True)
class OptionScore:
    """Log-likelihood of one option: summed log-probability of its tokens, their count, its text length."""

    logprob: float
    n_tokens: int
    n_chars: int

    def value(self, normalize: str) -> float:
        if normalize == "none":
            return self.logprob
        if normalize == "tokens":
            return self.logprob / max(self.n_tokens, 1)
        if normalize == "chars":
            return self.logprob / max(self.n_chars, 1)
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")


def sequence_logprobs(model, encoded: Sequence, pad_id: int, batch_size: int = 16) -> list[tuple[float, int]]:
    """(Σ log p, n) over the loss-bearing tokens (labels ≠ -100) of each encoded sequence, in input order.

    Args:
        model: a causal LM (eval mode); its device is used.
        encoded: :class:`~prismatic.gradients.model.Encoded` sequences.
        pad_id: the padding token id.
        batch_size: sequences per forward pass (sorted by length so batches pad little).
    """
    import torch

    from prismatic.gradients.model import IGNORE_INDEX, collate

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, labels = collate([encoded[i] for i in idx], pad_id, device)
            logits = model(input_ids=ids).logits[:, :-1]
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            picked = torch.log_softmax(logits[mask].float(), dim=-1)  # only the scored positions: (n_sel, V)
            token_lp = picked.gather(1, target[mask].unsqueeze(1)).squeeze(1)
            row = torch.arange(len(idx), device=device).unsqueeze(1).expand_as(mask)[mask]
            sums = torch.zeros(len(idx), dtype=torch.float64, device=device).index_add_(0, row, token_lp.double())
            counts = mask.sum(dim=1)
            for r, i in enumerate(idx):
                out[i] = (float(sums[r]), int(counts[r]))
    return out


def shared_prefix_logprobs(model, prefix: Sequence[int], continuations: Sequence[Sequence[int]], pad_id: int):
    """(Σ log p, n) of each continuation after one shared prefix: the prefix runs once, the continuations as one
    right-padded batch on its key / value cache (expanded to the batch)."""
    import torch

    device = next(model.parameters()).device
    k = len(continuations)
    width = max(len(c) for c in continuations)
    # transformers 5 calls the key / value cache `cache`; 4.x `past_key_values` (5.x accepts it until 5.40)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        head = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True)
        first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)  # predicts every continuation's first token
        cache = getattr(head, "cache", None) or head.past_key_values
        cache.batch_repeat_interleave(k)
        ids = torch.full((k, width), pad_id, dtype=torch.long, device=device)
        for r, c in enumerate(continuations):
            ids[r, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        tail = None
        if width > 1:  # the last token of the longest continuation predicts nothing: leave it out
            tail = model(input_ids=ids[:, : width - 1], use_cache=True, **{key: cache}).logits
        out = []
        for r, c in enumerate(continuations):
            lp = float(first[c[0]])
            if len(c) > 1:
                steps = torch.log_softmax(tail[r, : len(c) - 1].float(), dim=-1)
                lp += float(steps.gather(1, ids[r, 1 : len(c)].unsqueeze(1)).double().sum())
            out.append((lp, len(c)))
    return out


def _split(e) -> tuple[tuple[int, ...], list[int]] | None:
    """(prompt ids, option ids) of an encoded pair whose loss-bearing tokens are one tail block, else None."""
    from prismatic.gradients.model import IGNORE_INDEX

    n = len(e.input_ids) - e.n_tokens
    if n < 1 or any(v == IGNORE_INDEX for v in e.labels[n:]) or any(v != IGNORE_INDEX for v in e.labels[:n]):
        return None
    return tuple(e.input_ids[:n]), list(e.input_ids[n:])


def option_scores(
    model, tokenizer, prompts: Sequence[str], options: Sequence[Sequence[str]], *, chat_template: bool,
    max_tokens: int, batch_size: int = 16, shared_prefix: bool = True,
) -> list[list[OptionScore]]:  # fmt: skip
    """Score every option of every item: ``out[i][k]`` is option k of prompt i.

    Each (prompt, option) pair is encoded like a training pair (the prompt truncated from the left when the pair is
    longer than ``max_tokens``, so the option is always scored whole). With ``shared_prefix`` the options of one
    prompt run on its key / value cache; otherwise every pair runs in full, ``batch_size`` at a time.

    Raises:
        ValueError: an option that encodes to no token, or an item without options.
    """
    from prismatic.gradients.model import encode, pad_id_of

    if len(prompts) != len(options):
        raise ValueError(f"{len(prompts)} prompts for {len(options)} option lists")
    flat, where = [], []
    for i, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        if not opts:
            raise ValueError(f"item {i} has no options")
        for k, o in enumerate(opts):
            e = encode(tokenizer, p, o, max_tokens, "left", chat_template)
            if e.error:
                raise ValueError(f"option {o!r} of item {i}: {e.error}")
            flat.append(e)
            where.append((i, k))
    pad = pad_id_of(tokenizer, model)
    lps = _by_shared_prefix(model, flat, pad) if shared_prefix else None
    if lps is None:
        lps = sequence_logprobs(model, flat, pad, batch_size)
    out: list[list[OptionScore]] = [[None] * len(o) for o in options]  # type: ignore[list-item]
    for (i, k), (lp, n) in zip(where, lps, strict=True):
        out[i][k] = OptionScore(lp, n, len(options[i][k]))
    return out


def _by_shared_prefix(model, encoded: Sequence, pad_id: int) -> list[tuple[float, int]] | None:
    """Log-likelihoods grouped by identical prompt ids (:func:`shared_prefix_logprobs`); None when a sequence has
    no clean prompt / option split (then the caller scores every sequence in full)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    parts = []
    for i, e in enumerate(encoded):
        split = _split(e)
        if split is None:
            return None
        parts.append(split[1])
        groups.setdefault(split[0], []).append(i)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    for prefix, idx in groups.items():
        for i, v in zip(idx, shared_prefix_logprobs(model, prefix, [parts[i] for i in idx], pad_id), strict=True):
            out[i] = v
    return out


def choose(scores: Sequence[Sequence[OptionScore]], normalize: str = "none") -> list[int]:
    """Index of the highest-scoring option of each item (the first one on a tie)."""
    picks = []
    for item in scores:
        vals = [s.value(normalize) for s in item]
        picks.append(max(range(len(vals)), key=lambda k: (vals[k], -k)))
    return picks
