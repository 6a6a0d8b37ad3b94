"""Text normalization and the content hashes built on it (``sample_id``, exact-dedup ``text_hash``).

One definition, used by ingest (``sample_id``) and by dedup (exact groups and MinHash shingles), so that two
rows that normalize to the same text always agree everywhere. The steps, in this order, each switched by
:class:`~prismatic.config.NormalizeConfig`:

1. ``nfkc``: Unicode NFKC (fullwidth ``ＡＢＣ１`` -> ``ABC1``, ligatures ``ﬁ`` -> ``fi``, ``x²`` -> ``x2``).
2. ``lowercase``: :meth:`str.casefold` (a stronger ``lower``: ``Straße`` -> ``strasse``).
3. ``strip_punctuation``: delete every code point whose Unicode category is ``P*`` (``don't`` -> ``dont``).
4. ``collapse_whitespace``: split on whitespace as :meth:`str.split` defines it (Unicode ``White_Space`` plus the
   ASCII separators ``\\x1c``-``\\x1f``) and join with one ASCII space, which also strips both ends.

Hash rules (UTF-8 bytes, lowercase hex digest):

- ``sample_id = sha256(N(task) + "\\x1f" + N(prompt) + "\\x1f" + N(completion))`` where ``N`` is
  :func:`normalize_text`. With whitespace collapsing on (the default) ``N`` never emits ``\\x1f`` (it is whitespace to
  :meth:`str.split`), so the three fields cannot run into each other.
- ``text_hash = sha256(N(prompt + "\\n" + completion))``: the exact-dedup key. The task is not part of it because
  dedup groups by task first.
"""

from __future__ import annotations

import hashlib
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any

from prismatic.config import NormalizeConfig

FIELD_SEP = "\x1f"
TEXT_SEP = "\n"

__all__ = [
    "FIELD_SEP",
    "TEXT_SEP",
    "has_visible_text",
    "normalize_many",
    "normalize_text",
    "normalizer",
    "sample_id",
    "sample_ids",
    "text_hash",
    "text_hash_digests",
    "text_hashes",
]


@lru_cache(maxsize=1)
def _punctuation_table() -> dict[int, None]:
    """``str.translate`` table deleting every code point of Unicode category P* (built once, ~0.2 s)."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("P")}


@lru_cache(maxsize=64)
def normalizer(cfg: NormalizeConfig) -> Callable[[str], str]:
    """Return a one-argument function equivalent to ``normalize_text(text, cfg)`` with the switches resolved once.

    Args:
        cfg: which normalization steps to apply.

    Returns:
        A callable ``str -> str``; cached per config, so batch code can call it per row cheaply.
    """
    nfkc, lower, collapse = cfg.nfkc, cfg.lowercase, cfg.collapse_whitespace
    table = _punctuation_table() if cfg.strip_punctuation else None
    normalize = unicodedata.normalize

    def norm(text: str) -> str:
        if nfkc:
            text = normalize("NFKC", text)
        if lower:
            text = text.casefold()
        if table is not None:
            text = text.translate(table)
        if collapse:
            text = " ".join(text.split())
        return text

    return norm


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    """Normalize one text: NFKC, casefold, punctuation deletion, whitespace collapse (each per ``cfg``).

    Args:
        text: the raw text.
        cfg: which steps to apply (module docstring gives the exact order and definitions).

    Returns:
        The normalized text.

    Raises:
        TypeError: ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    return normalizer(cfg)(text)


# Code points that render as nothing although Unicode files them as letters or symbols (fillers, blank braille) or
# as combining marks with no glyph (grapheme joiner, variation selectors); categories Cc / Cf / Z* are added below.
_INVISIBLE_EXTRA = frozenset(
    [0x034F, 0x115F, 0x1160, 0x2800, 0x3164, 0xFFA0, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]
)
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(ch: str) -> bool:
    return ch.isspace() or ord(ch) in _INVISIBLE_EXTRA or unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def has_visible_text(text: str) -> bool:
    """True if ``text`` holds at least one character that renders as something.

    Whitespace, control and format characters (categories Cc, Cf, Zs, Zl, Zp: zero-width space / joiners, BOM,
    soft hyphen, bidi marks, tag characters), fillers (U+115F, U+1160, U+3164, U+FFA0), blank braille (U+2800),
    the grapheme joiner and variation selectors are invisible. Stops at the first visible character, so ordinary
    text costs one lookup.
    """
    return not all(_invisible(ch) for ch in text)


def _sha256_hex(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def sample_id(task: str, prompt: str, completion: str, cfg: NormalizeConfig) -> str:
    """Content key of a sample: ``sha256(N(task) + "\\x1f" + N(prompt) + "\\x1f" + N(completion))`` in hex.

    ``N`` is :func:`normalize_text` with ``cfg``; the string is hashed as UTF-8.

    Args:
        task: task name (e.g. ``math``).
        prompt: prompt text.
        completion: completion text.
        cfg: normalization switches.

    Returns:
        64 lowercase hex characters.

    Raises:
        TypeError: a field is not a ``str``.
    """
    for name, value in (("task", task), ("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise TypeError(f"sample_id: {name} must be str, got {type(value).__name__}")
    norm = normalizer(cfg)
    return _sha256_hex(norm(task) + FIELD_SEP + norm(prompt) + FIELD_SEP + norm(completion))


def text_hash(prompt: str, completion: str, cfg: NormalizeConfig) -> str:
    """Exact-dedup key: ``sha256(N(prompt + "\\n" + completion))`` in hex (``N`` = :func:`normalize_text`).

    Args:
        prompt: prompt text.
        completion: completion text.
        cfg: normalization switches.

    Returns:
        64 lowercase hex characters.
    """
    for name, value in (("prompt", prompt), ("completion", completion)):
        if not isinstance(value, str):
            raise TypeError(f"text_hash: {name} must be str, got {type(value).__name__}")
    return _sha256_hex(normalizer(cfg)(prompt + TEXT_SEP + completion))


# ---------------------------------------------------------------------------------------------------------------
# Batch versions. Input: a list, a pandas Series or a pyarrow (Chunked)Array of strings. Normalization itself is C
# code per row (unicodedata, casefold, split/join); these loops only remove the per-call Python overhead.
# ---------------------------------------------------------------------------------------------------------------


def _as_list(values: Any, what: str) -> list:
    if hasattr(values, "to_pylist"):  # pyarrow Array / ChunkedArray
        return values.to_pylist()
    if hasattr(values, "tolist"):  # pandas Series, numpy array
        return values.tolist()
    if isinstance(values, (list, tuple)):
        return list(values)
    if isinstance(values, Iterable):
        return list(values)
    raise TypeError(f"{what}: expected a sequence of str, got {type(values).__name__}")


def _check_str(values: Sequence[Any], what: str) -> None:
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"{what}: element {i} is {type(v).__name__}, expected str (fill nulls first)")


def normalize_many(texts: Any, cfg: NormalizeConfig) -> list[str]:
    """:func:`normalize_text` over a batch.

    Args:
        texts: list / pandas Series / pyarrow array of ``str`` (no nulls).
        cfg: normalization switches.

    Returns:
        A list of normalized strings, in input order.
    """
    values = _as_list(texts, "normalize_many")
    norm = normalizer(cfg)
    try:
        return [norm(t) for t in values]
    except (TypeError, AttributeError):
        _check_str(values, "normalize_many")
        raise


def sample_ids(tasks: Any, prompts: Any, completions: Any, cfg: NormalizeConfig) -> list[str]:
    """:func:`sample_id` over a batch (three equally long sequences of ``str``).

    Returns:
        A list of hex sample ids.
    """
    t, p, c = _as_list(tasks, "sample_ids"), _as_list(prompts, "sample_ids"), _as_list(completions, "sample_ids")
    if not len(t) == len(p) == len(c):
        raise ValueError(f"sample_ids: lengths differ (task {len(t)}, prompt {len(p)}, completion {len(c)})")
    norm = normalizer(cfg)
    sha = hashlib.sha256
    try:
        return [
            sha((norm(a) + FIELD_SEP + norm(b) + FIELD_SEP + norm(d)).encode("utf-8")).hexdigest()
            for a, b, d in zip(t, p, c, strict=True)
        ]
    except (TypeError, AttributeError):
        for name, vals in (("task", t), ("prompt", p), ("completion", c)):
            _check_str(vals, f"sample_ids ({name})")
        raise


def text_hash_digests(prompts: Any, completions: Any, cfg: NormalizeConfig) -> list[bytes]:
    """Raw 32-byte sha256 digests of :func:`text_hash` over a batch (what dedup groups on).

    Returns:
        A list of ``bytes`` (``digest.hex() == text_hash(...)``).
    """
    p, c = _as_list(prompts, "text_hash_digests"), _as_list(completions, "text_hash_digests")
    if len(p) != len(c):
        raise ValueError(f"text_hash_digests: lengths differ (prompt {len(p)}, completion {len(c)})")
    norm = normalizer(cfg)
    sha = hashlib.sha256
    try:
        return [sha(norm(a + TEXT_SEP + b).encode("utf-8")).digest() for a, b in zip(p, c, strict=True)]
    except (TypeError, AttributeError):
        for name, vals in (("prompt", p), ("completion", c)):
            _check_str(vals, f"text_hash_digests ({name})")
        raise


def text_hashes(prompts: Any, completions: Any, cfg: NormalizeConfig) -> list[str]:
    """:func:`text_hash` over a batch (hex strings)."""
    return [d.hex() for d in text_hash_digests(prompts, completions, cfg)]
