"""The lm student: 2-step SFT of a tiny random llama streamed from Delta, checkpoint, lineage, evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from prismatic.config import load_config
from prismatic.ingest import ingest

MATH_ROWS = [
    {"prompt": f"what is {a} plus {b} ?", "completion": f"{a} plus {b} equals {a + b} ."}
    for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (0, 7), (4, 4), (6, 3), (1, 1)]
]


def lm_settings(root, model, *extra):
    return load_config(overrides=[
        f"data_root={root}", "storage.engine=delta-rs", "train.student=lm", "train.task=math",
        f"train.model.path={model}", "train.max_steps=2", "train.epochs=2", "train.batch_size=8", "train.lr=0.01",
        "train.max_tokens=64", "train.warmup_steps=0", *extra,
    ])  # fmt: skip


def pool(tmp_path, settings):
    from prismatic.tables import open_store

    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    store = open_store(settings, None)
    ingest(store, [str(path)], "arith", "math", settings)
    return store


def reference_loss(model_dir, rows, max_tokens=64) -> float:
    """Token-mean completion NLL of the untouched base model on all rows, computed without the trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prismatic.gradients.model import collate, encode

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).float().eval()
    enc = [encode(tok, r["prompt"], r["completion"], max_tokens, "right", True) for r in rows]
    ids, labels = collate(enc, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(nll / (labels[:, 1:] != -100).sum())


def test_two_step_sft_loss_decreases_and_checkpoint_has_lineage(tmp_path, tiny_model):
    from prismatic.train import train_stage
    from prismatic.train.lm import LMStudent

    settings = lm_settings(tmp_path / "lake", tiny_model)
    store = pool(tmp_path, settings)
    report = train_stage(store, settings, "lm")
    assert not report.reused and report.kind == "lm" and report.n_train == 8
    assert report.metrics["steps"] == 2
    first, last = report.metrics["first_loss"], report.metrics["last_loss"]
    assert last < first
    # step 1 saw the whole set (one batch of 8) with the untouched weights: its loss is the base model's loss
    assert first == pytest.approx(reference_loss(tiny_model, MATH_ROWS), rel=1e-4)

    import mlflow

    from prismatic import tracking

    tracking.setup(settings)
    client = mlflow.MlflowClient()
    history = client.get_metric_history(report.mlflow_run_id, "train_loss")
    assert [h.step for h in history] == [0, 1]
    assert history[1].value < history[0].value
    run = client.get_run(report.mlflow_run_id)
    assert run.data.tags["lineage.samples"] == str(store.version("samples"))
    assert run.data.tags["student_id"] == report.student_id
    # logged with the transformers flavor and registered; the registered weights generate what the folder does
    from prismatic.train.registry import fetch_registered

    assert report.registered == {"name": "prismatic_student", "version": "1", "uri": "models:/prismatic_student/1"}
    info = mlflow.models.get_model_info(report.registered["uri"])
    assert "transformers" in info.flavors and info.signature is not None and info.saved_input_example_info
    folder, manifest, _ = fetch_registered(settings, "models:/prismatic_student/1")
    registered = LMStudent(folder)
    assert manifest["student_id"] == report.student_id and manifest["lineage"]["n_train"] == 8
    prompts = ["what is 1 plus 2 ?", "what is 3 plus 3 ?"]
    assert registered.generate(prompts, max_new_tokens=4) == LMStudent(report.path).generate(prompts, max_new_tokens=4)

    folder = tmp_path / "lake" / "students" / report.student_id
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "student.json"} <= names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pickle"))}
    manifest = json.loads((folder / "student.json").read_text())
    assert manifest["lineage"]["table_versions"]["samples"] == store.version("samples")
    assert manifest["lineage"]["n_train"] == 8 and manifest["kind"] == "lm"
    student = LMStudent(folder)
    out = student.generate(["what is 1 plus 2 ?", "what is 3 plus 3 ?"], max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)

    assert train_stage(store, settings, "lm").reused  # same data, same settings: the checkpoint is reused
    # the end-of-round helper: the (reused) student evaluated on a math file, rows in eval_results
    from prismatic.train import train_and_evaluate

    bench = tmp_path / "sums.jsonl"
    bench.write_text(
        "".join(json.dumps({"problem": f"what is {a} plus {a} ?", "answer": str(2 * a)}) + "\n" for a in (1, 2))
    )
    out = train_and_evaluate(store, settings, "lm", benchmarks=[str(bench)])
    row = next(r for r in store.read_arrow("eval_results").to_pylist() if r["run_id"] == report.student_id)
    assert out["student_id"] == report.student_id and out["sums_accuracy"] == row["accuracy"] == out["ood_accuracy"]
    assert row["n"] == 2 and row["task"] == "math"
    ids = sorted(r["sample_id"] for r in store.read_arrow("samples").to_pylist())[:4]
    sub = train_stage(store, settings, "lm", ids, subset_id="first-four")
    assert not sub.reused and sub.n_train == 4 and sub.student_id != report.student_id
    assert (
        json.loads((tmp_path / "lake" / "students" / sub.student_id / "student.json").read_text())["lineage"][
            "subset_id"
        ]
        == "first-four"
    )


def test_lm_evaluation_parses_answers(tmp_path, monkeypatch, tiny_model):
    """Scripted generations give known accuracies: math by math-verify, NLI by label words, junk is wrong."""
    from prismatic.train.benchmarks import NLI2, Benchmark
    from prismatic.train.evaluate import evaluate_student
    from prismatic.train.lm import LMStudent

    settings = lm_settings(tmp_path / "lake", tiny_model)
    student = LMStudent(tiny_model)
    math = Benchmark("m", "math", "ood", [{"problem": f"{a} + {a}", "answer": str(2 * a)} for a in (1, 2, 3, 4)])
    monkeypatch.setattr(student, "generate", lambda prompts, **kw: ["\\boxed{2}", "It is 4.", "5", "no idea"])
    res = evaluate_student(student, math, settings)
    assert (res.n, res.correct, res.unparsed, res.accuracy) == (4, 2, 1, 0.5)
    nli = Benchmark(
        "n",
        "nli",
        "ood",
        [
            {"premise": "p", "hypothesis": "h", "label": lab}
            for lab in ("entailment", "non-entailment", "non-entailment")
        ],
        NLI2,
    )
    prompts_seen = []

    def scripted(prompts, **kw):
        prompts_seen.extend(prompts)
        return ["Entailment.", "neutral", "hmm"]

    monkeypatch.setattr(student, "generate", scripted)
    res = evaluate_student(student, nli, settings, method="generate")  # loglik is the default for NLI
    assert (res.correct, res.unparsed) == (2, 1)
    assert prompts_seen[0] == settings.ingest.nli_prompt_template.format(premise="p", hypothesis="h")


def test_lora_without_peft_is_a_clear_error(tmp_path, tiny_model):
    try:
        import peft  # noqa: F401

        pytest.skip("peft is installed")
    except ImportError:
        pass
    from prismatic.train.lm import train_lm

    settings = lm_settings(tmp_path / "lake", tiny_model, "train.method=lora")
    store = pool(tmp_path, settings)
    with pytest.raises(ImportError, match="pip install"):
        train_lm(store, settings, None, tmp_path / "out")


@pytest.mark.spark
@pytest.mark.slow
def test_torch_distributor_local_mode(tmp_path, spark, tiny_model):
    """The cluster path, in local mode: TorchDistributor(num_processes=1, local_mode=True, use_gpu=False)."""
    from prismatic.tables import open_store
    from prismatic.train.lm import train_lm

    settings = lm_settings(
        tmp_path / "lake", tiny_model, "train.distributor=local", "train.num_processes=1", "train.use_gpu=false"
    )
    pool(tmp_path, settings)
    store = open_store(settings, spark)
    res = train_lm(store, settings, None, tmp_path / "ckpt")
    assert res.steps == 2 and res.losses[1] < res.losses[0] and res.samples == 16
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


@pytest.mark.spark
@pytest.mark.slow
def test_torch_distributor_streams_staged_rows_without_delta_rs(tmp_path, spark, tiny_model, monkeypatch):
    """Engines whose workers cannot read the table (delta-spark): the driver stages the rows as Parquet under the
    data root, the torchrun worker streams exactly those rows, and the staging folder is removed afterwards."""
    import pyarrow.dataset as ds

    from prismatic.tables import open_store
    from prismatic.train import lm

    settings = lm_settings(
        tmp_path / "lake", tiny_model, "train.distributor=local", "train.num_processes=1", "train.use_gpu=false"
    )
    pool(tmp_path, settings)
    store = open_store(settings, spark)
    monkeypatch.setattr(store, "engine", "delta-spark")  # the delta-spark path, on a store this machine can open
    staged = []
    real = lm._stage_rows

    def spy(st, ids, task, path):
        real(st, ids, task, path)
        staged.append((path, ds.dataset(str(path), format="parquet").to_table().to_pylist()))

    monkeypatch.setattr(lm, "_stage_rows", spy)
    res = lm.train_lm(store, settings, None, tmp_path / "ckpt")
    ((path, rows),) = staged
    assert path.parent == settings.root / "_staging" and not path.exists()
    assert sorted((r["prompt"], r["completion"]) for r in rows) == sorted(
        (r["prompt"], r["completion"]) for r in MATH_ROWS
    )
    # step 1 is one batch of all 8 staged rows under the untouched weights: the base model's loss on MATH_ROWS
    assert res.steps == 2 and res.losses[0] == pytest.approx(reference_loss(tiny_model, MATH_ROWS), rel=1e-4)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()

    ids = sorted(r["sample_id"] for r in store.read_arrow("samples").to_pylist())[:3]
    lm.train_lm(store, settings, ids, tmp_path / "ckpt3")
    want = {(r["prompt"], r["completion"]) for r in store.read_arrow("samples").to_pylist() if r["sample_id"] in ids}
    assert {(r["prompt"], r["completion"]) for r in staged[1][1]} == want and len(staged[1][1]) == 3
