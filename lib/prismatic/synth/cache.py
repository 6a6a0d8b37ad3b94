"""Request cache: a re-run (or a resumed round) does not pay twice for the same generation request.

A request is keyed by the sha256 of (backend, model, prompt, n, temperature, top_p, max_tokens, seed) plus
the generator's fingerprint of output-affecting settings such as the system prompt (:func:`request_key`);
the value is the request's ``n`` generations. The store is an interface (:class:`RequestCache`) so it can
live anywhere: :class:`SQLiteRequestCache` (one file under a folder, safe across threads and processes on one
machine) and :class:`MemoryRequestCache` ship here; a Delta-table store only needs ``get_many`` /
``put_many``. Error markers are never cached, so a failed request is retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prismatic.synth.types import Generation, Generator

log = logging.getLogger(__name__)

KEY_VERSION = 1  # bump when the key recipe changes: old entries then simply miss


def request_key(
    backend: str,
    model: str,
    prompt: str,
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
    variant: str = "",
) -> str:
    """sha256 (hex) of one generation request; floats are written with ``repr`` so 1 and 1.0 agree.

    ``variant`` is the generator's :meth:`~prismatic.synth.generators.Generator.fingerprint` (system prompt and
    other settings that change the output); it is left out of the hashed document when empty.
    """
    doc = {
        "v": KEY_VERSION,
        "backend": backend,
        "model": model,
        "prompt": prompt,
        "n": int(n),
        "temperature": repr(float(temperature)),
        "top_p": repr(float(top_p)),
        "max_tokens": int(max_tokens),
        "seed": int(seed),
    }
    if variant:
        doc["variant"] = variant
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class RequestCache(ABC):
    """Storage of cached requests: key -> list of generations."""

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> dict[str, list[Generation]]:
        """Return the cached entries among ``keys`` (missing keys are absent from the result)."""

    @abstractmethod
    def put_many(self, entries: Mapping[str, Sequence[Generation]], meta: Mapping[str, Any] | None = None) -> None:
        """Store entries (an existing key is replaced). ``meta`` is informational (backend, model)."""

    def get(self, key: str) -> list[Generation] | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, generations: Sequence[Generation]) -> None:
        self.put_many({key: generations})

    def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release resources (idempotent)."""


def _dump(gens: Sequence[Generation]) -> str:
    return json.dumps([g.to_dict() for g in gens], ensure_ascii=False)


def _load(text: str) -> list[Generation]:
    return [Generation.from_dict(d) for d in json.loads(text)]


class MemoryRequestCache(RequestCache):
    """In-process cache (tests, one-off runs)."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, list[Generation]]:
        with self._lock:
            return {k: _load(self._data[k]) for k in keys if k in self._data}

    def put_many(self, entries: Mapping[str, Sequence[Generation]], meta: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            for k, gens in entries.items():
                self._data[k] = _dump(gens)

    def __len__(self) -> int:
        return len(self._data)


class SQLiteRequestCache(RequestCache):
    """Cache in ``<folder>/requests.sqlite`` (WAL mode; several threads or processes may share it).

    Args:
        folder: where the database lives (created if missing); e.g. ``<data_root>/cache/generator``.
        timeout_s: how long a writer waits for another process's lock.
    """

    FILE = "requests.sqlite"

    def __init__(self, folder: str | Path, timeout_s: float = 30.0):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / self.FILE
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._lock:
            conn = self._connect()
            conn.execute(
                "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, backend TEXT, model TEXT, "
                "created REAL NOT NULL, generations TEXT NOT NULL)"
            )
            conn.commit()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=self.timeout_s, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        return self._conn

    def get_many(self, keys: Sequence[str]) -> dict[str, list[Generation]]:
        out: dict[str, list[Generation]] = {}
        keys = list(dict.fromkeys(keys))
        with self._lock:
            conn = self._connect()
            for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, text in conn.execute(f"SELECT key, generations FROM requests WHERE key IN ({marks})", chunk):
                    out[key] = _load(text)
        return out

    def put_many(self, entries: Mapping[str, Sequence[Generation]], meta: Mapping[str, Any] | None = None) -> None:
        if not entries:
            return
        meta = meta or {}
        now = time.time()
        rows = [(k, meta.get("backend"), meta.get("model"), now, _dump(g)) for k, g in entries.items()]
        with self._lock:
            conn = self._connect()
            with conn:  # one transaction
                conn.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __getstate__(self) -> dict:  # picklable: each process opens its own connection
        state = self.__dict__.copy()
        state.update(_conn=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class CachedGenerator(Generator):
    """Wrap a generator: cached requests are answered from the store, only the misses reach ``inner``.

    Attributes:
        hits: requests answered from the cache so far.
        misses: requests sent to the inner generator so far.
    """

    def __init__(self, inner: Generator, cache: RequestCache):
        self.inner = inner
        self.cache = cache
        self.backend = inner.backend
        self.model = inner.model
        self.hits = 0
        self.misses = 0

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        variant = self.inner.fingerprint()
        keys = [
            request_key(self.inner.backend, self.inner.model, p, n, temperature, top_p, max_tokens, seed, variant)
            for p in prompts
        ]
        found = self.cache.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        # the same prompt twice in one call is asked once
        unique: dict[str, int] = {}
        for i in todo:
            unique.setdefault(keys[i], i)
        self.hits += len(prompts) - len(todo)
        self.misses += len(unique)
        fresh: dict[str, list[Generation]] = {}
        if unique:
            idx = list(unique.values())
            results = self.inner.generate([prompts[i] for i in idx], n, temperature, top_p, max_tokens, seed)
            fresh = {keys[i]: r for i, r in zip(idx, results, strict=True)}
            storable = {k: r for k, r in fresh.items() if all(g.ok for g in r)}
            self.cache.put_many(storable, meta={"backend": self.inner.backend, "model": self.inner.model})
        log.debug("request cache: %d hits, %d misses", len(prompts) - len(todo), len(unique))
        return [found[k] if k in found else fresh[k] for k in keys]

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "cache": type(self.cache).__name__}

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def close(self) -> None:
        self.inner.close()
