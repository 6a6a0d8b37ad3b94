"""Training data: pool rows as Arrow / pandas, NLI pairs recovered from the pool, cached sentence embeddings.

**Where premise / hypothesis come from.** ``samples`` stores an NLI row as the rendered prompt
(``ingest.nli_prompt_template``) with the label as the completion. The pair is recovered from the prompt by
matching the template as a regular expression, and every match is verified by rendering the template again and
comparing with the prompt, and only when the split is unique (the lazy and the greedy match agree), so a changed
template or a premise that contains the template's own separator never yields a wrong pair, only a miss. Misses
are looked up in ``candidates_bronze``: the raw payload of (source, file, line), read with the source's column map and
verified the same way. Rows that neither path recovers are left out and counted (``NliPairs.unparsed``).
Prompt parsing first keeps the common case free of a join with the largest table.

**Embedding cache.** Sentence embeddings are cached on disk under
``<data_root>/cache/embeddings/<model key>/`` keyed by the sha256 of the text, in append-only safetensors shards
(``hashes`` as uint8 (n, 32) and ``vectors`` as float32 (n, dim); no pickle). A study with K subsets embeds each
premise / hypothesis once, and SNLI's shared premises once in total.

**Streaming.** :func:`iter_sample_batches` reads the Delta snapshot of ``samples`` as Arrow record batches
(delta-rs ``DeltaTable.to_pyarrow_dataset()``; on the delta-spark engine, Spark's Arrow batches), filtered to a
subset of sample ids, so an lm student never holds the pool in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prismatic.config import IngestConfig, Settings
from prismatic.errors import PrismError
from prismatic.tables import TableStore

log = logging.getLogger(__name__)

POOL_COLUMNS = ["sample_id", "task", "source", "prompt", "completion", "label", "origin", "round", "file", "line"]


# ---- the pool as Arrow --------------------------------------------------------------------------------------


def pool_arrow(
    store: TableStore, task: str | None = None, sample_ids: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:  # fmt: skip
    """Pool rows (samples minus duplicates) as one Arrow table, optionally one task and a subset of ids.

    Reads the Delta snapshot directly (no Spark job): fine for study-sized pools (10^5 rows); for bigger
    training sets stream with :func:`iter_sample_batches`.
    """
    cols = list(dict.fromkeys(["sample_id", "task", *(columns or POOL_COLUMNS)]))
    t = store.read_arrow("samples", columns=cols)
    if task is not None:
        t = t.filter(pc.equal(t["task"], task))
    if sample_ids is not None:
        t = t.filter(pc.is_in(t["sample_id"], value_set=pa.array(list(sample_ids), pa.string())))
    if store.exists("duplicates") and t.num_rows:
        dups = store.read_arrow("duplicates", columns=["sample_id"])["sample_id"]
        t = t.filter(pc.invert(pc.is_in(t["sample_id"], value_set=dups.combine_chunks())))
    return t.sort_by("sample_id")


def iter_sample_batches(
    store: TableStore,
    sample_ids: Sequence[str] | None,
    columns: Sequence[str] = ("sample_id", "prompt", "completion"),
    batch_rows: int = 1024,
    task: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream pool rows (``sample_ids`` when given, else every non-duplicate sample) as Arrow record batches.

    delta-rs engine: ``DeltaTable(path).to_pyarrow_dataset()`` of the current snapshot, scanned batch by batch
    (the ``task`` partition filter is pushed down; memory is one batch). delta-spark
    engine (Databricks): the same rows through ``DataFrame.toLocalIterator`` (one partition at a time).
    """
    import pyarrow.dataset as ds

    cols = list(dict.fromkeys(["sample_id", *columns]))
    drop = None
    if sample_ids is None and store.exists("duplicates"):
        drop = store.read_arrow("duplicates", columns=["sample_id"])["sample_id"].combine_chunks().cast(pa.string())
    if getattr(store, "engine", "") == "delta-rs":
        if not store.exists("samples"):
            return
        from deltalake import DeltaTable

        dataset = DeltaTable(str(store.path("samples"))).to_pyarrow_dataset()
        # only the partition filter (task) is pushed down: delta-rs writes string_view statistics, and pyarrow
        # 2x cannot compare them with a pushed-down string set; the id filter runs on each batch instead
        flt = ds.field("task") == task if task is not None else None
        keep = pa.array(list(sample_ids), pa.string()) if sample_ids is not None else None
        for batch in dataset.to_batches(columns=cols, filter=flt, batch_size=batch_rows):
            if keep is not None and batch.num_rows:
                batch = batch.filter(pc.is_in(batch["sample_id"].cast(pa.string()), value_set=keep))
            if drop is not None and batch.num_rows:
                batch = batch.filter(pc.invert(pc.is_in(batch["sample_id"].cast(pa.string()), value_set=drop)))
            if batch.num_rows:
                yield batch.select(list(columns))
        return
    from pyspark.sql import functions as F

    df = store.pool() if sample_ids is None else store.read("samples")
    if task is not None:
        df = df.where(F.col("task") == task)
    if sample_ids is not None:
        ids = store.spark.createDataFrame([(s,) for s in sample_ids], "sample_id string")
        df = df.join(ids, "sample_id")
    rows: list[dict] = []
    for r in df.select(*columns).toLocalIterator(prefetchPartitions=True):
        rows.append(r.asDict())
        if len(rows) >= batch_rows:
            yield pa.RecordBatch.from_pylist(rows)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows)


# ---- NLI pairs from the pool ---------------------------------------------------------------------------------


def template_regex(template: str, greedy: bool = False) -> re.Pattern:
    """A regex matching ``template`` with ``{premise}`` / ``{hypothesis}`` as named groups (other fields: any).

    ``greedy`` makes every field match as much as it can (the lazy default matches as little): when the two
    matches of a prompt agree, the split of the prompt into fields is unique.
    """
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", template)
    out, seen = [], set()
    for p in parts:
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", p)
        if m:
            name = m.group(1)
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*{'' if greedy else '?'})")
            seen.add(name)
        else:
            out.append(re.escape(p.replace("{{", "{").replace("}}", "}")))
    if not {"premise", "hypothesis"} <= seen:
        raise ValueError("ingest.nli_prompt_template must contain {premise} and {hypothesis}")
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def parse_nli_prompt(
    prompt: str, template: str, patterns: tuple[re.Pattern, re.Pattern] | None = None
) -> tuple[str, str] | None:
    """(premise, hypothesis) if the prompt is the template rendered with them and the split is unique, else None.

    None means: not this template, or ambiguous (a premise that contains the template's own separator text, so
    the prompt splits two ways); the caller then reads the raw bronze payload instead.
    """
    lazy, greedy = patterns or (template_regex(template), template_regex(template, greedy=True))
    m1, m2 = lazy.match(prompt), greedy.match(prompt)
    if not m1 or not m2 or m1.groupdict() != m2.groupdict():
        return None
    premise, hypothesis = m1.group("premise"), m1.group("hypothesis")
    try:
        rendered = template.format(**m1.groupdict())
    except (KeyError, IndexError, ValueError):
        return None
    return (premise, hypothesis) if rendered == prompt else None


@dataclass
class NliPairs:
    """NLI rows of the pool with their recovered premise / hypothesis (aligned lists, sorted by sample_id)."""

    sample_ids: list[str]
    premises: list[str]
    hypotheses: list[str]
    labels: list[str]
    texts: list[str]  # prompt + "\n" + completion: what the text-diversity metrics see
    from_prompt: int = 0
    from_bronze: int = 0
    unparsed: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sample_ids)}


def _bronze_pairs(store: TableStore, rows: list[dict], cfg: IngestConfig) -> dict[str, tuple[str, str]]:
    """Premise / hypothesis of ``rows`` from their raw bronze payloads (verified against the prompt)."""
    if not rows or not store.exists("candidates_bronze"):
        return {}
    bronze = store.read_arrow("candidates_bronze", columns=["source", "file", "line", "payload"])
    keys = pa.table({
        "source": [r["source"] for r in rows], "file": [r["file"] for r in rows],
        "line": pa.array([r["line"] for r in rows], pa.int64()), "sample_id": [r["sample_id"] for r in rows],
    })  # fmt: skip
    joined = keys.join(bronze, ["source", "file", "line"], join_type="inner").to_pylist()
    prompts = {r["sample_id"]: (r["prompt"], r["source"]) for r in rows}
    out: dict[str, tuple[str, str]] = {}
    for j in joined:
        prompt, source = prompts[j["sample_id"]]
        cols = cfg.sources.get(source, cfg.columns)
        try:
            obj = json.loads(j["payload"])
        except (TypeError, json.JSONDecodeError):
            continue
        p, h = (obj.get(cols.premise), obj.get(cols.hypothesis)) if isinstance(obj, dict) else (None, None)
        if isinstance(p, str) and isinstance(h, str):
            p, h = p.strip(), h.strip()
            if cfg.nli_prompt_template.format(premise=p, hypothesis=h) == prompt:
                out[j["sample_id"]] = (p, h)
    return out


def nli_pairs(store: TableStore, settings: Settings, sample_ids: Sequence[str] | None = None) -> NliPairs:
    """NLI pool rows (``task = 'nli'`` with a label) and their premise / hypothesis; see the module docstring."""
    t = pool_arrow(
        store,
        task="nli",
        sample_ids=sample_ids,
        columns=["sample_id", "source", "prompt", "completion", "label", "file", "line"],
    )
    t = t.filter(pc.is_valid(t["label"]))
    template = settings.ingest.nli_prompt_template
    patterns = (template_regex(template), template_regex(template, greedy=True))
    rows = t.to_pylist()
    got: dict[str, tuple[str, str]] = {}
    missing = []
    for r in rows:
        pair = parse_nli_prompt(r["prompt"], template, patterns)
        if pair is None:
            missing.append(r)
        else:
            got[r["sample_id"]] = pair
    from_prompt = len(got)
    bronze = _bronze_pairs(
        store, [r for r in missing if r["file"] is not None and r["line"] is not None], settings.ingest
    )
    got.update(bronze)
    out = NliPairs([], [], [], [], [], from_prompt=from_prompt, from_bronze=len(bronze))
    for r in rows:
        pair = got.get(r["sample_id"])
        if pair is None:
            out.unparsed.append(r["sample_id"])
            continue
        out.sample_ids.append(r["sample_id"])
        out.premises.append(pair[0])
        out.hypotheses.append(pair[1])
        out.labels.append(r["label"])
        out.texts.append(f"{r['prompt']}\n{r['completion']}")
    if out.unparsed:
        log.warning(
            "%d NLI samples: premise / hypothesis not recoverable (template changed?); left out", len(out.unparsed)
        )
    return out


# ---- embedding cache ----------------------------------------------------------------------------------------


def text_key(text: str) -> bytes:
    """32-byte sha256 of the UTF-8 text: the cache key."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def model_key(model: str, max_tokens: int | None = None) -> str:
    """Folder name of one encoder's cache: a readable prefix + sha256 of the model id (and truncation)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")[-40:] or "model"
    return f"{slug}-{hashlib.sha256(f'{model}|{max_tokens}'.encode()).hexdigest()[:12]}"


class EmbeddingCache:
    """Append-only on-disk cache of unit sentence embeddings keyed by text sha256 (safetensors shards).

    Args:
        folder: the cache folder of one encoder (see :func:`model_key`).
        embed: function texts -> float32 (n, dim) embeddings (called only for texts not cached yet).
    """

    def __init__(self, folder: str | Path, embed):
        self.folder = Path(folder)
        self.embed_fn = embed
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        from safetensors.numpy import load_file

        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("shard-*.safetensors")):
            try:
                data = load_file(str(path))
            except Exception as e:  # noqa: BLE001 - a torn shard from a crash: skip it, it is re-embedded
                log.warning("skipping unreadable embedding shard %s: %s", path, e)
                continue
            hashes, vectors = data["hashes"], data["vectors"]
            s = len(self._shards)
            self._shards.append(vectors)
            for i in range(hashes.shape[0]):
                self._index.setdefault(hashes[i].tobytes(), (s, i))

    def __len__(self) -> int:
        return len(self._index)

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` (float32 (n, dim)), embedding and persisting only the unseen distinct texts."""
        from safetensors.numpy import save_file

        keys = [text_key(t) for t in texts]
        with self._lock:
            todo: dict[bytes, str] = {}
            for k, t in zip(keys, texts, strict=True):
                if k not in self._index and k not in todo:
                    todo[k] = t
            if todo:
                new_keys = list(todo)
                vecs = np.ascontiguousarray(self.embed_fn([todo[k] for k in new_keys]), dtype=np.float32)
                if vecs.shape[0] != len(new_keys):
                    raise PrismError(f"encoder returned {vecs.shape[0]} vectors for {len(new_keys)} texts")
                hashes = np.frombuffer(b"".join(new_keys), dtype=np.uint8).reshape(len(new_keys), 32)
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = self.folder / f".tmp-{uuid.uuid4().hex}"
                save_file({"hashes": hashes, "vectors": vecs}, str(tmp))
                tmp.rename(self.folder / f"shard-{uuid.uuid4().hex}.safetensors")  # atomic: never a half shard
                s = len(self._shards)
                self._shards.append(vecs)
                for i, k in enumerate(new_keys):
                    self._index[k] = (s, i)
            if not keys:
                dim = self._shards[0].shape[1] if self._shards else 0
                return np.empty((0, dim), np.float32)
            return np.stack([self._shards[s][i] for s, i in (self._index[k] for k in keys)])


_CACHES: dict[str, EmbeddingCache] = {}
_CACHES_LOCK = threading.Lock()


def embedder_for(settings: Settings, model: str | None = None):
    """Function texts -> unit float32 embeddings, cached on disk when ``train.cache_embeddings``.

    Args:
        settings: device / truncation from ``diversity``, batch size and caching from ``train``.
        model: the encoder (default ``train.embedding_model``, the probe's; the study's embedding Vendi passes
            ``diversity.embedding_model``).
    """
    from prismatic.embeddings import embed_texts

    cfg = settings.train
    model = model or cfg.embedding_model
    device = settings.diversity.embedding_device
    max_tokens = settings.diversity.embedding_max_tokens

    def embed(texts: Sequence[str]) -> np.ndarray:
        return embed_texts(list(texts), model, device, cfg.embedding_batch_size, max_tokens)

    if not cfg.cache_embeddings:
        return embed
    folder = settings.root / "cache" / "embeddings" / model_key(model, max_tokens)
    with _CACHES_LOCK:
        cache = _CACHES.get(str(folder))
        if cache is None:
            cache = _CACHES[str(folder)] = EmbeddingCache(folder, embed)
    return cache.get


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sentence-pair features [u, v, |u − v|, u ⊙ v] (InferSent, Conneau et al. 2017), float32 (n, 4·dim)."""
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"premise and hypothesis embeddings must have the same 2-D shape, got {u.shape}, {v.shape}")
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def subset_pairs(pairs: NliPairs, sample_ids: Sequence[str]) -> NliPairs:
    """The rows of ``pairs`` whose ids are in ``sample_ids`` (sorted by id; ids not in ``pairs`` are ignored)."""
    idx = pairs.index()
    rows = sorted(idx[s] for s in set(sample_ids) if s in idx)
    return NliPairs(
        [pairs.sample_ids[i] for i in rows], [pairs.premises[i] for i in rows], [pairs.hypotheses[i] for i in rows],
        [pairs.labels[i] for i in rows], [pairs.texts[i] for i in rows],
    )  # fmt: skip
