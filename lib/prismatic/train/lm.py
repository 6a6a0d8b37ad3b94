"""The ``lm`` student: supervised fine-tuning of a causal LM on prompt / completion pairs.

* **Loss**: mean token NLL of the completion only (prompt tokens labelled -100), the chat template applied —
  the same encoding the scoring stage uses (:func:`prismatic.gradients.model.encode`), so a student learns
  exactly the tokens whose gradients were measured. Right padding, no attention mask (see ``collate``).
* **Full fine-tune** by default; ``train.method=lora`` uses peft (an optional extra: ``pip install peft``) and
  merges the adapters before saving, so every checkpoint is a plain transformers folder.
* **Data** is streamed from the Delta snapshot of ``samples`` as Arrow record batches
  (:func:`prismatic.train.data.iter_sample_batches`: delta-rs ``to_pyarrow_dataset()`` → batches), shuffled in a
  bounded buffer, tokenized on the fly, collated into torch tensors. petastorm, the usual Spark → torch bridge,
  cannot be imported with any pyarrow that pyspark 4 accepts (it needs ``pyarrow.filesystem``) and is
  unmaintained; the Arrow batches need no extra dependency, no intermediate copy of the table and read the exact
  Delta snapshot (not the stale files a plain Parquet read of the folder would see).
* **Distributed**: ``train.distributor=local|cluster`` runs the same function under
  ``pyspark.ml.torch.distributor.TorchDistributor`` (``torchrun`` processes; DDP with gloo on CPU, nccl on GPU);
  every rank streams the same batches and keeps every ``world``-th micro-batch; rank 0 saves. With delta-rs the
  ranks read the Delta snapshot themselves; with delta-spark (Databricks) the driver first writes the training
  rows as Parquet under ``<data_root>/_staging`` (use a Unity Catalog volume as the data root) for them.
* **Checkpoint**: ``model.safetensors`` + config + tokenizer (``save_pretrained``), no pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from prismatic.config import Settings, TrainConfig
from prismatic.errors import PrismError

log = logging.getLogger(__name__)

PEFT_HINT = "train.method=lora needs peft: pip install 'prismatic[lora]' (or pip install 'peft>=0.12')"


@dataclass
class LMTrainResult:
    """What one SFT run did. ``losses[i]`` is the mean completion-token NLL of optimizer step i."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    world_size: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


# ---- data ---------------------------------------------------------------------------------------------------


def shuffled(rows: Iterable[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """Buffered shuffle of a stream: hold ``buffer`` rows, emit a random one per new row, then drain."""
    buf: list[Any] = []
    for r in rows:
        if len(buf) < buffer:
            buf.append(r)
            continue
        i = rng.randrange(len(buf))
        buf[i], r = r, buf[i]
        yield r
    rng.shuffle(buf)
    yield from buf


def encoded_stream(
    batches: Iterable[pa.RecordBatch], tokenizer, cfg: TrainConfig, skipped: dict[str, int], seed: int
) -> Iterator[Any]:
    """Arrow batches of (prompt, completion) → shuffled :class:`~prismatic.gradients.model.Encoded` samples."""
    from prismatic.gradients.model import encode

    def rows() -> Iterator[tuple[str, str]]:
        for b in batches:
            yield from zip(b.column("prompt").to_pylist(), b.column("completion").to_pylist(), strict=True)

    for prompt, completion in shuffled(rows(), cfg.shuffle_buffer, random.Random(seed)):
        if not isinstance(prompt, str) or not isinstance(completion, str):
            skipped["null_text"] = skipped.get("null_text", 0) + 1
            continue
        e = encode(tokenizer, prompt, completion, cfg.max_tokens, "right", cfg.chat_template)
        if e.error:
            skipped[e.error] = skipped.get(e.error, 0) + 1
            continue
        yield e


def micro_batches(encoded: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for e in encoded:
        batch.append(e)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---- model --------------------------------------------------------------------------------------------------


def load_trainable(cfg: TrainConfig, device: str | None = None):
    """Base model (trainable, train mode) + tokenizer + identity, from ``train.model`` (a folder, .gguf, hub id,
    ``builtin:smollm2``), with LoRA adapters when ``train.method=lora``."""
    from prismatic.gradients.model import load_model

    mcfg = cfg.model if device is None else cfg.model.model_copy(update={"device": device})
    loaded = load_model(mcfg)
    model = loaded.model
    if cfg.method == "lora":
        model = apply_lora(model, cfg)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model, loaded


def apply_lora(model, cfg: TrainConfig):
    """Wrap ``model`` with peft LoRA adapters on ``train.lora_targets`` (only adapters train).

    Raises:
        ImportError: peft is not installed (with the pip command).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError(PEFT_HINT) from None
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


def batch_loss(model, ids, labels):
    """Mean NLL over every completion token of the micro-batch (token-weighted) and the token count."""
    import torch

    logits = model(input_ids=ids).logits
    target = labels[:, 1:]
    n = int((target != -100).sum())
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss / max(n, 1), n


def sft(
    model, tokenizer, data: Callable[[], Iterable[pa.RecordBatch]], cfg: TrainConfig, device=None,
    on_step: Callable[[int, float], None] | None = None, rank: int = 0, world: int = 1,
) -> LMTrainResult:  # fmt: skip
    """Fine-tune ``model`` in place on the completion-only loss.

    Args:
        model: a causal LM whose trainable parameters require grad (train mode).
        tokenizer: its tokenizer (with a chat template when ``cfg.chat_template``).
        data: returns a fresh iterator of Arrow batches with ``prompt`` / ``completion`` (called once per epoch).
        cfg: epochs, max_steps, batch_size, grad_accum, lr, weight_decay, warmup_steps, max_grad_norm, ...
        device: where batches go (default: the model's device).
        on_step: called with (step, loss) after each optimizer step (MLflow logging).
        rank, world: this process among ``world`` data-parallel ranks (each keeps every world-th micro-batch).

    Returns:
        The per-step losses and counts.
    """
    import torch

    from prismatic.gradients.model import pad_id_of

    torch.manual_seed(cfg.seed)
    device = device or next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PrismError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    pad = pad_id_of(tokenizer, model)
    res = LMTrainResult(world_size=world)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    # uneven micro-batch counts across ranks must not hang DDP's all-reduce
    joined = model.join() if world > 1 and hasattr(model, "join") else contextlib.nullcontext()
    with joined:
        _epochs(model, tokenizer, data, cfg, device, pad, opt, sched, params, res, on_step, rank, world)
    res.seconds = time.perf_counter() - t0
    if res.steps == 0:
        raise PrismError(
            "no training step was taken: the training set is empty after encoding",
            hint=f"skipped samples by reason: {res.skipped or 'none'}",
        )
    return res


def _epochs(model, tokenizer, data, cfg, device, pad, opt, sched, params, res, on_step, rank, world) -> None:
    import torch

    from prismatic.gradients.model import collate

    step, micro, acc_loss, acc_tokens = 0, 0, 0.0, 0
    done = False
    for epoch in range(cfg.epochs):
        stream = encoded_stream(data(), tokenizer, cfg, res.skipped, seed=cfg.seed + epoch)
        for j, mb in enumerate(micro_batches(stream, cfg.batch_size)):
            if j % world != rank:
                continue
            ids, labels = collate(mb, pad, device)
            loss, n = batch_loss(model, ids, labels)
            (loss / cfg.grad_accum).backward()
            micro += 1
            acc_loss += float(loss.detach()) * n
            acc_tokens += n
            res.samples += len(mb)
            res.tokens += n
            if micro % cfg.grad_accum == 0:
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                value = acc_loss / max(acc_tokens, 1)
                res.losses.append(value)
                if on_step is not None:
                    on_step(step, value)
                step += 1
                acc_loss, acc_tokens = 0.0, 0
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    done = True
                    break
        if done:
            break
    if micro % cfg.grad_accum and (cfg.max_steps is None or step < cfg.max_steps):  # the last partial step
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        res.losses.append(acc_loss / max(acc_tokens, 1))
        if on_step is not None:
            on_step(step, res.losses[-1])
        step += 1
    res.steps = step


def save_checkpoint(model, tokenizer, folder: str | Path) -> Path:
    """Save a plain transformers folder (safetensors); LoRA adapters are merged into the weights first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def sft_rows_to_folder(rows: list[dict], cfg: TrainConfig, folder: str | Path, device: str = "cpu") -> LMTrainResult:
    """Fine-tune ``cfg.model`` on in-memory ``{prompt, completion}`` rows and save the checkpoint to ``folder`` (the
    benches' short SFT; the stages train from tables through :func:`train_lm`)."""
    model, loaded = load_trainable(cfg, device=device)
    res = sft(model, loaded.tokenizer, lambda: [pa.RecordBatch.from_pylist(rows)], cfg)
    save_checkpoint(model, loaded.tokenizer, folder)
    return res


# ---- entry points -------------------------------------------------------------------------------------------


def _local_store(settings: Settings):
    from prismatic.tables import open_store

    return open_store(settings, None)


def run_training(payload: dict) -> dict:
    """Train and save one lm student; the function every process runs (also under TorchDistributor).

    Args:
        payload: ``settings`` (a Settings dump), ``sample_ids`` (list or None), ``folder`` (checkpoint path).

    Returns:
        :meth:`LMTrainResult.to_dict` of rank 0 (other ranks return theirs; TorchDistributor keeps rank 0's).
    """
    import torch

    settings = Settings.model_validate(payload["settings"])
    cfg = settings.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dist = world > 1
    device = "cuda" if torch.cuda.is_available() and cfg.use_gpu is not False else "cpu"
    if dist:
        import torch.distributed as tdist

        tdist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        model, loaded = load_trainable(cfg, device="cuda" if device == "cuda" else "cpu")
        if dist:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(model)
        staged = payload.get("staged")
        store = None if staged else _local_store(settings)
        ids = payload.get("sample_ids")

        def data() -> Iterable[pa.RecordBatch]:
            if staged:  # a Parquet snapshot the driver wrote for the workers (delta-spark engine)
                import pyarrow.dataset as ds

                return ds.dataset(staged, format="parquet").to_batches(
                    columns=["prompt", "completion"], batch_size=cfg.arrow_batch_rows
                )
            return _iter_batches(store, ids, cfg, settings)

        res = sft(model, loaded.tokenizer, data, cfg, rank=rank, world=world)
        if rank == 0:
            inner = model.module if dist else model
            save_checkpoint(inner, loaded.tokenizer, payload["folder"])
        return res.to_dict()
    finally:
        if dist:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _iter_batches(store, ids, cfg: TrainConfig, settings: Settings) -> Iterable[pa.RecordBatch]:
    from prismatic.train.data import iter_sample_batches

    return iter_sample_batches(
        store, ids, ("prompt", "completion"), cfg.arrow_batch_rows, task=None if ids is not None else cfg.task
    )


def _stage_rows(store, sample_ids: list[str] | None, task: str, path: Path) -> None:
    from pyspark.sql import functions as F

    df = store.pool().where(F.col("task") == task) if sample_ids is None else store.read("samples")
    if sample_ids is not None:
        ids = store.spark.createDataFrame([(s,) for s in sample_ids], "sample_id string")
        df = df.join(ids, "sample_id")
    df.select("prompt", "completion").write.mode("overwrite").parquet(str(path))


def train_lm(
    store, settings: Settings, sample_ids: list[str] | None, folder: str | Path,
    on_step: Callable[[int, float], None] | None = None,
) -> LMTrainResult:  # fmt: skip
    """Fine-tune the configured base model on ``sample_ids`` (or every pool row of ``train.task``) into ``folder``.

    ``train.distributor=none`` trains in this process (losses are reported live through ``on_step``);
    ``local`` / ``cluster`` hand :func:`run_training` to ``TorchDistributor(num_processes, local_mode, use_gpu)``,
    which needs the store's Spark session.
    """
    import torch

    cfg = settings.train
    folder = Path(folder)
    if cfg.method == "lora":
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ImportError(PEFT_HINT) from None
    if cfg.distributor == "none":
        model, loaded = load_trainable(cfg)

        def data() -> Iterable[pa.RecordBatch]:
            return _iter_batches(store, sample_ids, cfg, settings)

        res = sft(model, loaded.tokenizer, data, cfg, on_step=on_step)
        save_checkpoint(model, loaded.tokenizer, folder)
        return res
    from pyspark.ml.torch.distributor import TorchDistributor

    _ = store.spark  # TorchDistributor reads the active Spark session
    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    dist = TorchDistributor(num_processes=cfg.num_processes, local_mode=cfg.distributor == "local", use_gpu=use_gpu)
    payload = {"settings": settings.model_dump(mode="json"), "sample_ids": sample_ids, "folder": str(folder)}
    staged = None
    if getattr(store, "engine", "") != "delta-rs":
        # workers cannot open a Spark session: the driver snapshots the training rows as Parquet under the data
        # root (on Databricks a Unity Catalog volume every worker reads), and the workers stream that
        from prismatic.upkeep import staging_dir

        staged = staging_dir(settings.root, "train")
        _stage_rows(store, sample_ids, cfg.task, staged)
        payload["staged"] = str(staged)
    try:
        out = dist.run(run_training, payload)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    if not isinstance(out, dict):
        raise PrismError(f"TorchDistributor returned {type(out).__name__}, expected the rank-0 result")
    res = LMTrainResult(**out)
    if on_step is not None:
        for i, v in enumerate(res.losses):
            on_step(i, v)
    return res


# ---- inference ----------------------------------------------------------------------------------------------


class LMStudent:
    """A fine-tuned causal LM loaded for evaluation: greedy generation, or option log-likelihood, with the chat
    template."""

    kind = "lm"

    def __init__(self, folder: str | Path, device: str = "auto", chat_template: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from prismatic.gradients.model import resolve_device

        self.folder = Path(folder)
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, trust_remote_code=False)
        self.model = AutoModelForCausalLM.from_pretrained(self.folder, use_safetensors=True, trust_remote_code=False)
        self.model.eval().to(self.device)
        self.chat_template = chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def _render(self, prompt: str) -> str:
        if self.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(self, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
        """Greedy completions of ``prompts`` (decoded, special tokens removed), in input order."""
        import torch

        from prismatic.gradients.model import pad_id_of

        tok = self.tokenizer
        pad = pad_id_of(tok, self.model)
        out: list[str] = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            seqs = [tok(self._render(prompts[i]), add_special_tokens=not self.chat_template)["input_ids"] for i in idx]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, x in enumerate(seqs):  # left padding: every prompt ends where generation starts
                ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                mask[r, width - len(x) :] = 1
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                    do_sample=False, pad_token_id=pad,
                )  # fmt: skip
            for r, i in enumerate(idx):
                out[i] = tok.decode(gen[r, width:], skip_special_tokens=True)
        return out

    def option_scores(self, prompts, options, max_tokens: int = 512, batch_size: int = 16):
        """Log-likelihood of every option of every prompt (:func:`prismatic.train.loglik.option_scores`)."""
        from prismatic.train.loglik import option_scores

        return option_scores(
            self.model, self.tokenizer, prompts, options, chat_template=self.chat_template, max_tokens=max_tokens,
            batch_size=batch_size,
        )  # fmt: skip

    def predict_nli(self, premises, hypotheses, template: str, max_new_tokens: int = 8, batch_size: int = 16):
        """Raw generated answers to the NLI prompts (parse with :func:`prismatic.train.evaluate.parse_nli_answer`)."""
        prompts = [template.format(premise=p, hypothesis=h) for p, h in zip(premises, hypotheses, strict=True)]
        return self.generate(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
