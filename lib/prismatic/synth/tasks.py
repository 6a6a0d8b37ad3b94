"""Synthesis tasks: prompts from conf/prompts.yaml, defensive parsers of what the generator wrote, verification.

Two tasks, after Prismatic Synthesis (arXiv 2505.20161):

- **math**: ``k`` few-shot exemplar problems -> ``m`` new problems per call (:func:`build_problem_prompts`,
  :func:`parse_problems`); each problem is solved ``n`` times (:func:`build_solution_prompts`) and kept when
  ``τ`` boxed answers agree (``verify.vote_math``); the agreeing solutions become samples.
- **nli**: ``k`` exemplar (premise, hypothesis, label) triples -> ``m`` new triples (:func:`build_nli_prompts`,
  :func:`parse_nli`); a solver labels each ``n`` times and the triple is kept when ``τ`` solver labels agree
  *with the generated label*.

Parsers never raise on model output: what cannot be read becomes ``Rejected(reason="unparseable", detail=…)``.
:class:`MathTask` / :class:`NLITask` (from :func:`get_task`) give the round loop one interface over both.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prismatic.errors import ConfigError
from prismatic.synth.types import Reason
from prismatic.synth.verify import (
    DEFAULT_NLI_LABELS,
    Vote,
    normalize_label,
    vote_labels,
    vote_math,
)

T = TypeVar("T")

_PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# placeholders each template must hold
REQUIRED = {
    ("math", "exemplar"): {"problem"},
    ("math", "generate"): {"exemplars"},
    ("math", "solve"): {"problem"},
    ("nli", "exemplar"): {"premise", "hypothesis", "label"},
    ("nli", "generate"): {"exemplars"},
    ("nli", "solve"): {"premise", "hypothesis"},
}
_DETAIL_CHARS = 200


@dataclass(frozen=True)
class Rejected:
    """A generation or candidate that is not kept, with a reason code (see DESIGN.md) and a short detail."""

    reason: Reason
    detail: str = ""


@dataclass(frozen=True)
class MathProblem:
    problem: str


@dataclass(frozen=True)
class NLIItem:
    premise: str
    hypothesis: str
    label: str


def _snippet(text: str, chars: int = 80) -> str:
    s = " ".join((text or "").split())
    return s if len(s) <= chars else s[: chars - 1] + "…"


# ----------------------------------------------------------------------------------------------------------------
# templates


def render(template: str, **values: Any) -> str:
    """Fill ``{{name}}`` placeholders; other braces stay. A placeholder without a value is an error.

    Values are inserted verbatim in one pass (a value holding ``{{x}}`` is not expanded again).
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"prompt template needs {{{{{name}}}}} but no value was given (have: {sorted(values)})")
        return str(values[name])

    return _PLACEHOLDER_RE.sub(sub, template)


def placeholders(template: str) -> set[str]:
    return set(_PLACEHOLDER_RE.findall(template))


@dataclass(frozen=True)
class Prompts:
    """The templates of conf/prompts.yaml: ``templates[task][kind]`` with kind in exemplar, generate, solve."""

    templates: Mapping[str, Mapping[str, str]]
    source: str = "<memory>"

    def get(self, task: str, kind: str) -> str:
        try:
            return self.templates[task][kind]
        except KeyError:
            raise ConfigError(f"prompt template {task}.{kind} is missing from {self.source}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<memory>") -> Prompts:
        """Validate a parsed prompts file: every template present, a string, with its required placeholders."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"prompts file {source} must hold a mapping")
        templates: dict[str, dict[str, str]] = {}
        for (task, kind), needed in REQUIRED.items():
            section = data.get(task)
            if not isinstance(section, Mapping) or not isinstance(section.get(kind), str):
                raise ConfigError(f"prompts file {source}: {task}.{kind} must be a string template")
            text = section[kind]
            missing = needed - placeholders(text)
            if missing:
                names = ", ".join("{{" + m + "}}" for m in sorted(missing))
                raise ConfigError(f"prompts file {source}: {task}.{kind} lacks {names}")
            templates.setdefault(task, {})[kind] = text
        return cls(templates, source)


def _resolve(path: str | Path) -> Path:
    from prismatic.config import resource_path

    return resource_path(path)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Prompts:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read prompts file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"prompts file {path} is not valid YAML: {e}") from None
    return Prompts.from_mapping(data or {}, source=path)


def load_prompts(path: str | Path = "conf/prompts.yaml") -> Prompts:
    """Read and validate the prompt templates (relative paths: the working directory, then the repo root)."""
    p = _resolve(path)
    if not p.exists():
        raise ConfigError(f"prompts file {path} not found", hint="set synth.prompts_file to conf/prompts.yaml")
    return _load_cached(str(p), p.stat().st_mtime)


def _prompts(prompts: Prompts | None) -> Prompts:
    return prompts if prompts is not None else load_prompts()


# ----------------------------------------------------------------------------------------------------------------
# exemplars


def sample_exemplar_groups(items: Sequence[T], k: int, groups: int, seed: int = 0) -> list[list[T]]:
    """Draw ``groups`` few-shot groups of ``k`` distinct items each (all items when fewer than ``k``), seeded."""
    if k < 1 or groups < 0:
        raise ValueError(f"need k >= 1 and groups >= 0, got {k=} {groups=}")
    if not items:
        raise ValueError("cannot draw exemplars from an empty pool")
    rng = random.Random(seed)
    size = min(k, len(items))
    return [rng.sample(list(items), size) for _ in range(groups)]


def _nli_fields(item: Any) -> tuple[str, str, str]:
    if isinstance(item, NLIItem):
        return item.premise, item.hypothesis, item.label
    if isinstance(item, Mapping):
        try:
            return str(item["premise"]), str(item["hypothesis"]), str(item["label"])
        except KeyError as e:
            raise ValueError(f"NLI exemplar lacks {e.args[0]!r}: {dict(item)!r:.120}") from None
    raise TypeError(f"NLI exemplar must be an NLIItem or a mapping, got {type(item).__name__}")


def _math_text(item: Any) -> str:
    if isinstance(item, MathProblem):
        return item.problem
    if isinstance(item, Mapping):
        for key in ("problem", "prompt", "question"):
            if key in item:
                return str(item[key])
        raise ValueError(f"math exemplar has none of problem / prompt / question: {dict(item)!r:.120}")
    if isinstance(item, str):
        return item
    raise TypeError(f"math exemplar must be a string, MathProblem or mapping, got {type(item).__name__}")


def _labels_text(labels: Sequence[str]) -> str:
    labels = list(labels)
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]


def build_problem_prompts(
    exemplar_groups: Sequence[Sequence[Any]], cfg: Any = None, prompts: Prompts | None = None
) -> list[str]:
    """One problem-generation prompt per exemplar group.

    Args:
        exemplar_groups: few-shot groups (problem strings, ``MathProblem`` or mappings with ``problem``/``prompt``).
        cfg: ``SynthConfig`` (``problems_per_call`` = m); None uses the paper default m = 2.
        prompts: templates; None loads conf/prompts.yaml.
    """
    p = _prompts(prompts)
    m = getattr(cfg, "problems_per_call", 2)
    ex_t = p.get("math", "exemplar")
    out = []
    for group in exemplar_groups:
        if not group:
            raise ValueError("an exemplar group is empty")
        shots = [render(ex_t, index=i + 1, problem=_math_text(x).strip()) for i, x in enumerate(group)]
        out.append(render(p.get("math", "generate"), exemplars="\n\n".join(shots), k=len(group), m=m))
    return out


def build_solution_prompts(problems: str | Sequence[str | MathProblem], prompts: Prompts | None = None) -> list[str]:
    r"""Solution prompts (final answer requested in ``\boxed{}``), one per problem."""
    p = _prompts(prompts)
    items = [problems] if isinstance(problems, str) else list(problems)
    return [render(p.get("math", "solve"), problem=_math_text(x).strip()) for x in items]


def build_nli_prompts(
    exemplar_groups: Sequence[Sequence[Any]],
    cfg: Any = None,
    prompts: Prompts | None = None,
    labels: Sequence[str] = DEFAULT_NLI_LABELS,
) -> list[str]:
    """One NLI-generation prompt per group of exemplar triples (``NLIItem`` or mappings)."""
    p = _prompts(prompts)
    m = getattr(cfg, "problems_per_call", 2)
    ex_t = p.get("nli", "exemplar")
    out = []
    for group in exemplar_groups:
        if not group:
            raise ValueError("an exemplar group is empty")
        shots = []
        for i, x in enumerate(group):
            prem, hyp, lab = _nli_fields(x)
            shots.append(render(ex_t, index=i + 1, premise=prem.strip(), hypothesis=hyp.strip(), label=lab))
        out.append(
            render(
                p.get("nli", "generate"), exemplars="\n\n".join(shots), k=len(group), m=m, labels=_labels_text(labels)
            )
        )
    return out


def build_nli_solution_prompts(
    items: Sequence[NLIItem | Mapping[str, Any]],
    prompts: Prompts | None = None,
    labels: Sequence[str] = DEFAULT_NLI_LABELS,
) -> list[str]:
    """Solver prompts, one per (premise, hypothesis); the label is *not* shown to the solver."""
    p = _prompts(prompts)
    out = []
    for x in items:
        if isinstance(x, NLIItem):
            prem, hyp = x.premise, x.hypothesis
        else:
            prem, hyp = str(x["premise"]), str(x["hypothesis"])
        out.append(
            render(p.get("nli", "solve"), premise=prem.strip(), hypothesis=hyp.strip(), labels=_labels_text(labels))
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# parsers

_EMPH = r"(?:\*\*|__|\*)?"
_MARKER_RE = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*)?(?:[-*>][ \t]+)?" + _EMPH + r"[ \t]*(?:new[ \t]+)?(?:math[ \t]+)?"
    r"(?:problem|question)[ \t]*(?:#[ \t]*)?(?P<num>\d+)?[ \t]*" + _EMPH + r"[ \t]*(?P<sep>[:.)\-\u2013\u2014])?"
    r"[ \t]*" + _EMPH + r"[ \t]*"
)
_NUMBERED_RE = re.compile(r"(?m)^[ \t]*" + _EMPH + r"(?P<num>\d{1,2})[.)]" + _EMPH + r"[ \t]+")
# where a generator starts answering its own problem
_SOLUTION_RE = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*)?"
    + _EMPH
    + r"[ \t]*(?:(?:solution|final answer|answer|explanation|analysis|steps|calculation)[ \t]*"
    + _EMPH
    + r"[ \t]*(?:[:.\-]|$)|step[ \t]*1\b)"
)
_PREAMBLE_RE = re.compile(r"^[^\n]{0,160}:[ \t]*\n")


def _clean_problem(text: str) -> str:
    text = re.sub(r"^(?:[ \t]*\d{1,2}[.)][ \t]+)+", "", text.strip())  # stray enumerators ("2. 2. ...")
    cut = _SOLUTION_RE.search(text)
    if cut:
        text = text[: cut.start()]
    lines = [ln.rstrip() for ln in text.strip().splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    # a problem ends with its question: drop paragraphs after the first one that ends with "?"
    paragraphs = re.split(r"\n[ \t]*\n", text)
    for k, para in enumerate(paragraphs):
        if para.rstrip(" *_").endswith("?"):
            text = "\n\n".join(paragraphs[: k + 1])
            break
    text = re.sub(r"^(?:\*\*|__)\s*|\s*(?:\*\*|__)$", "", text).strip()
    # a problem wrapped in quotes, often repeating its own marker inside them ('"Problem 1: Tom has ...?"')
    quoted = re.fullmatch(r"[\"\u201c](?P<body>[^\"\u201c\u201d]+)[\"\u201d]", text)
    if quoted:
        text = quoted.group("body").strip()
        inner = _MARKER_RE.match(text)
        if inner and (inner.group("num") or inner.group("sep") == ":"):
            text = text[inner.end() :].strip()
    return text


def _split_on(text: str, starts: list[tuple[int, int]]) -> list[str]:
    """Pieces between marker matches given as (start, end) spans; text before the first marker is dropped."""
    pieces = []
    for k, (_, end) in enumerate(starts):
        nxt = starts[k + 1][0] if k + 1 < len(starts) else len(text)
        pieces.append(text[end:nxt])
    return pieces


def parse_problems(
    text: str, max_problems: int | None = None, min_words: int = 4, truncated: bool = False
) -> list[str] | Rejected:
    """Split a problem-generation output into problems.

    Recognizes ``Problem 1:`` / ``Problem:`` / ``**Problem 2**`` / ``### Question 3`` markers, else a numbered
    list ``1.`` ``2.`` (numbers in sequence from 1), else the whole text as one problem (a leading line that
    ends with a colon, like "Here are two problems:", is dropped). Solutions the generator adds after a problem
    (``Solution:``, ``Answer:``) are cut off, and so are paragraphs after the first one ending with a question
    mark; pieces shorter than ``min_words`` words and repeats are dropped. When the generation was cut off
    (``truncated``, finish reason ``length``), a last problem that does not end like a sentence is dropped.

    Returns:
        The problems (at most ``max_problems``), or ``Rejected("unparseable", …)`` when none is left.
    """
    if not text or not text.strip():
        return Rejected(Reason.UNPARSEABLE, "empty generation")
    markers = [m for m in _MARKER_RE.finditer(text) if m.group("num") or m.group("sep") == ":"]
    if markers:
        pieces = _split_on(text, [(m.start(), m.end()) for m in markers])
    else:
        numbered = list(_NUMBERED_RE.finditer(text))
        seq, expect = [], 1
        for m in numbered:
            if int(m.group("num")) == expect:
                seq.append(m)
                expect += 1
        if len(seq) >= 2:
            pieces = _split_on(text, [(m.start(), m.end()) for m in seq])
        else:
            pieces = [_PREAMBLE_RE.sub("", text.strip(), count=1)]
    out: list[str] = []
    for k, piece in enumerate(pieces):
        prob = _clean_problem(piece)
        if truncated and k == len(pieces) - 1 and not re.search(r"[.?!)$]$", prob.rstrip(" *_")):
            continue
        if len(prob.split()) >= min_words and prob not in out:
            out.append(prob)
    if not out:
        cut = " (generation cut off)" if truncated else ""
        return Rejected(Reason.UNPARSEABLE, f"no problem found{cut} in: {_snippet(text)}")
    return out[:max_problems] if max_problems else out


_NLI_KEY_RE = re.compile(
    r"^[ \t]*(?:[-*>#][ \t]*)*" + _EMPH + r"[ \t]*(?P<key>premise|hypothesis|label|relationship|relation)"
    r"[ \t]*\d*[ \t]*" + _EMPH + r"[ \t]*[:=\-][ \t]*" + _EMPH + r"[ \t]*(?P<value>.*)$",
    re.IGNORECASE,
)


def parse_nli(
    text: str, labels: Sequence[str] = DEFAULT_NLI_LABELS, max_items: int | None = None
) -> list[NLIItem] | Rejected:
    """Read ``Premise: / Hypothesis: / Label:`` triples from an NLI-generation output.

    Keys may carry numbers or markdown (``**Premise 1:**``); values may continue on following lines up to a
    blank line or the next key. Labels are normalized to ``labels`` (synonyms such as "entails" understood);
    a triple with a missing part or an unknown label is skipped.

    Returns:
        The complete triples (at most ``max_items``), or ``Rejected("unparseable", …)`` saying what was wrong.
    """
    if not text or not text.strip():
        return Rejected(Reason.UNPARSEABLE, "empty generation")
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] | None = None
    field: str | None = None
    for line in text.splitlines():
        m = _NLI_KEY_RE.match(line)
        if m:
            key = m.group("key").lower()
            key = "label" if key.startswith("relation") else key
            value = m.group("value").strip().strip("*_").strip()
            if key == "premise" or cur is None or key in cur:
                cur = {}
                blocks.append(cur)
            cur[key] = value
            field = key
        elif not line.strip():
            field = None
        elif cur is not None and field in ("premise", "hypothesis"):
            cur[field] = (cur[field] + " " + line.strip()).strip()
    items: list[NLIItem] = []
    problems: list[str] = []
    for b in blocks:
        prem, hyp, raw = b.get("premise", ""), b.get("hypothesis", ""), b.get("label", "")
        if not prem or not hyp or not raw:
            problems.append("missing " + "/".join(k for k in ("premise", "hypothesis", "label") if not b.get(k)))
            continue
        label = normalize_label(raw, labels)
        if label is None:
            problems.append(f"unknown label {_snippet(raw, 30)!r}")
            continue
        item = NLIItem(prem, hyp, label)
        if item not in items:
            items.append(item)
    if not items:
        why = "; ".join(dict.fromkeys(problems)) if problems else "no Premise:/Hypothesis:/Label: lines"
        return Rejected(Reason.UNPARSEABLE, f"{why} in: {_snippet(text)}"[:_DETAIL_CHARS])
    return items[:max_items] if max_items else items


# ----------------------------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one candidate: the vote, and the rejection when it is not kept."""

    vote: Vote
    rejected: Rejected | None

    @property
    def accepted(self) -> bool:
        return self.rejected is None


class MathTask:
    """Math problems: generation prompts, parsing, solution prompts, τ-of-n vote, samples.

    Args:
        cfg: ``SynthConfig``.
        prompts: templates; None loads ``cfg.prompts_file``.
    """

    name = "math"

    def __init__(self, cfg: Any, prompts: Prompts | None = None):
        self.cfg = cfg
        self.prompts = (
            prompts if prompts is not None else load_prompts(getattr(cfg, "prompts_file", "conf/prompts.yaml"))
        )

    def generation_prompts(self, exemplar_groups: Sequence[Sequence[Any]]) -> list[str]:
        return build_problem_prompts(exemplar_groups, self.cfg, self.prompts)

    def parse_generation(self, text: str, truncated: bool = False) -> list[MathProblem] | Rejected:
        """Problems in one generation (``truncated``: its finish reason was ``length``)."""
        parsed = parse_problems(text, truncated=truncated)
        return parsed if isinstance(parsed, Rejected) else [MathProblem(p) for p in parsed]

    def candidate_text(self, candidate: MathProblem) -> str:
        """The text that dedup and decontamination look at."""
        return candidate.problem

    def solution_prompts(self, candidates: Sequence[MathProblem]) -> list[str]:
        return build_solution_prompts(candidates, self.prompts)

    def verify(self, candidate: MathProblem, solutions: Sequence[str]) -> Verdict:
        vote = vote_math(
            solutions,
            self.cfg.tau,
            self.cfg.max_answer_chars,
            getattr(self.cfg, "tie_break", "first"),
            getattr(self.cfg, "answer_fallback", True),
        )
        if vote.accepted:
            return Verdict(vote, None)
        return Verdict(vote, Rejected(vote.reason or Reason.NO_CONSENSUS, _vote_detail(vote)))

    def samples(self, candidate: MathProblem, verdict: Verdict, solutions: Sequence[str]) -> list[dict[str, str]]:
        """One (prompt, completion) per agreeing solution."""
        if not verdict.accepted:
            return []
        return [{"prompt": candidate.problem, "completion": solutions[i]} for i in verdict.vote.indices]


class NLITask:
    """NLI triples: generation prompts, parsing, solver prompts, label vote, samples.

    Args:
        cfg: ``SynthConfig``.
        prompts: templates; None loads ``cfg.prompts_file``.
        labels: the label set (``IngestConfig.nli_labels``).
        sample_template: how a kept triple becomes a sample prompt (``IngestConfig.nli_prompt_template``, with
            ``{premise}`` and ``{hypothesis}``), so synthetic rows look like the ingested pool.
    """

    name = "nli"

    def __init__(
        self,
        cfg: Any,
        prompts: Prompts | None = None,
        labels: Sequence[str] = DEFAULT_NLI_LABELS,
        sample_template: str | None = None,
    ):
        self.cfg = cfg
        self.prompts = (
            prompts if prompts is not None else load_prompts(getattr(cfg, "prompts_file", "conf/prompts.yaml"))
        )
        self.labels = tuple(labels)
        self.sample_template = sample_template or "Premise: {premise}\nHypothesis: {hypothesis}"

    def generation_prompts(self, exemplar_groups: Sequence[Sequence[Any]]) -> list[str]:
        return build_nli_prompts(exemplar_groups, self.cfg, self.prompts, self.labels)

    def parse_generation(self, text: str, truncated: bool = False) -> list[NLIItem] | Rejected:
        """Triples in one generation (a cut-off last triple lacks its label and is skipped anyway)."""
        return parse_nli(text, self.labels)

    def candidate_text(self, candidate: NLIItem) -> str:
        return f"{candidate.premise}\n{candidate.hypothesis}"

    def solution_prompts(self, candidates: Sequence[NLIItem]) -> list[str]:
        return build_nli_solution_prompts(candidates, self.prompts, self.labels)

    def verify(self, candidate: NLIItem, solutions: Sequence[str]) -> Verdict:
        """Kept when τ solver labels agree and the agreed label is the generated one."""
        vote = vote_labels(solutions, self.cfg.tau, self.labels, getattr(self.cfg, "tie_break", "first"))
        if not vote.accepted:
            return Verdict(vote, Rejected(vote.reason or Reason.NO_CONSENSUS, _vote_detail(vote)))
        if vote.answer != candidate.label:
            detail = f"solvers agree on {vote.answer!r}, generator labelled {candidate.label!r}"
            return Verdict(vote, Rejected(Reason.NO_CONSENSUS, detail))
        return Verdict(vote, None)

    def samples(self, candidate: NLIItem, verdict: Verdict, solutions: Sequence[str]) -> list[dict[str, str]]:
        if not verdict.accepted:
            return []
        prompt = self.sample_template.format(premise=candidate.premise, hypothesis=candidate.hypothesis)
        return [{"prompt": prompt, "completion": candidate.label}]


def _vote_detail(vote: Vote) -> str:
    answers = ", ".join("-" if a.raw is None else _snippet(a.raw, 40) for a in vote.answers)
    return f"answers [{answers}], groups {list(vote.group_sizes)}"[:_DETAIL_CHARS]


def get_task(cfg: Any, prompts: Prompts | None = None, **kwargs: Any) -> MathTask | NLITask:
    """The task named by ``cfg.task`` (``math`` or ``nli``); extra kwargs go to :class:`NLITask`."""
    if cfg.task == "math":
        return MathTask(cfg, prompts)
    if cfg.task == "nli":
        return NLITask(cfg, prompts, **kwargs)
    raise ValueError(f"Unknown synth task {cfg.task!r}; expected math or nli")
