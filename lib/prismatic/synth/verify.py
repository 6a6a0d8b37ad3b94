"""Answer extraction and the τ-of-n majority vote that decides whether a synthetic problem is kept.

Math (after Prismatic Synthesis, arXiv 2505.20161, §3): each of the ``n`` solutions ends with a final answer in
``\\boxed{...}``; the last box is taken (nested braces allowed), answers longer than ``max_answer_chars`` are
dropped (``too_long``), the rest are parsed with `math-verify <https://github.com/huggingface/Math-Verify>`_.
Small models often state the answer without a box ("The answer is 18 days.", "#### 18"); with
``fallback=True`` (the default, ``synth.answer_fallback``) such a phrase is used when a solution has no box.
Answers are grouped by math-verify equivalence (so ``0.5``, ``\\frac{1}{2}`` and ``1/2`` agree), and the problem
is kept when the largest group has at least ``τ`` members. Unlike a plain plurality, three different answers
never pass with τ = 2.

Vote rule, precisely:

- dropped answers (no box, unparseable, too long) never count and never form a group;
- groups are built in solution order: an answer joins the first group whose first member it is equivalent to;
- the winner is the largest group; among groups of equal size, the one whose first member comes first wins
  (``tie_break="first"``), or the vote fails with ``no_consensus`` when the tied groups are at least τ large
  (``tie_break="reject"``);
- kept when the winner has ≥ τ members; the result names the winning answer and the indices of its solutions.

Reason codes (:class:`~prismatic.synth.types.Reason`): ``unparseable`` (no solution gave a usable answer),
``too_long`` (none did, and at least one was over the length limit), ``no_consensus`` (usable answers, but no
group reaches τ).

NLI uses the same rule on labels normalized to the configured label set.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prismatic.synth.types import Reason

DEFAULT_NLI_LABELS = ("entailment", "neutral", "contradiction")
# words a solver uses for the three standard labels
_NLI_SYNONYMS = {
    "entailment": ("entailment", "entails", "entailed", "entail"),
    "neutral": ("neutral", "neither", "undetermined"),
    "contradiction": ("contradiction", "contradicts", "contradictory", "contradicted", "contradict"),
}

T = TypeVar("T")

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``; None when there is none or it is cut off.

    Braces nest, and escaped braces (``\{``, ``\}``) do not count. ``\boxed 5`` (no braces) gives ``5``.
    """
    if not text:
        return None
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        if i >= len(text):
            continue
        if text[i] != "{":
            bare = re.match(r"[^\s$\\]+", text[i:])
            if bare:
                return bare.group(0)
            continue
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
                j += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j].strip()
            j += 1
        # unbalanced (generation cut off): try an earlier box
    return None


_PHRASE_RE = re.compile(
    r"(?im)(?:^[ \t]*#{4}[ \t]*(?P<hash>[^\n]+?)[ \t]*$)"
    r"|(?:\b(?:final[ \t]+answer|the[ \t]+answer|answer)\b[ \t]*(?:\*\*|__)?[ \t]*(?:is[ \t]*:?|:|=)[ \t]*"
    r"(?:\*\*|__)?[ \t]*(?P<phrase>[^\n]+))"
)


def extract_answer_phrase(text: str) -> str | None:
    """The answer a solution states without a box: the last ``#### X`` line or ``(final) answer is / : X``.

    The phrase is cut at the end of its sentence (``. ``) or before a trailing clause (``, which …``).
    """
    if not text:
        return None
    matches = list(_PHRASE_RE.finditer(text))
    for m in reversed(matches):
        raw = (m.group("hash") or m.group("phrase") or "").strip()
        raw = re.split(r"\.(?:\s|$)|,\s+(?=[A-Za-z]{2,})", raw, maxsplit=1)[0]
        raw = raw.strip().strip("*_").strip()
        if raw.startswith("$") and raw.endswith("$") and len(raw) > 1:
            raw = raw.strip("$").strip()
        if raw:
            return raw
    return None


_NUMBER_WITH_UNIT_RE = re.compile(r"^\$?(?P<num>[-+]?\d[\d,]*(?:\.\d+)?)\s*(?:[A-Za-z%°²³/.\s]+)?$")


def _phrase_to_parse(raw: str) -> str:
    """What math-verify reads for an answer phrase: a number with unit words -> the number ("18 days" -> 18);
    prose -> the phrase as is (math-verify's plain extraction finds the value); a formula -> ``$formula$``."""
    m = _NUMBER_WITH_UNIT_RE.match(raw)
    if m:
        return m.group("num").replace(",", "")
    if re.search(r"(?<!\\)\b[A-Za-z]{3,}\b", raw):
        return raw
    return "$" + raw + "$"


@dataclass(frozen=True)
class Answer:
    """One solution's final answer.

    Attributes:
        raw: the boxed text (or the matched label); None when nothing was found.
        parsed: math-verify's parse (a list) or the normalized label; None when the answer is dropped.
        reason: None for a usable answer, else ``unparseable`` or ``too_long``.
        source: ``boxed``, or ``phrase`` when the fallback found it (see :func:`extract_answer_phrase`).
    """

    raw: str | None
    parsed: Any = None
    reason: Reason | None = None
    source: str = "boxed"

    @property
    def valid(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Vote:
    """Outcome of a τ-of-n vote.

    Attributes:
        accepted: the winning group has at least τ members.
        answer: the winning answer (raw text of its first member); None when no group exists.
        indices: indices of the solutions in the winning group (the agreeing solutions).
        reason: None when accepted, else a reason code.
        group_sizes: sizes of all groups, in order of first appearance.
        answers: each solution's answer.
    """

    accepted: bool
    answer: str | None
    indices: tuple[int, ...]
    reason: Reason | None
    group_sizes: tuple[int, ...]
    answers: tuple[Answer, ...]


def _in_main_thread() -> bool:
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    return threading.current_thread() is threading.main_thread()


def parse_answer(text: str, max_answer_chars: int = 300, fallback: bool = True) -> Answer:
    """Extract and parse the final answer of a math solution.

    Args:
        text: the solution.
        max_answer_chars: longer answers are dropped with reason ``too_long``.
        fallback: without a box, use a stated answer phrase (``The answer is 18``, ``#### 18``).
    """
    from math_verify import parse

    raw, source = extract_boxed(text or ""), "boxed"
    if raw is None and fallback:
        raw, source = extract_answer_phrase(text or ""), "phrase"
    if raw is None or not raw:
        return Answer(raw, None, Reason.UNPARSEABLE, source)
    if len(raw) > max_answer_chars:
        return Answer(raw, None, Reason.TOO_LONG, source)
    timeout = 5 if _in_main_thread() else None
    try:
        parsed = parse(
            _phrase_to_parse(raw) if source == "phrase" else "\\boxed{" + raw + "}", parsing_timeout=timeout
        )
    except Exception:
        parsed = []
    if not parsed:
        return Answer(raw, None, Reason.UNPARSEABLE, source)
    return Answer(raw, parsed, None, source)


def math_equivalent(a: Answer, b: Answer) -> bool:
    """math-verify equivalence of two usable answers (identical raw text short-cuts the check)."""
    from math_verify import verify

    if a.raw is not None and a.raw == b.raw:
        return True
    timeout = 5 if _in_main_thread() else None
    try:
        return bool(verify(a.parsed, b.parsed, timeout_seconds=timeout))
    except Exception:
        return False


def group_equivalent(items: Sequence[T | None], same: Callable[[T, T], bool]) -> list[list[int]]:
    """Group item indices by ``same`` (compared with each group's first member); None items are skipped."""
    groups: list[list[int]] = []
    for i, item in enumerate(items):
        if item is None:
            continue
        for g in groups:
            if same(items[g[0]], item):  # type: ignore[arg-type]
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def tau_of_n(groups: Sequence[Sequence[int]], tau: int, tie_break: str = "first") -> list[int] | None:
    """The winning group of a τ-of-n vote, or None (see the module docstring for the rule).

    Args:
        groups: index groups in order of first appearance (from :func:`group_equivalent`).
        tau: members the winner needs (>= 1).
        tie_break: ``first`` (earliest of the tied largest groups wins) or ``reject``.
    """
    if tau < 1:
        raise ValueError(f"tau must be >= 1, got {tau=}")
    if tie_break not in ("first", "reject"):
        raise ValueError(f"Unknown {tie_break=}; expected 'first' or 'reject'")
    if not groups:
        return None
    best = max(len(g) for g in groups)
    if best < tau:
        return None
    tied = [g for g in groups if len(g) == best]
    if len(tied) > 1 and tie_break == "reject":
        return None
    return list(tied[0])


def _vote(answers: list[Answer], tau: int, tie_break: str, same: Callable[[Answer, Answer], bool]) -> Vote:
    groups = group_equivalent([a if a.valid else None for a in answers], same)
    sizes = tuple(len(g) for g in groups)
    winner = tau_of_n(groups, tau, tie_break)
    if winner is not None:
        return Vote(True, answers[winner[0]].raw, tuple(winner), None, sizes, tuple(answers))
    if not groups:
        reason = Reason.TOO_LONG if any(a.reason == Reason.TOO_LONG for a in answers) else Reason.UNPARSEABLE
        return Vote(False, None, (), reason, sizes, tuple(answers))
    # no group reached tau: report the largest (earliest on ties) for the record
    largest = max(groups, key=len)
    return Vote(False, answers[largest[0]].raw, (), Reason.NO_CONSENSUS, sizes, tuple(answers))


def vote_math(
    solutions: Sequence[str],
    tau: int = 2,
    max_answer_chars: int = 300,
    tie_break: str = "first",
    fallback: bool = True,
) -> Vote:
    """τ-of-n vote over math solutions by math-verify equivalence of their boxed answers.

    Args:
        solutions: the ``n`` solution texts of one problem.
        tau: agreeing solutions needed.
        max_answer_chars: longer answers are dropped (``too_long``).
        tie_break: ``first`` or ``reject`` (see the module docstring).
        fallback: use a stated answer phrase when a solution has no box.

    Returns:
        The vote; ``indices`` are the agreeing solutions, the ones to keep.
    """
    answers = [parse_answer(s, max_answer_chars, fallback) for s in solutions]
    return _vote(answers, tau, tie_break, math_equivalent)


def _label_pattern(labels: Sequence[str]) -> tuple[re.Pattern[str], dict[str, str]]:
    words: dict[str, str] = {}
    for label in labels:
        norm = label.strip().lower()
        words[norm] = label
        for syn in _NLI_SYNONYMS.get(norm, ()):
            words.setdefault(syn, label)
    alts = sorted(words, key=len, reverse=True)  # "non-entailment" before "entailment"
    pattern = r"(?<![\w-])(" + "|".join(re.escape(w) for w in alts) + r")(?![\w-])"
    return re.compile(pattern, re.IGNORECASE), words


def normalize_label(text: str | None, labels: Sequence[str] = DEFAULT_NLI_LABELS) -> str | None:
    r"""Map a solver's output to one of ``labels`` (None when no label is found).

    Looks in order at: the last ``\boxed{...}``, a ``Label:`` / ``Answer:`` line, then the last label word in
    the text. Synonyms of the three standard labels are understood (``entails``, ``contradicts``, ``neither``).
    """
    if not text:
        return None
    pattern, words = _label_pattern(labels)

    def find_last(s: str) -> str | None:
        hits = pattern.findall(s)
        return words[hits[-1].lower()] if hits else None

    boxed = extract_boxed(text)
    if boxed:
        inner = re.sub(r"\\text\{([^}]*)\}", r"\1", boxed)
        hit = find_last(inner)
        if hit:
            return hit
    tagged = re.findall(r"(?im)^\W*(?:final\s+)?(?:label|answer)\s*[:=]\s*(.+)$", text)
    for line in reversed(tagged):
        hit = find_last(line)
        if hit:
            return hit
    return find_last(text)


def vote_labels(
    solutions: Sequence[str], tau: int = 2, labels: Sequence[str] = DEFAULT_NLI_LABELS, tie_break: str = "first"
) -> Vote:
    """τ-of-n vote over NLI solver outputs by their normalized labels (same rule as :func:`vote_math`)."""
    answers = []
    for s in solutions:
        label = normalize_label(s, labels)
        answers.append(Answer(label, label, None) if label else Answer(None, None, Reason.UNPARSEABLE))
    return _vote(answers, tau, tie_break, lambda a, b: a.parsed == b.parsed)
