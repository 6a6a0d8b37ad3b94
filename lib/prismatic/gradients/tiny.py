"""A tiny randomly initialised llama and a word-level chat tokenizer, for tests and quick demos.

Real transformers classes (``LlamaForCausalLM``, a ``tokenizers`` WordLevel tokenizer with a ChatML
template like SmolLM2's), small enough that per-sample loops and exact Gram matrices take milliseconds.
:func:`save_tiny` writes both as a safetensors checkpoint folder that ``scoring.model.path`` can name.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_words(n: int = 60) -> list[str]:
    """Vocabulary words: roles, digits, a few math / NLI words and w0..wK fillers."""
    base = ["system", "user", "assistant", "the", "a", "is", "what", "plus", "minus", "times", "equals", "answer",
            "premise", "hypothesis", "entailment", "neutral", "contradiction", "cat", "dog", "runs", "sits",
            ".", ",", "?", "!", "+", "-", "=", ":"]  # fmt: skip
    base += [str(i) for i in range(10)]
    return base + [f"w{i}" for i in range(max(0, n - len(base)))]


def tiny_tokenizer(n_words: int = 60):
    """A ``PreTrainedTokenizerFast`` over :func:`tiny_words` (pad = eos = ``<|im_end|>``, id 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tiny_words(n_words))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="[UNK]", additional_special_tokens=["<|endoftext|>"],
    )  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(
    vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, init_std: float = 0.2, pad_token_id: int = 2
):
    """A random ``LlamaForCausalLM`` (tied embeddings, 4 heads / 2 KV heads, float32, eval mode).

    ``init_std`` is larger than llama's 0.02 so the random network's gradients are not all alike.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=pad_token_id, bos_token_id=1, eos_token_id=2, initializer_range=init_std,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # random norm weights too, so their gradients are not trivially alike
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def save_tiny(directory: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer checkpoint (safetensors) to ``directory`` and return it."""
    directory = Path(directory)
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden=hidden, layers=layers, seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
