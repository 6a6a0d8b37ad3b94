"""Synthesis round: candidate outcome codes (``Reason``, ``Status``), generators (local, OpenAI-compatible HTTP,
vLLM, fake), request cache, tasks (math, NLI), τ-of-n verification and decontamination. Heavy packages (torch,
transformers, httpx, vllm, math-verify) are imported only where used.
"""

from prismatic.synth.cache import CachedGenerator, MemoryRequestCache, RequestCache, SQLiteRequestCache, request_key
from prismatic.synth.decontam import DecontamIndex, Hit
from prismatic.synth.generators import (
    FakeGenerator,
    LocalGenerator,
    OpenAICompatibleGenerator,
    VLLMGenerator,
    make_generator,
    request_seed,
)
from prismatic.synth.secrets import Secret, install_redaction, redact, resolve_api_key
from prismatic.synth.tasks import MathTask, NLITask, Rejected, get_task, load_prompts
from prismatic.synth.types import Generation, Generator, GeneratorError, Reason, Status
from prismatic.synth.verify import Vote, vote_labels, vote_math

__all__ = [
    "CachedGenerator",
    "DecontamIndex",
    "FakeGenerator",
    "Generation",
    "Generator",
    "GeneratorError",
    "Hit",
    "LocalGenerator",
    "MathTask",
    "MemoryRequestCache",
    "NLITask",
    "OpenAICompatibleGenerator",
    "Rejected",
    "Reason",
    "RequestCache",
    "SQLiteRequestCache",
    "Secret",
    "Status",
    "VLLMGenerator",
    "Vote",
    "get_task",
    "install_redaction",
    "load_prompts",
    "make_generator",
    "redact",
    "request_key",
    "request_seed",
    "resolve_api_key",
    "vote_labels",
    "vote_math",
]
