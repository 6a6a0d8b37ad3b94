"""Option log-likelihood scoring: against a bigram model whose probabilities are written down, against a plain
per-sequence torch loop on a tiny llama, the argmax with each normalization, and the evaluation built on it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prismatic.gradients.model import IGNORE_INDEX, Encoded
from prismatic.train.loglik import OptionScore, choose, option_scores, sequence_logprobs

# p(next | previous) of a 3-token bigram model, one row per previous token
PROBS = [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]


class Bigram(torch.nn.Module):
    """logits[b, t] = log PROBS[ids[b, t]]: the next-token distribution depends on the current token only."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.tensor(PROBS)), requires_grad=False)

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.table[input_ids])


def enc(ids, n_prompt):
    labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
    return Encoded(ids, labels, len(ids) - n_prompt, False)


def test_sequence_logprobs_match_hand_computed_bigram_values():
    seqs = [
        enc([0, 1, 2], 2),  # log p(2 | 1) = log 0.7
        enc([0, 1, 2], 1),  # log p(1 | 0) + log p(2 | 1) = log 0.25 + log 0.7
        enc([2, 0, 0, 1], 2),  # log p(0 | 0) + log p(1 | 0) = log 0.5 + log 0.25 (longest: padded others)
        enc([1, 0], 1),  # log p(0 | 1) = log 0.1
    ]
    want = [math.log(0.7), math.log(0.25 * 0.7), math.log(0.5 * 0.25), math.log(0.1)]
    for bs in (1, 2, 4):  # batching and length-sorting must not change a value or its order
        got = sequence_logprobs(Bigram(), seqs, pad_id=2, batch_size=bs)
        assert [n for _, n in got] == [1, 2, 2, 1]
        assert [lp for lp, _ in got] == pytest.approx(want, abs=1e-6)


def test_choose_takes_the_argmax_under_each_normalization():
    # option 0: short and likely in total; option 1: long, more likely per token; option 2: best per character
    item = [OptionScore(-2.0, 1, 2), OptionScore(-3.0, 6, 30), OptionScore(-2.5, 2, 100)]
    assert choose([item], "none") == [0]
    assert choose([item], "tokens") == [1]
    assert choose([item], "chars") == [2]
    assert choose([[OptionScore(-1.0, 1, 1), OptionScore(-1.0, 1, 1)]]) == [0]  # a tie goes to the first
    with pytest.raises(ValueError, match="normalize"):
        item[0].value("bytes")


def reference_option_logprob(model, tok, prompt, option):
    """Σ log p(option tokens | chat-rendered prompt), one sequence at a time, full softmax, no batching."""
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": option}], tokenize=False
    )
    p_ids = tok(head, add_special_tokens=False)["input_ids"]
    c_ids = tok(full[len(head) :].rstrip(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    total = sum(float(logp[len(p_ids) + j - 1, c]) for j, c in enumerate(c_ids))
    return total, len(c_ids)


def test_option_scores_match_a_plain_loop_on_a_tiny_llama(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).float().eval()
    prompts = ["premise : the cat sits . hypothesis : the dog runs", "what is 2 plus 3 ?"]
    options = [["entailment", "neutral", "contradiction"], ["5", "6", "the answer is 5"]]
    shared = option_scores(model, tok, prompts, options, chat_template=True, max_tokens=64)  # prompt's kv cache
    full = option_scores(model, tok, prompts, options, chat_template=True, max_tokens=64, batch_size=2,
                         shared_prefix=False)  # fmt: skip
    for got in (shared, full):
        for i, opts in enumerate(options):
            for k, o in enumerate(opts):
                lp, n = reference_option_logprob(model, tok, prompts[i], o)
                assert got[i][k].n_tokens == n and got[i][k].n_chars == len(o)
                assert got[i][k].logprob == pytest.approx(lp, abs=1e-4)
    got = shared
    # the option "the answer is 5" has 4 words + end of turn: 5 tokens
    assert got[1][2].n_tokens == 5


def test_lm_loglik_evaluation_records_the_method_and_picks_the_likeliest_label(tmp_path, tiny_model):
    """evaluate_student with loglik: predictions are the argmax labels of the plain loop, folded to 2-way."""
    from transformers import AutoTokenizer

    from prismatic.config import load_config
    from prismatic.train.benchmarks import NLI2, Benchmark
    from prismatic.train.evaluate import evaluate_student
    from prismatic.train.lm import LMStudent

    settings = load_config(overrides=[f"data_root={tmp_path}", "train.eval_method=loglik"])
    student = LMStudent(tiny_model, device="cpu")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    pairs = [("the cat sits", "the dog runs"), ("a dog runs", "a cat sits"), ("the cat runs", "the cat runs")]
    gold = ["entailment", "non-entailment", "non-entailment"]
    bench = Benchmark(
        "n",
        "nli",
        "ood",
        [{"premise": p, "hypothesis": h, "label": g} for (p, h), g in zip(pairs, gold, strict=True)],
        NLI2,
    )
    res = evaluate_student(student, bench, settings)
    words = list(settings.ingest.nli_labels)
    want = []
    for p, h in pairs:
        prompt = settings.ingest.nli_prompt_template.format(premise=p, hypothesis=h)
        lps = [reference_option_logprob(student.model, tok, prompt, w)[0] for w in words]
        best = words[max(range(len(words)), key=lambda k: lps[k])]
        want.append("entailment" if best == "entailment" else "non-entailment")
    assert res.method == "loglik" and res.unparsed == 0
    assert res.predictions == want
    assert res.correct == sum(a == b for a, b in zip(want, gold, strict=True))
    # generate is still there, and says so
    gen = evaluate_student(student, bench, settings, method="generate")
    assert gen.method == "generate" and gen.n == 3


def test_math_multiple_choice_uses_loglik_and_plain_math_generates(tmp_path, tiny_model, monkeypatch):
    from prismatic.config import load_config
    from prismatic.train.benchmarks import Benchmark
    from prismatic.train.evaluate import evaluate_student
    from prismatic.train.lm import LMStudent

    settings = load_config(overrides=[f"data_root={tmp_path}"])
    student = LMStudent(tiny_model, device="cpu")
    mc = Benchmark(
        "mc", "math", "ood",
        [{"problem": "what is 2 plus 3 ?", "answer": "5", "choices": ["4", "5", "6"]},
         {"problem": "what is 1 plus 1 ?", "answer": "2", "choices": ["2", "3"]}],
    )  # fmt: skip
    scores = student.option_scores(["what is 2 plus 3 ?", "what is 1 plus 1 ?"], [["4", "5", "6"], ["2", "3"]])
    picks = choose(scores)
    res = evaluate_student(student, mc, settings, method="loglik")
    assert res.method == "loglik"
    assert res.correct == int(picks[0] == 1) + int(picks[1] == 0)
    plain = Benchmark("m", "math", "ood", [{"problem": "what is 2 plus 3 ?", "answer": "5"}])
    monkeypatch.setattr(student, "generate", lambda prompts, **kw: ["\\boxed{5}"])
    res = evaluate_student(student, plain, settings, method="loglik")
    assert res.method == "generate" and res.correct == 1  # no choices: generation + answer parsing


def test_math_file_choices_are_validated(tmp_path):
    import json

    from prismatic.errors import InputError
    from prismatic.train.benchmarks import load_file

    ok = tmp_path / "mc.jsonl"
    ok.write_text(json.dumps({"problem": "1 + 1", "answer": 2, "choices": [1, 2, 3]}) + "\n")
    b = load_file(ok)
    assert b.examples == [{"problem": "1 + 1", "answer": "2", "choices": ["1", "2", "3"]}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1 + 1", "answer": "2", "choices": ["1", "3"]}) + "\n")
    with pytest.raises(InputError, match="not one of the choices"):
        load_file(bad)


def test_eval_stage_records_the_method_and_keeps_old_rows_readable(tmp_path, tiny_model):
    """eval_stage on an lm student: rows say loglik / generate; rows written before those columns read null."""
    import json

    import pyarrow as pa
    from deltalake import write_deltalake

    from prismatic.config import load_config
    from prismatic.tables import open_store, table_def
    from prismatic.train import eval_stage
    from prismatic.train.benchmarks import load_file
    from prismatic.train.evaluate import evaluate_student
    from prismatic.train.lm import LMStudent

    settings = load_config(overrides=[f"data_root={tmp_path / 'lake'}", "storage.engine=delta-rs"])
    store = open_store(settings, None)
    old_schema = pa.schema(
        [
            f
            for f in table_def("eval_results").schema
            if f.name not in ("eval_method", "balanced_accuracy", "model_uri", "model_version")
        ]
    )
    old = {f.name: None for f in old_schema} | {"run_id": "earlier", "benchmark": "b", "accuracy": 0.5, "n": 2}
    write_deltalake(str(store.path("eval_results")), pa.Table.from_pylist([old], schema=old_schema))

    bench = tmp_path / "nli.jsonl"
    labels = ["entailment", "neutral", "contradiction", "entailment", "contradiction", "neutral"]
    bench.write_text(
        "".join(json.dumps({"premise": f"the cat sits {i}", "hypothesis": "a dog runs", "label": lab}) + "\n"
                for i, lab in enumerate(labels))
    )  # fmt: skip
    rows = eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)])
    want = evaluate_student(LMStudent(tiny_model, device="cpu"), load_file(bench), settings, method="loglik")
    recalls = [
        sum(p == g for p, g in zip(want.predictions, labels, strict=True) if g == lab) / labels.count(lab)
        for lab in set(labels)
    ]
    assert rows[0]["eval_method"] == "loglik" and rows[0]["n_unparsed"] == 0
    assert rows[0]["accuracy"] == pytest.approx(want.accuracy)
    assert rows[0]["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))

    eval_stage(store, settings, model_path=tiny_model, benchmarks=[str(bench)], method="generate")
    table = {(r["run_id"], r["eval_method"]): r for r in store.read_arrow("eval_results").to_pylist()}
    sid = rows[0]["run_id"]  # one row per (student, benchmark, method): loglik and generate coexist
    assert set(table) == {("earlier", None), (sid, "loglik"), (sid, "generate")}
    assert table[(sid, "loglik")]["accuracy"] == pytest.approx(want.accuracy)
    assert table[("earlier", None)]["accuracy"] == 0.5
