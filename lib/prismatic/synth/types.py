"""Types the synthesis modules share: the outcome codes of candidates (:class:`Reason`, :class:`Status`) and of
rounds (:class:`RoundStatus`), and the generator interface (:class:`Generation`, :class:`GeneratorError`,
:class:`Generator`).

They live apart from the back ends (``generators``) and the request cache (``cache``) so that both import them
without importing each other. The codes are ``str`` enums: the values stored in ``synth_candidates.reason`` /
``status`` and ``rounds.status``, counted in ``rounds.counts`` and logged to MLflow as ``reason.<value>`` are the
plain strings, so tables and queries read them as before.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from prismatic.errors import PrismError
from prismatic.synth.secrets import has_secrets, redact

_PAYLOAD_CHARS = 2_000


class Reason(StrEnum):
    """Why a candidate ended as it did (``synth_candidates.reason``); ``accepted`` for the accepted ones."""

    ACCEPTED = "accepted"
    NO_CONSENSUS = "no_consensus"  # usable answers, but no group of tau agreeing ones
    UNPARSEABLE = "unparseable"  # no problem in the generation, or no solution gave a usable answer
    TOO_LONG = "too_long"  # no usable answer, and at least one was over the length limit
    DENSE_CLUSTER = "dense_cluster"  # nearest centroid is not a sparse cluster
    DUPLICATE = "duplicate"  # same or near-same text as a pool sample or another candidate of the round
    CONTAMINATED = "contaminated"  # shares a word n-gram with an eval set
    GENERATOR_ERROR = "generator_error"  # the generation (or every solution) call failed
    SCORE_FAILED = "score_failed"  # none of its samples could be scored / embedded


class Status(StrEnum):
    """Where a candidate stands (``synth_candidates.status``): ``pending`` until a step accepts or rejects it."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RoundStatus(StrEnum):
    """Where a (round, task) stands (``rounds.status``); only ``done`` is finished, the others are run again."""

    STARTED = "started"  # begun (a crash leaves it so)
    DONE = "done"
    INCOMPLETE = "incomplete"  # ran, but lost candidates to generator errors: the retry asks those calls again
    SKIPPED = "skipped"  # could not run (too few rows to cluster, no sparse-cluster member): retried as the pool grows


@dataclass(frozen=True)
class Generation:
    """One sampled completion.

    Attributes:
        text: the completion (special tokens removed); empty for an error marker.
        prompt_tokens: tokens of the prompt as sent (chat template included).
        completion_tokens: tokens generated (the stop token included when one was produced).
        finish_reason: ``stop`` (end of turn), ``length`` (hit ``max_tokens``) or ``error``.
        error: why the request failed, for an error marker; None otherwise.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, message: str) -> Generation:
        """An error marker: the caller records the prompt's candidates as ``generator_error``."""
        return cls(text="", finish_reason="error", error=redact(message))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Generation:
        return cls(
            text=str(d["text"]),
            prompt_tokens=int(d.get("prompt_tokens", 0)),
            completion_tokens=int(d.get("completion_tokens", 0)),
            finish_reason=str(d.get("finish_reason", "stop")),
            error=d.get("error"),
        )


class GeneratorError(PrismError):
    """A generation request failed for good (after retries, or with a status that retrying cannot fix).

    Attributes:
        request: what was asked (the prompt, or the JSON body sent); never holds the API key.
        payload: what came back (response body, truncated) or the transport error text.
        status_code: HTTP status of the last attempt, when there was one.
        attempts: how many times the request was sent.
        unavailable: the server could not be reached or kept failing with a retryable status (connection
            refused, timeouts, 429 / 5xx) after every retry; the back end records such prompts as failed
            generations instead of raising.
    """

    hint = (
        "check generator.base_url / generator.model and the server log; "
        "set generator.skip_bad_requests=true to record failed prompts as generator_error and go on"
    )

    def __init__(
        self,
        message: str,
        *,
        request: Any = None,
        payload: Any = None,
        status_code: int | None = None,
        attempts: int = 0,
        hint: str | None = None,
        unavailable: bool = False,
    ):
        super().__init__(redact(message), hint)
        self.request = request
        self.payload = redact(payload)[:_PAYLOAD_CHARS] if payload is not None else None
        self.status_code = status_code
        self.attempts = attempts
        self.unavailable = unavailable


def _redacted(gen: Generation) -> Generation:
    text, error = redact(gen.text), None if gen.error is None else redact(gen.error)
    return gen if text == gen.text and error == gen.error else replace(gen, text=text, error=error)


def redact_generations(results: list[list[Generation]]) -> list[list[Generation]]:
    """``results`` with every registered secret masked in texts and errors (unchanged when none is registered)."""
    if not has_secrets():
        return results
    return [[_redacted(g) for g in row] for row in results]


def _check_args(prompts: Sequence[str], n: int, temperature: float, top_p: float, max_tokens: int) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts[{bad[0]}] is {type(prompts[bad[0]]).__name__}, expected str")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n=}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature=}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p=}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens=}")
    return prompts


class Generator(ABC):
    """Interface of every back end.

    Attributes:
        backend: short back-end name, part of the request-cache key.
        model: model id as configured, part of the request-cache key.
    """

    backend: str = "abstract"
    model: str = ""

    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int = 0,
    ) -> list[list[Generation]]:
        """Sample ``n`` completions for each prompt.

        Args:
            prompts: user messages (chat back ends apply the chat template).
            n: completions per prompt.
            temperature: 0 means greedy.
            top_p: nucleus sampling mass in (0, 1].
            max_tokens: most new tokens per completion.
            seed: run seed; each (prompt, sample) gets its own seed from it (:func:`request_seed`).

        Returns:
            One list of ``n`` generations per prompt, in prompt order; known secrets are masked in every text.

        Raises:
            GeneratorError: a prompt failed and the back end does not skip bad requests (a server that cannot
                be reached gives error markers instead, see the module docstring).
        """
        prompts = _check_args(prompts, n, temperature, top_p, max_tokens)
        if not prompts:
            return []
        out = self._generate(prompts, n, float(temperature), float(top_p), int(max_tokens), int(seed))
        if len(out) != len(prompts) or any(len(g) != n for g in out):
            raise GeneratorError(f"{self.backend} back end returned a wrong number of results (a bug)")
        return redact_generations(out)

    @abstractmethod
    def _generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_tokens: int, seed: int
    ) -> list[list[Generation]]: ...

    def params(self) -> dict[str, Any]:
        """Settings safe to log (MLflow params): never a secret."""
        return {"backend": self.backend, "model": self.model}

    def fingerprint(self) -> str:
        """Settings besides the request itself that change the output (system prompt, extra body…).

        Part of the request-cache key, so that changing such a setting does not serve stale cached texts.
        """
        return ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections / engines (idempotent)."""

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"
