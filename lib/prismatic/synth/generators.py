"""LLM generators behind one interface: local transformers, OpenAI-compatible HTTP, vLLM offline, and a fake.

Every back end answers ``generate(prompts, n, temperature, top_p, max_tokens, seed)`` with one list of ``n``
:class:`Generation` per prompt, in prompt order (the interface :class:`Generator` and its value types live in
``prismatic.synth.types``). Prompts are user messages; chat back ends wrap them in the model's chat template
(with the optional system prompt). Sampling is reproducible *per request*: sample ``j`` of prompt ``p`` under
run seed ``s`` is drawn with :func:`request_seed` ``(s, p, j)``, so the same request gives the same text on a
re-run (and the request cache in ``cache.py`` can key on it), and a result does not depend on which other
prompts share its batch (up to the rounding that padding brings into a batched forward pass, which very rarely
flips a sampled token).

A prompt that fails for good raises :class:`GeneratorError`; with ``skip_bad_requests`` it yields ``n``
error markers instead (``Generation.error`` set, ``finish_reason == "error"``), which the caller records as
``generator_error``. A server that cannot be reached (connection refused, timeouts, 429 / 5xx after every
retry) always yields error markers for the prompts it failed: the round records them and goes on, and since
error markers are never cached, re-running the round asks those prompts again. Errors that retrying cannot fix
(401, 404, a malformed answer) still raise unless ``skip_bad_requests``: they are configuration problems.

Every text leaving :meth:`Generator.generate` has known secret values (the API key) replaced by ``***``
(``prismatic.synth.secrets.redact``): a server that echoes the ``Authorization`` header cannot put the key into
samples, candidates, the request cache, logs or MLflow, since all of them are fed from here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prismatic.errors import ConfigError
from prismatic.synth.secrets import Secret, resolve_api_key
from prismatic.synth.types import Generation, Generator, GeneratorError, Reason

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_SEED_MASK = (1 << 31) - 1  # servers (OpenAI, vLLM) accept 32-bit seeds


def request_seed(seed: int, prompt: str, index: int = 0) -> int:
    """Seed of sample ``index`` of ``prompt`` under run seed ``seed`` (31-bit, stable across processes)."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{int(index)}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _SEED_MASK


def _fingerprint(**settings: Any) -> str:
    """Short stable hash of output-affecting settings ("" when all are unset)."""
    used = {k: v for k, v in settings.items() if v not in (None, "", {}, [])}
    if not used:
        return ""
    return hashlib.sha256(json.dumps(used, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# fake


Script = Callable[[str, int, int], "str | Generation"] | Mapping[str, Sequence[str]] | Sequence[str]


class FakeGenerator(Generator):
    """Deterministic scripted outputs for tests; counts the prompts it really served.

    Args:
        script: how sample ``j`` of ``prompt`` is written: a callable ``(prompt, j, sample_seed) -> str |
            Generation``; a mapping ``prompt -> texts`` (sample ``j`` gets ``texts[j % len]``; an unknown prompt
            fails); a list of texts (sample ``j`` of every prompt gets ``texts[j % len]``); or None for a
            text derived from the prompt and seed.
        model: model name reported (cache key).
        fail: prompts that fail: a set of prompts or a predicate.
        skip_bad_requests: failing prompts give error markers instead of raising.
    """

    backend = "fake"

    def __init__(
        self,
        script: Script | None = None,
        *,
        model: str = "fake",
        fail: Callable[[str], bool] | set[str] | frozenset[str] | None = None,
        skip_bad_requests: bool = False,
    ):
        self.script = script
        self.model = model
        self.fail = fail
        self.skip_bad_requests = skip_bad_requests
        self.calls = 0
        self.prompts_served: list[str] = []
        self._lock = threading.Lock()

    def _fails(self, prompt: str) -> bool:
        if self.fail is None:
            return False
        return self.fail(prompt) if callable(self.fail) else prompt in self.fail

    def _text(self, prompt: str, j: int, sample_seed: int) -> str | Generation:
        s = self.script
        if s is None:
            return f"fake completion {sample_seed:08x} for: {prompt[:40]}"
        if callable(s):
            return s(prompt, j, sample_seed)
        if isinstance(s, Mapping):
            if prompt not in s:
                raise GeneratorError("FakeGenerator has no scripted answer for this prompt", request=prompt)
            texts = s[prompt]
            return texts[j % len(texts)]
        return s[j % len(s)]

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        with self._lock:
            self.calls += 1
            self.prompts_served.extend(prompts)
        out: list[list[Generation]] = []
        for prompt in prompts:
            try:
                if self._fails(prompt):
                    raise GeneratorError("scripted failure", request=prompt, payload="fake")
                row = []
                for j in range(n):
                    t = self._text(prompt, j, request_seed(seed, prompt, j))
                    if isinstance(t, Generation):
                        row.append(t)
                        continue
                    words = t.split()
                    finish = "length" if len(words) > max_tokens else "stop"
                    text = " ".join(words[:max_tokens]) if finish == "length" else t
                    row.append(Generation(text, len(prompt.split()), min(len(words), max_tokens), finish))
                out.append(row)
            except GeneratorError as e:
                if not self.skip_bad_requests:
                    raise
                out.append([Generation.failed(str(e))] * n)
        return out

    def params(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}


# ----------------------------------------------------------------------------------------------------------------
# local transformers

_MODEL_CACHE: dict[tuple, tuple[Any, Any]] = {}
_MODEL_LOCK = threading.Lock()


def _load_causal_lm(model: str, gguf_file: str | None, device: str, dtype: str) -> tuple[Any, Any]:
    """Load (tokenizer, model) once per process through the proxy loader of ``prismatic.gradients.model``.

    Scoring and generation share one loading path: ``builtin:smollm2`` and other GGUF files are dequantized
    once into a cached safetensors checkpoint, folders load as safetensors, hub ids are fetched.
    """
    from prismatic.config import ModelConfig
    from prismatic.gradients.model import load_model

    key = (model, gguf_file, device, dtype)
    with _MODEL_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]
        t0 = time.perf_counter()
        try:
            loaded = load_model(ModelConfig(path=model, gguf_file=gguf_file, device=device, dtype=dtype))
        except (OSError, ValueError) as e:
            raise GeneratorError(
                f"cannot load generator model {model!r}: {e}",
                hint="point generator.model at a local directory, a .gguf file, builtin:qwen-coder-0.5b or "
                "builtin:smollm2",
            ) from e
        log.info("loaded generator model %s on %s in %.1f s", model, device, time.perf_counter() - t0)
        _MODEL_CACHE[key] = (loaded.tokenizer, loaded.model)
        return _MODEL_CACHE[key]


_NUCLEUS_TOPK = 1024  # candidates looked at first; a row whose nucleus is wider falls back to a full sort


def nucleus(probs, top_p: float, k: int = _NUCLEUS_TOPK):
    """Top-p filtering of each row: (kept probabilities, their token ids), both sorted by probability.

    Keeps the smallest prefix whose mass reaches ``top_p`` (entries past it are zeroed). The nucleus is found
    among the ``k`` most likely tokens when they hold at least ``top_p`` of every row's mass (almost always), and
    by a full sort otherwise: the same set either way, at a fraction of the cost of sorting a 150k vocabulary
    on every decoding step (measured 0.19 s of a 0.65 s step for 8 rows of Qwen2.5 on one core).
    """
    k = min(k, probs.shape[-1])
    vals, idx = probs.topk(k, dim=-1)
    if not bool((vals.sum(dim=-1) >= top_p).all()):
        vals, idx = probs.sort(dim=-1, descending=True)
    drop = (vals.cumsum(dim=-1) - vals) >= top_p
    return vals.masked_fill(drop, 0.0), idx


def _per_row_sampler_cls():
    import torch
    from transformers.generation import LogitsProcessor

    class PerRowSampler(LogitsProcessor):
        """Samples each row with its own ``torch.Generator`` and returns a one-hot score (greedy picks it).

        Drawing per row keeps a row's tokens independent of the other rows of the batch, so a request gives
        the same text whatever it is batched with.
        """

        def __init__(self, generators: list[torch.Generator], temperature: float, top_p: float):
            self.generators = generators
            self.temperature = temperature
            self.top_p = top_p

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            scores = scores.float()
            if self.temperature == 0:
                chosen = scores.argmax(dim=-1)
            else:
                probs = torch.softmax(scores / self.temperature, dim=-1)
                ids = None
                if self.top_p < 1.0:
                    probs, ids = nucleus(probs, self.top_p)
                probs, ids = probs.cpu(), None if ids is None else ids.cpu()
                rows = []
                for i, g in enumerate(self.generators):
                    j = torch.multinomial(probs[i], 1, generator=g)
                    rows.append(j if ids is None else ids[i, j])
                chosen = torch.cat(rows).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, chosen.view(-1, 1), 0.0)
            return out

    return PerRowSampler


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: leave torch's setting), then restore the old count.

    On a shared CPU, torch's default of one spinning thread per core collapses when other processes want the
    cores too (generation measured 2-9x slower on 2 threads than on 1 under load): the generator caps it.
    """
    import torch

    if not n:
        yield
        return
    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != prev:
            torch.set_num_threads(prev)


class LocalGenerator(Generator):
    """A transformers causal LM on this machine (CPU or CUDA); the default back end.

    Each (prompt, sample) row is expanded, rows are batched by length, and every row samples with its own
    seeded ``torch.Generator`` (temperature then top-p), so results are reproducible and batch-independent.

    Args:
        model: ``builtin:qwen-coder-0.5b`` (the demo's generator), ``builtin:smollm2``, a local directory, a
            ``.gguf`` file or a hub id; GGUF weights are dequantized once into a safetensors cache.
        gguf_file: GGUF file name inside ``model`` when it is a directory.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        dtype: weights dtype.
        batch_size: rows sampled together.
        system_prompt: optional system message.
        chat_template: wrap prompts in the tokenizer's chat template (when it has one).
        threads: torch threads while generating on CPU (None: torch's default, one per core); restored after.
    """

    backend = "local"

    def __init__(
        self,
        model: str = "builtin:smollm2",
        *,
        gguf_file: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
        system_prompt: str | None = None,
        chat_template: bool = True,
        threads: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size=}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads=}")
        self.threads = threads
        self.model = model
        self.gguf_file = gguf_file
        self.device_pref = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.chat_template = chat_template
        self._tok = None
        self._lm = None
        self._device = None

    def _ensure_loaded(self) -> None:
        if self._lm is not None:
            return
        import torch

        if self.device_pref == "cuda" and not torch.cuda.is_available():
            raise GeneratorError("generator.device=cuda but no CUDA device is visible", hint="use device: auto")
        use_cuda = self.device_pref == "cuda" or (self.device_pref == "auto" and torch.cuda.is_available())
        device = "cuda" if use_cuda else "cpu"
        self._device = device
        self._tok, self._lm = _load_causal_lm(self.model, self.gguf_file, device, self.dtype)

    def render(self, prompt: str) -> str:
        """The text the model sees for ``prompt`` (chat template applied when available)."""
        self._ensure_loaded()
        tok = self._tok
        if self._uses_chat_template():
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
                {"role": "user", "content": prompt}
            ]
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return (self.system_prompt + "\n\n" + prompt) if self.system_prompt else prompt

    def fingerprint(self) -> str:
        return _fingerprint(
            system_prompt=self.system_prompt, chat_template=self.chat_template, dtype=self.dtype, gguf=self.gguf_file
        )

    def _uses_chat_template(self) -> bool:
        return bool(self.chat_template and getattr(self._tok, "chat_template", None))

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (self._tok.eos_token_id, getattr(self._lm.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(x) for x in src)
        if not ids:
            raise GeneratorError(f"model {self.model!r} defines no end-of-sequence token")
        return sorted(ids)

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        self._ensure_loaded()
        with torch_threads(self.threads if self._device == "cpu" else None):
            return self._sample(prompts, n, temperature, top_p, max_tokens, seed)

    def _sample(self, prompts, n, temperature, top_p, max_tokens, seed):
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tok, lm = self._tok, self._lm
        eos = self._eos_ids()
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        rendered = [self.render(p) for p in prompts]
        special = not self._uses_chat_template()  # the chat template already holds BOS / role tokens
        encoded = [tok(r, add_special_tokens=special)["input_ids"] for r in rendered]
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
        rows.sort(key=lambda r: len(encoded[r[0]]))  # similar lengths together: less padding
        results: dict[tuple[int, int], Generation] = {}
        sampler_cls = _per_row_sampler_cls()
        gen_cfg = GenerationConfig(
            max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos, pad_token_id=pad_id, num_beams=1
        )
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            width = max(len(encoded[i]) for i, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (i, _) in enumerate(batch):  # left padding: every row ends where generation starts
                seq = encoded[i]
                ids[r, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[r, width - len(seq) :] = 1
            gens = [torch.Generator().manual_seed(request_seed(seed, prompts[i], j)) for i, j in batch]
            sampler = sampler_cls(gens, temperature, top_p)
            with torch.inference_mode():
                out = lm.generate(
                    input_ids=ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    generation_config=gen_cfg,
                    logits_processor=LogitsProcessorList([sampler]),
                )
            new = out[:, width:].cpu().tolist()
            for r, (i, j) in enumerate(batch):
                toks = new[r]
                stop_at = next((k for k, t in enumerate(toks) if t in eos), None)
                body = toks if stop_at is None else toks[:stop_at]
                results[(i, j)] = Generation(
                    text=tok.decode(body, skip_special_tokens=True),
                    prompt_tokens=len(encoded[i]),
                    completion_tokens=len(body) + (0 if stop_at is None else 1),
                    finish_reason="length" if stop_at is None else "stop",
                )
        return [[results[(i, j)] for j in range(n)] for i in range(len(prompts))]

    def __getstate__(self) -> dict:  # picklable for Spark: each worker loads the model itself
        state = self.__dict__.copy()
        state.update(_tok=None, _lm=None, _device=None)
        return state

    def params(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "device": self._device or self.device_pref,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "threads": self.threads,
        }


# ----------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP


def _require_httpx():
    try:
        import httpx
    except ImportError as e:
        raise ImportError("the OpenAI-compatible generator needs httpx: pip install 'prismatic[http]'") from e
    return httpx


def _split_tokens(total: int, texts: list[str]) -> list[int]:
    """Share a total token count among choices in proportion to their lengths (sum preserved)."""
    if len(texts) == 1:
        return [total]
    weights = [max(len(t), 1) for t in texts]
    w = sum(weights)
    shares = [total * x // w for x in weights]
    for k in range(total - sum(shares)):
        shares[k % len(shares)] += 1
    return shares


class OpenAICompatibleGenerator(Generator):
    """Any OpenAI-compatible server: a vLLM server, Databricks Model Serving, OpenAI itself.

    POSTs to ``{base_url}/chat/completions`` (or ``/completions``) with httpx, at most ``concurrency`` requests
    in flight. 429, 5xx (and 408/409/425), timeouts and connection errors are retried ``max_retries`` times with
    exponential backoff and full jitter (``Retry-After`` honoured, capped at ``max_backoff_s``); other 4xx fail
    at once. ``base_url`` is the API root, e.g. ``http://host:8000/v1`` for vLLM and
    ``https://<workspace>/serving-endpoints`` for Databricks (where ``model`` is the endpoint name).

    Token counts: ``prompt_tokens`` is the request's; with ``n > 1`` the server reports only a total of
    completion tokens, which is shared among the choices in proportion to their lengths.

    Args:
        base_url: API root (the part before ``/chat/completions``).
        model: served model name.
        endpoint: ``chat`` or ``completions``.
        api_key: sent as ``Authorization: Bearer``; None sends no header.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt.
        backoff_s: base of the exponential backoff.
        max_backoff_s: longest single wait.
        concurrency: requests in flight at once.
        supports_n: send ``n`` in one request; False sends one request per sample (seeded per sample).
        skip_bad_requests: a prompt that fails for good yields error markers instead of raising.
        extra_body: extra JSON fields (e.g. ``{"top_k": 50}`` for vLLM).
        system_prompt: optional system message (chat endpoint).
        transport: an ``httpx`` transport (tests).
        sleep: the sleep function used between retries (tests).
    """

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        endpoint: str = "chat",
        api_key: Secret | str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        concurrency: int = 4,
        supports_n: bool = True,
        skip_bad_requests: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url:
            raise ValueError("the openai back end needs generator.base_url, e.g. http://localhost:8000/v1")
        if endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got {endpoint=}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError(f"bad limits: {concurrency=} {max_retries=} {timeout_s=}")
        self._httpx = _require_httpx()
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.backend = f"openai-{endpoint}"
        self._api_key = Secret(api_key) if isinstance(api_key, str) else api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = concurrency
        self.supports_n = supports_n
        self.skip_bad_requests = skip_bad_requests
        self.extra_body = dict(extra_body or {})
        self.system_prompt = system_prompt
        self._transport = transport
        self._sleep = sleep
        self._client = None
        self._client_lock = threading.Lock()
        self._rng = random.Random()

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                httpx = self._httpx
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                    transport=self._transport,
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _body(self, prompt: str, n: int, temperature: float, top_p: float, max_tokens: int, seed: int) -> dict:
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "chat":
            msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            body["messages"] = msgs + [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        body.update(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
        for k, v in self.extra_body.items():
            body.setdefault(k, v)
        return body

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        delay = None
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                delay = None
        if delay is None:  # full jitter: uniform in [0, base * 2^attempt], at least a small floor
            cap = self.backoff_s * (2**attempt)
            delay = self.backoff_s * 0.1 + self._rng.uniform(0, cap)
        return max(0.0, min(delay, self.max_backoff_s))

    def _post(self, body: dict) -> dict:
        httpx = self._httpx
        client = self._get_client()
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        last_msg, last_payload, last_status = "", None, None
        attempts = 0
        for attempt in range(self.max_retries + 1):
            attempts += 1
            retry_after = None
            try:
                resp = client.post(self.url, json=body, headers=headers)
            except httpx.TimeoutException as e:
                last_msg, last_payload, last_status = f"timed out after {self.timeout_s} s", repr(e), None
            except httpx.TransportError as e:
                last_msg, last_payload, last_status = f"connection error: {type(e).__name__}", str(e), None
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        raise GeneratorError(
                            f"{self.url} answered 200 with a body that is not JSON",
                            request=body,
                            payload=resp.text,
                            status_code=200,
                            attempts=attempts,
                        ) from None
                    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                        raise GeneratorError(
                            f"{self.url} answered without a 'choices' list",
                            request=body,
                            payload=resp.text,
                            status_code=200,
                            attempts=attempts,
                        )
                    return data
                last_msg, last_payload, last_status = f"HTTP {resp.status_code}", resp.text, resp.status_code
                if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                    raise GeneratorError(
                        f"{self.url} refused the request: HTTP {resp.status_code}",
                        request=body,
                        payload=resp.text,
                        status_code=resp.status_code,
                        attempts=attempts,
                    )
                retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                delay = self._wait(attempt, retry_after)
                log.warning(
                    "generator request to %s failed (%s); retry %d/%d in %.2f s",
                    self.url,
                    last_msg,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                self._sleep(delay)
        raise GeneratorError(
            f"{self.url} failed after {attempts} attempts: {last_msg}",
            request=body,
            payload=last_payload,
            status_code=last_status,
            attempts=attempts,
            unavailable=True,
        )

    def _parse(self, data: dict, n: int, body: dict) -> list[Generation]:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        if len(choices) != n:
            raise GeneratorError(
                f"{self.url} returned {len(choices)} choices for n={n} (set generator.supports_n=false?)",
                request=body,
                payload=str(data),
            )
        texts = []
        for c in choices:
            if not isinstance(c, dict):
                raise GeneratorError("malformed choice in response", request=body, payload=str(data))
            if self.endpoint == "chat":
                msg = c.get("message") or {}
                texts.append(msg.get("content") or "")
            else:
                texts.append(c.get("text") or "")
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        comp = _split_tokens(int(usage.get("completion_tokens") or 0), texts)
        return [
            Generation(t, prompt_tokens, k, str(c.get("finish_reason") or "stop"))
            for t, k, c in zip(texts, comp, choices, strict=True)
        ]

    def _one_prompt(self, prompt: str, n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
        try:
            if self.supports_n:
                body = self._body(prompt, n, temperature, top_p, max_tokens, request_seed(seed, prompt, 0))
                return self._parse(self._post(body), n, body)
            out = []
            for j in range(n):
                body = self._body(prompt, 1, temperature, top_p, max_tokens, request_seed(seed, prompt, j))
                out.extend(self._parse(self._post(body), 1, body))
            return out
        except GeneratorError as e:
            if not (self.skip_bad_requests or e.unavailable):
                raise
            log.warning("generator request failed, recorded as %s: %s", Reason.GENERATOR_ERROR, e)
            return [Generation.failed(str(e))] * n

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        if len(prompts) == 1 or self.concurrency == 1:
            return [self._one_prompt(p, n, temperature, top_p, max_tokens, seed) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self._one_prompt, p, n, temperature, top_p, max_tokens, seed) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def fingerprint(self) -> str:
        # supports_n changes the seeds sent, hence the samples
        return _fingerprint(
            system_prompt=self.system_prompt, extra_body=self.extra_body, one_per_sample=not self.supports_n
        )

    def params(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url,
            "api_key": "set" if self._api_key is not None else "none",
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
        }

    def __getstate__(self) -> dict:  # picklable for Spark: the client is rebuilt on the other side
        state = self.__dict__.copy()
        state.update(_client=None, _client_lock=None, _httpx=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()
        self._httpx = _require_httpx()


# ----------------------------------------------------------------------------------------------------------------
# vLLM offline engine


class VLLMGenerator(Generator):
    """vLLM's offline engine on a GPU (``pip install 'prismatic[vllm]'``), for large rounds.

    Args:
        model: a hub id, a local directory, a ``.gguf`` file or ``builtin:smollm2``.
        gguf_file: GGUF file name inside ``model`` when it is a directory.
        system_prompt: optional system message.
        dtype: weights dtype (``auto`` lets vLLM choose).
        engine_kwargs: extra ``vllm.LLM(...)`` arguments (``gpu_memory_utilization``, ``tensor_parallel_size``…).
    """

    backend = "vllm"

    def __init__(
        self,
        model: str,
        *,
        gguf_file: str | None = None,
        system_prompt: str | None = None,
        dtype: str = "auto",
        engine_kwargs: Mapping[str, Any] | None = None,
    ):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("the vllm generator needs vLLM: pip install 'prismatic[vllm]'") from e
        import torch

        if not torch.cuda.is_available():
            raise GeneratorError(
                "the vllm back end needs a CUDA GPU and none is visible",
                hint="use generator.backend=local on CPU, or openai against a served model",
            )
        self._vllm = vllm
        self.model = model
        self.system_prompt = system_prompt
        kwargs = dict(engine_kwargs or {})
        target = model
        if model.startswith("builtin:") or model.endswith(".gguf") or gguf_file:
            # GGUF: hand vLLM the safetensors checkpoint the proxy loader converts once (with its tokenizer)
            from prismatic.config import ModelConfig
            from prismatic.gradients.model import resolve_model_path

            target = str(resolve_model_path(ModelConfig(path=model, gguf_file=gguf_file))[0])
        self._llm = vllm.LLM(model=target, dtype=dtype, **kwargs)
        self._tok = self._llm.get_tokenizer()

    def fingerprint(self) -> str:
        return _fingerprint(system_prompt=self.system_prompt)

    def _render(self, prompt: str) -> str:
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def _generate(self, prompts, n, temperature, top_p, max_tokens, seed):
        sp = [
            self._vllm.SamplingParams(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=request_seed(seed, p, 0)
            )
            for p in prompts
        ]
        outputs = self._llm.generate([self._render(p) for p in prompts], sp, use_tqdm=False)
        result = []
        for o in outputs:
            k = len(o.prompt_token_ids or [])
            result.append(
                [
                    Generation(c.text, k, len(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                    for c in sorted(o.outputs, key=lambda c: c.index)
                ]
            )
        return result


# ----------------------------------------------------------------------------------------------------------------
# factory


def make_generator(cfg: Any, cache: Any = None, *, script: Script | None = None) -> Generator:
    """Build the back end named by a ``GeneratorConfig``; wrap it in a request cache when one is given.

    Args:
        cfg: ``prismatic.config.GeneratorConfig``.
        cache: a ``prismatic.synth.cache.RequestCache``; used when ``cfg.cache`` is true.
        script: outputs of the ``fake`` back end (see :class:`FakeGenerator`).

    Raises:
        ImportError: the back end's optional package is missing (the message names the pip command).
        ConfigError: ``base_url`` is missing, or a configured secret cannot be read.
    """
    backend = cfg.backend
    if backend == "local":
        gen: Generator = LocalGenerator(
            cfg.model,
            gguf_file=cfg.gguf_file,
            device=cfg.device,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            system_prompt=cfg.system_prompt,
            threads=getattr(cfg, "threads", None),
        )
    elif backend == "openai":
        if not cfg.base_url:
            raise ConfigError(
                "generator.backend=openai needs generator.base_url",
                hint="e.g. --set synth.generator.base_url=http://localhost:8000/v1 (vLLM) or "
                "https://<workspace>/serving-endpoints (Databricks)",
            )
        gen = OpenAICompatibleGenerator(
            cfg.base_url,
            cfg.model,
            endpoint=cfg.endpoint,
            api_key=resolve_api_key(cfg),
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            concurrency=cfg.concurrency,
            supports_n=cfg.supports_n,
            skip_bad_requests=cfg.skip_bad_requests,
            extra_body=cfg.extra_body,
            system_prompt=cfg.system_prompt,
        )
    elif backend == "vllm":
        gen = VLLMGenerator(
            cfg.model,
            gguf_file=cfg.gguf_file,
            system_prompt=cfg.system_prompt,
            dtype="auto" if cfg.dtype == "float32" else cfg.dtype,
            engine_kwargs=cfg.vllm_kwargs,
        )
    elif backend == "fake":
        gen = FakeGenerator(script, model=cfg.model, skip_bad_requests=cfg.skip_bad_requests)
    else:
        raise ValueError(f"Unknown {backend=}; expected local, openai, vllm or fake")
    if cache is not None and cfg.cache:
        from prismatic.synth.cache import CachedGenerator

        gen = CachedGenerator(gen, cache)
    return gen
