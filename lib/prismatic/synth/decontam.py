"""Decontamination: reject a synthetic candidate that shares a word n-gram with an evaluation set.

Texts are normalized (NFKC, lower case, punctuation to spaces, whitespace collapsed) and split into words;
an eval text contributes all its word n-grams (default n = 10) to an index of 64-bit hashes. A candidate is
contaminated when any of its n-grams is in the index. Eval texts shorter than n words (but with at least
``min_words``) are indexed whole, and candidates are checked for those shorter grams too, so a short eval
question copied verbatim is still caught. The index is plain Python sets and dicts: it pickles, so Spark can
broadcast it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_PUNCT_RE = re.compile(r"[^\w\s]|_", re.UNICODE)


def normalize_words(text: str) -> list[str]:
    """NFKC, lower case, punctuation removed, split on whitespace."""
    s = unicodedata.normalize("NFKC", text or "").lower()
    return _PUNCT_RE.sub(" ", s).split()


def _hash(words: Iterable[str]) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Hit:
    """One shared n-gram: the eval set it came from and the normalized words."""

    eval_set: str
    ngram: str


@dataclass
class DecontamIndex:
    """Hashed word n-grams of the evaluation sets.

    Args:
        n: n-gram length in words.
        min_words: eval texts shorter than ``n`` words are indexed whole when they have at least this many.
    """

    n: int = 10
    min_words: int = 6
    # hash -> eval set names that contain the gram
    grams: dict[int, set[str]] = field(default_factory=dict)
    # lengths (< n) of short eval texts indexed whole
    short_lengths: set[int] = field(default_factory=set)
    texts_indexed: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.n < 1 or self.min_words < 1:
            raise ValueError(f"n and min_words must be >= 1, got n={self.n} min_words={self.min_words}")

    @classmethod
    def build(cls, eval_sets: Mapping[str, Iterable[str]], n: int = 10, min_words: int = 6) -> DecontamIndex:
        """Index every text of every eval set (``{name: texts}``)."""
        index = cls(n=n, min_words=min_words)
        for name, texts in eval_sets.items():
            index.add(name, texts)
        return index

    def add(self, eval_set: str, texts: Iterable[str]) -> None:
        """Add the n-grams of ``texts`` under the name ``eval_set``."""
        n = self.n
        for text in texts:
            words = normalize_words(text)
            if len(words) >= n:
                spans = (words[i : i + n] for i in range(len(words) - n + 1))
            elif len(words) >= self.min_words:
                self.short_lengths.add(len(words))
                spans = iter([words])
            else:
                continue
            for span in spans:
                self.grams.setdefault(_hash(span), set()).add(eval_set)
            self.texts_indexed[eval_set] += 1

    def __len__(self) -> int:
        return len(self.grams)

    def hits(self, text: str, limit: int | None = None) -> list[Hit]:
        """The candidate's n-grams found in the index (each distinct gram once per eval set)."""
        words = normalize_words(text)
        out: list[Hit] = []
        seen: set[tuple[str, str]] = set()
        for length in (self.n, *sorted(self.short_lengths)):
            for i in range(len(words) - length + 1):
                span = words[i : i + length]
                sets = self.grams.get(_hash(span))
                if not sets:
                    continue
                gram = " ".join(span)
                for s in sorted(sets):
                    if (s, gram) not in seen:
                        seen.add((s, gram))
                        out.append(Hit(s, gram))
                        if limit is not None and len(out) >= limit:
                            return out
        return out

    def contaminated(self, text: str, max_hits: int = 5) -> tuple[bool, list[Hit]]:
        """``(True, hits)`` when ``text`` shares an n-gram with an eval set; at most ``max_hits`` are listed."""
        found = self.hits(text, limit=max_hits)
        return bool(found), found

    def report(self, texts: Iterable[str]) -> dict[str, int]:
        """How many of ``texts`` hit each eval set (a text hitting two sets counts for both)."""
        counts: Counter = Counter()
        for t in texts:
            for s in {h.eval_set for h in self.hits(t)}:
                counts[s] += 1
        return dict(counts)


def hits_detail(hits: Iterable[Hit], max_chars: int = 300) -> str:
    """One line for a quarantine / candidates ``detail`` column: ``set: "gram"; …``."""
    s = "; ".join(f'{h.eval_set}: "{h.ngram}"' for h in hits)
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"
