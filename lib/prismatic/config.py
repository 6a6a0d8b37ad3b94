"""Validated settings: conf/*.yaml + ``--set key=value`` overrides, checked once before any work starts.

Only ``cli.py`` and ``jobs/`` read YAML; library functions receive the frozen section objects below.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prismatic.errors import ConfigError

DATA_ROOT_ENV = "PRISM_DATA_ROOT"
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARE_DIR = Path(sys.prefix) / "share" / "prismatic"  # conf/ and data/seed/ of an installed wheel (data-files)


def resource_path(path: str | Path) -> Path:
    """A shipped file such as ``conf/default.yaml``: absolute or present from the working directory as given,
    else the source checkout's copy, else the installed wheel's under ``<prefix>/share/prismatic``.

    Returns the first that exists (or the checkout path, so an error names a sensible place).
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for base in (REPO_ROOT, SHARE_DIR):
        if (base / p).exists():
            return base / p
    return REPO_ROOT / p


DEFAULT_CONFIG = resource_path("conf/default.yaml")


class Section(BaseModel):
    """Base of every section: unknown keys are errors, objects are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def check_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ValueError (no injection through names)."""
    if not isinstance(value, str) or not IDENTIFIER_RE.match(value):
        raise ValueError(f"{what} {value!r} must match {IDENTIFIER_RE.pattern} (letters, digits, underscore)")
    return value


class StorageConfig(Section):
    engine: Literal["auto", "delta-spark", "delta-rs"] = "auto"
    catalog: str | None = None
    schema_name: str = "prismatic"
    table_prefix: str = ""

    @field_validator("catalog", "schema_name")
    @classmethod
    def _ident(cls, v: str | None) -> str | None:
        return None if v is None else check_identifier(v)

    @field_validator("table_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not re.match(r"^[A-Za-z0-9_]{1,32}$", v):
            raise ValueError("table_prefix may hold only letters, digits and underscore (at most 32)")
        return v


SPARK_MASTER_RE = re.compile(
    r"^(local(\[\s*(\*|[1-9]\d*)\s*(,\s*\d+\s*)?\])?|local-cluster\[\s*\d+\s*,\s*\d+\s*,\s*\d+\s*\]"
    r"|spark://[\w.-]+(:\d+)?(,[\w.-]+(:\d+)?)*|yarn|k8s://\S+)$"
)
JVM_MEMORY_RE = re.compile(r"^([1-9]\d*)([kmgt])$", re.IGNORECASE)
_MEMORY_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


class SparkConfig(Section):
    """The local session's settings, checked here so that a bad value is one error line, not a JVM that dies."""

    master: str = Field(
        "local[*]", description="local, local[N], local[*], local[N,F], spark://host:port, yarn, k8s://"
    )
    app_name: str = "prismatic"
    driver_memory: str = Field("4g", description="JVM heap: a number with k, m, g or t (at least 256m)")
    shuffle_partitions: int = Field(8, ge=1)
    arrow_batch_rows: int = Field(10_000, ge=1)
    extra: dict[str, str] = Field(default_factory=dict, description="more Spark settings: spark.* keys only")

    @field_validator("master")
    @classmethod
    def _master(cls, v: str) -> str:
        if not SPARK_MASTER_RE.match(v.strip()):
            raise ValueError("must be local, local[N], local[*], local[N,F], spark://host:port, yarn or k8s://URL")
        return v.strip()

    @field_validator("driver_memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        m = JVM_MEMORY_RE.match(str(v).strip())
        if not m:
            raise ValueError("must be a JVM memory size: a whole number with k, m, g or t, e.g. 4g or 2048m")
        if int(m.group(1)) * _MEMORY_MIB[m.group(2).lower()] < 256:
            raise ValueError("is below 256m, too small for the Spark driver")
        return str(v).strip()

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.match(r"^spark\.[A-Za-z0-9_.-]+$", k)]
        if bad:
            raise ValueError(f"keys must be Spark settings named spark.*, got {', '.join(map(repr, bad))}")
        return v


class ColumnMap(Section):
    """Which input columns hold what. Chat rows use ``messages``; NLI rows use premise/hypothesis/label."""

    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"
    premise: str = "premise"
    hypothesis: str = "hypothesis"
    label: str = "label"
    id: str | None = None


class IngestConfig(Section):
    columns: ColumnMap = ColumnMap()
    # per-source overrides of the column map, e.g. {"snli": {"premise": "sentence1", ...}}
    sources: dict[str, ColumnMap] = Field(default_factory=dict)
    max_chars: int = Field(20_000, ge=1, description="prompt + completion longer than this is quarantined (too_long)")
    payload_chars: int = Field(
        2_000, ge=16, description="raw payload kept in candidates_bronze and quarantine (longer: cut and flagged)"
    )
    max_row_chars: int = Field(
        1_000_000,
        ge=1024,
        description="a raw row (line, CSV record, Parquet row as JSON) longer than this is"
        " quarantined unparsed (row_too_large); an over-long line is skipped in chunks, never held whole",
    )
    nli_labels: list[str] = Field(default_factory=lambda: ["entailment", "neutral", "contradiction"])
    nli_prompt_template: str = (
        "Premise: {premise}\nHypothesis: {hypothesis}\n"
        "Does the premise entail the hypothesis? Answer with one word: entailment, neutral or contradiction."
    )
    batch_rows: int = Field(
        200_000, ge=1, description="rows per ingest commit: consecutive files up to this many rows share one MERGE"
    )
    buckets: int = Field(64, ge=1, le=4096, description="hash buckets of sample_id (column `bucket`)")
    mode: Literal["auto", "driver", "spark"] = Field(
        "auto",
        description="where files are parsed: driver (this process), spark (Spark tasks: a file, a byte range of a"
        " large JSON Lines file or a Parquet row group per task), auto (spark from ingest.spark_min_bytes of input)",
    )
    split_bytes: int = Field(
        64 << 20,
        ge=1,
        description="spark mode: a JSON Lines / Parquet file larger than this is split into byte"
        " ranges (at line boundaries) / row groups of about this size, one task each",
    )
    spark_min_bytes: int = Field(
        48 << 20, ge=0, description="auto mode: inputs of at least this many bytes in all are parsed in Spark tasks"
    )


class NormalizeConfig(Section):
    """Text normalization shared by ``sample_id``, exact dedup and shingling (see ``prismatic.normalize``)."""

    nfkc: bool = True
    lowercase: bool = Field(True, description="str.casefold (a stronger lower-casing)")
    collapse_whitespace: bool = True
    strip_punctuation: bool = Field(False, description="delete Unicode punctuation (categories P*)")


class DedupConfig(Section):
    """Exact + near-duplicate detection (``prismatic.dedup``).

    Near duplicates: MinHash over word (or char) n-gram shingles, LSH with ``bands`` x ``rows_per_band``, candidates
    verified with the exact Jaccard of the shingle sets. The default 20 x 5 (100 hash functions) finds a pair at
    Jaccard 0.8 with probability 1 - (1 - 0.8**5)**20 = 0.99964 (S-curve in ``prismatic.minhash``).
    """

    normalize: NormalizeConfig = NormalizeConfig()
    near: bool = True
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(3, ge=1, le=16)
    num_perm: int = Field(100, ge=8, le=1024, description="signature length; the banded path uses bands * rows")
    bands: int = Field(20, ge=1)
    rows_per_band: int = Field(5, ge=1, le=64)
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    seed: int = 1
    max_bucket_pairs: int = Field(
        200, ge=1, description="a band bucket with more member pairs than this links its members to its min instead"
    )
    driver_max_edges: int = Field(
        5_000_000, ge=0, description="verified pairs up to this many get connected components on the driver"
    )
    method: Literal["banded", "mllib"] = "banded"

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if self.bands * self.rows_per_band > self.num_perm:
            raise ValueError(
                f"bands * rows_per_band = {self.bands * self.rows_per_band} exceeds num_perm = {self.num_perm}"
            )
        return self


class ModelConfig(Section):
    # a local directory, a hub id, a .gguf file, or "builtin:smollm2" (the shipped SmolLM2-135M-Instruct GGUF)
    path: str = "builtin:smollm2"
    gguf_file: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ScoringConfig(Section):
    model: ModelConfig = ModelConfig()
    d: int = Field(1024, ge=8, le=65_536)
    seed: int = 0
    kind: Literal["kronecker", "dense"] = "kronecker"
    block: int = Field(32, ge=1, le=64, description="k_o = k_i per linear layer for the kronecker projector")
    embed_block: int = Field(
        64, ge=1, le=256, description="k_o = k_i of the input / output embedding block (kronecker projector)"
    )
    params: str = Field("all", description="'all' or a regex of parameter names")
    max_tokens: int = Field(512, ge=8)
    truncation_side: Literal["left", "right"] = "right"
    batch_size: int = Field(8, ge=1)
    chat_template: bool = True
    min_completion_tokens: int = Field(1, ge=1)


class DiversityConfig(Section):
    # "builtin:minilm" (the shipped all-MiniLM-L6-v2), a local sentence-transformers folder, or a hub id
    embedding_model: str = "builtin:minilm"
    embedding_device: Literal["auto", "cpu", "cuda"] = "auto"
    embedding_batch_size: int = Field(64, ge=1)
    embedding_max_tokens: int | None = Field(None, ge=2, description="default: the model's max_seq_length (256)")
    ngram: int = Field(2, ge=1, le=8)
    q: float = Field(1.0, ge=0.0, description="extra Vendi order reported next to G-Vendi (q = 1); inf allowed")
    tree_fanout: int = Field(32, ge=2, description="most per-partition covariance partials one task sums")


class ClusterConfig(Section):
    """Spherical k-means of the pool (``prismatic.cluster.cluster_pool``) and the sparse-cluster rule."""

    k_fraction: float = Field(0.01, gt=0.0, le=1.0, description="k = floor(k_fraction * pool size), paper: 1 %")
    k_min: int = Field(
        2,
        ge=1,
        description="floor on k (per task): 1 % of a few hundred rows is too coarse for a sparse rule;"
        " a task with fewer than 2 * k_min pool rows is not clustered (its round is skipped, with the reason)",
    )
    iterations: int = Field(20, ge=1)
    seed: int = 0
    init: Literal["sample", "kmeans++"] = "kmeans++"
    init_sample: int | None = Field(None, ge=1, description="rows drawn to the driver for init (default 32 k)")
    method: Literal["blocked", "mllib"] = "blocked"
    tol: float | None = Field(0.0, ge=0.0, description="stop when centroids move <= tol; null: all iterations")
    storage: Literal["auto", "files", "cache"] = "auto"
    staging_dir: str | None = Field(None, description="storage=files: a folder every executor can read")
    reduce: Literal["auto", "driver", "shuffle"] = "auto"
    num_partitions: int | None = Field(None, ge=1)
    reseed_pool: int = Field(64, ge=0, description="empty-cluster re-seed candidates per partition and step")
    block_rows: int | None = Field(None, ge=1, description="rows per matrix product (default: 64 MiB of scores)")
    assign: Literal["auto", "flat", "two_level"] = Field(
        "auto",
        description="flat: every row against every centroid; two_level: against the members of its nprobe nearest"
        " coarse cells (k_coarse cells over the centroids); auto: two_level from k = 1024 (bench/kmeans.py)",
    )
    k_coarse: int | None = Field(None, ge=1, description="two_level: coarse cells (default ceil(sqrt(k)))")
    nprobe: int = Field(8, ge=1, description="two_level: coarse cells scanned per row")
    sparse_quantile: float = Field(0.5, gt=0.0, lt=1.0)
    feature_space: Literal["gradient", "embedding"] = "gradient"


class GeneratorConfig(Section):
    """Which LLM writes problems and solutions (see ``prismatic.synth.generators.make_generator``).

    Secrets never live here: only the *name* of the env var or the Databricks secret that holds the API key.
    """

    backend: Literal["local", "openai", "vllm", "fake"] = "local"
    # local / vllm: "builtin:smollm2", a local directory, a hub id or a .gguf file; openai: the served model name
    model: str = "builtin:smollm2"
    gguf_file: str | None = Field(None, description="GGUF file inside `model` when it is a directory")
    base_url: str | None = Field(None, description="OpenAI-compatible base, e.g. http://host:8000/v1")
    endpoint: Literal["chat", "completions"] = "chat"
    api_key_env: str = "PRISM_GENERATOR_API_KEY"
    api_key_secret: str | None = Field(None, description="Databricks secret as scope/key")
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0)
    backoff_s: float = Field(1.0, ge=0, description="first retry waits about this long, doubling each time")
    max_backoff_s: float = Field(30.0, ge=0)
    concurrency: int = Field(4, ge=1)
    supports_n: bool = Field(True, description="server honours n > 1; else one request per sample")
    skip_bad_requests: bool = Field(False, description="a failed prompt yields error markers instead of raising")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields sent to the server")
    max_new_tokens: int = Field(256, ge=1)
    system_prompt: str | None = None
    batch_size: int = Field(16, ge=1, description="local back end: sequences sampled together")
    threads: int | None = Field(
        1, ge=1, description="local back end on CPU: torch threads while generating (null: one per core)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    cache: bool = Field(True, description="cache requests by hash so a re-run does not pay twice")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM(...) arguments")

    @field_validator("api_key_secret")
    @classmethod
    def _secret_ref(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[^/\s]+/[^/\s]+$", v):
            raise ValueError("api_key_secret must look like scope/key")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
            raise ValueError("api_key_env must be an environment variable name (the key itself never goes here)")
        return v


class SynthConfig(Section):
    task: Literal["math", "nli"] = Field("math", description="the task synthesized (shorthand for tasks: [task])")
    tasks: list[Literal["math", "nli"]] | None = Field(
        None, description="tasks synthesized, each in its own sub-round of every round (default: [task])"
    )
    rounds: int = Field(1, ge=1)
    train_each_round: bool = Field(
        False,
        description="train round_student on each task's pool after every round (and round 0, the seed pool)"
        " and evaluate it on the task's round_benchmarks",
    )
    round_student: Literal["probe", "lm"] | None = Field(
        None, description="the student train_each_round trains (default: train.student; other train.* keys apply)"
    )
    round_benchmarks: list[str] | None = Field(
        None,
        description="ID / OOD benchmarks of the round student, those of the round's task used"
        " (default: train.benchmarks)",
    )
    generator: GeneratorConfig = GeneratorConfig()
    calls_per_round: int = Field(4, ge=1)
    exemplars: int = Field(5, ge=1)
    exemplar_draw: Literal["sparse", "random"] = Field(
        "sparse",
        description="where few-shot exemplars come from: members of the sparse clusters (the paper) or the whole task"
        " pool, uniformly (the unguided / random-exemplar arms of `prism experiment guidance`)",
    )
    sparse_filter: bool = Field(
        True,
        description="keep only candidates nearest a sparse cluster; false: every verified, deduplicated,"
        " decontaminated candidate is kept (the unguided arm)",
    )
    problems_per_call: int = Field(2, ge=1)
    problem_temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    n_solutions: int = Field(3, ge=1)
    solution_temperature: float = Field(0.75, ge=0.0)
    tau: int = Field(2, ge=1)
    max_answer_chars: int = Field(300, ge=1)
    answer_fallback: bool = Field(
        True, description="a solution without \\boxed{} may state its answer ('The answer is 18', '#### 18')"
    )
    tie_break: Literal["first", "reject"] = Field(
        "first", description="two answer groups of equal size >= tau: keep the earliest group, or reject"
    )
    decontam_ngram: int = Field(10, ge=1)
    decontam_min_words: int = Field(6, ge=1, description="eval texts shorter than the n-gram are indexed whole")
    eval_sets: list[str] = Field(default_factory=list)
    target_pool_size: int | None = None
    token_budget: int | None = None
    seed: int = 0
    prompts_file: str = "conf/prompts.yaml"

    @model_validator(mode="after")
    def _tau(self) -> SynthConfig:
        if self.tau > self.n_solutions:
            raise ValueError(f"tau = {self.tau} exceeds n_solutions = {self.n_solutions}")
        if self.tasks is not None:
            if not self.tasks or len(set(self.tasks)) != len(self.tasks):
                raise ValueError(f"tasks must name each task once and at least one, got {self.tasks}")
            if "task" in self.model_fields_set and self.task not in self.tasks:
                raise ValueError(f"task = {self.task!r} is not in tasks = {self.tasks}; set one of the two")
        return self

    @property
    def task_list(self) -> list[str]:
        """The tasks synthesized, in order: ``tasks``, else ``[task]``."""
        return list(self.tasks) if self.tasks else [self.task]

    def for_task(self, task: str) -> SynthConfig:
        """This section with ``task`` set (what :func:`prismatic.synth.tasks.get_task` reads)."""
        return self.model_copy(update={"task": task})


class TrackingConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: sqlite under <data_root>/mlflow")
    experiment: str = "prismatic"
    registry_uri: str | None = Field(
        None, description="model registry; default the tracking store, databricks-uc on Databricks (Unity Catalog)"
    )


class TrainConfig(Section):
    """Students (``prismatic.train``): the fast ``probe`` (NLI), the ``lm`` SFT student, and their evaluation."""

    student: Literal["probe", "lm"] = "probe"
    task: Literal["nli", "math", "generic"] = Field("nli", description="which pool rows (samples.task) train it")
    students_dir: str | None = Field(None, description="where checkpoints go; default <data_root>/students")
    seed: int = 0
    # probe: LogisticRegression on frozen sentence features [u, v, |u - v|, u * v] of premise / hypothesis
    embedding_model: str = Field("builtin:minilm", description="sentence encoder of the probe features")
    embedding_batch_size: int = Field(64, ge=1)
    cache_embeddings: bool = Field(True, description="cache embeddings by text sha256 under <data_root>/cache")
    probe_c: float = Field(1.0, gt=0.0, description="inverse L2 strength of the logistic regression")
    probe_max_iter: int = Field(2000, ge=10)
    # lm: supervised fine-tuning of a causal LM, completion-only loss, chat template
    model: ModelConfig = ModelConfig()
    method: Literal["full", "lora"] = Field("full", description="lora needs the optional extra: pip install peft")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    max_tokens: int = Field(512, ge=8)
    chat_template: bool = True
    shuffle_buffer: int = Field(4096, ge=1, description="rows shuffled together while streaming Arrow batches")
    arrow_batch_rows: int = Field(1024, ge=1, description="rows per Arrow batch read from the Delta snapshot")
    distributor: Literal["none", "local", "cluster"] = Field(
        "none", description="none: train in this process; local / cluster: pyspark TorchDistributor"
    )
    num_processes: int = Field(1, ge=1)
    use_gpu: bool | None = Field(None, description="TorchDistributor use_gpu; null: when torch sees CUDA")
    log_checkpoint: bool = Field(False, description="also copy lm checkpoints into MLflow artifacts (large)")
    register_model: bool = Field(
        True, description="log each tracked student as an MLflow model (probe: sklearn, lm: transformers), register it"
    )
    registered_model: str = Field(
        "prismatic_student", description="registered model name (qualified catalog.schema.name on Unity Catalog)"
    )
    champion_alias: str = Field("champion", description="alias moved to a version that beats it on mean OOD accuracy")
    # evaluation
    benchmarks: list[str] = Field(default_factory=lambda: ["snli_test"], description="builtin names or JSONL files")
    eval_limit: int | None = Field(None, ge=1, description="evaluate a seeded sample of this many examples")
    eval_batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(32, ge=1, description="lm student: tokens generated per answer")
    eval_method: Literal["loglik", "generate"] = Field(
        "loglik",
        description="lm student: loglik = the option with the highest log-likelihood (NLI labels, math rows with"
        " `choices`); generate = greedy answer parsed (math without choices always generates)",
    )
    loglik_normalize: Literal["none", "tokens", "chars"] = Field(
        "none", description="loglik: rank options by summed log-prob (none), per token, or per character"
    )


class StudyConfig(Section):
    """The diversity-vs-OOD study (``prismatic.train.study``): K equal-size subsets of controlled diversity."""

    subsets: int = Field(24, ge=2, description="K, the number of subsets (training runs)")
    subset_size: int = Field(256, ge=4)
    task: Literal["nli", "math", "generic"] = "nli"
    clusters: int = Field(16, ge=2, description="k of the study's spherical k-means of the pool's gradients")
    cluster_levels: list[int] | None = Field(None, description="clusters per subset; default 1, 2, 4, ... k")
    random_fraction: float = Field(0.25, ge=0.0, le=1.0, description="share of K drawn uniformly from the pool")
    balance_labels: bool = Field(False, description="NLI: draw equal counts per label inside the chosen clusters")
    pool_limit: int | None = Field(None, ge=2, description="use at most this many scored pool rows (seeded)")
    max_loss_quantile: float = Field(1.0, gt=0.0, le=1.0, description="quality filter: scoring loss <= quantile")
    drop_truncated: bool = Field(True, description="quality filter: drop samples truncated while scoring")
    score_missing: bool = Field(False, description="score unscored pool rows of the task first (prism score)")
    id_benchmark: str = "snli_test"
    id_size: int | None = Field(2000, ge=1, description="seeded sample of the ID benchmark")
    ood_benchmarks: list[str] = Field(
        default_factory=lambda: [
            "presuppositions_as_nli",
            "epistemic_reasoning",
            "analytic_entailment",
            "entailed_polarity",
        ],
        description="used when their asset is fetched; otherwise ood_files",
    )
    ood_files: list[str] = Field(default_factory=list, description="OOD JSONL benchmarks (fallback or extra)")
    ood_size: int | None = Field(None, ge=1, description="seeded sample of each OOD benchmark")
    student: Literal["probe", "lm"] = "probe"
    bootstrap: int = Field(2000, ge=0, description="bootstrap resamples of the subsets for the interval of rho")
    ci: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _levels(self) -> StudyConfig:
        for lv in self.cluster_levels or []:
            if lv < 1 or lv > self.clusters:
                raise ValueError(f"cluster_levels holds {lv}; each level must be in [1, clusters={self.clusters}]")
        return self


class Settings(Section):
    data_root: str = Field("./lakehouse", description=f"tables, MLflow and staging; env {DATA_ROOT_ENV} overrides")
    storage: StorageConfig = StorageConfig()
    spark: SparkConfig = SparkConfig()
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig = DedupConfig()
    scoring: ScoringConfig = ScoringConfig()
    diversity: DiversityConfig = DiversityConfig()
    cluster: ClusterConfig = ClusterConfig()
    synth: SynthConfig = SynthConfig()
    train: TrainConfig = TrainConfig()
    study: StudyConfig = StudyConfig()
    tracking: TrackingConfig = TrackingConfig()
    demo: dict[str, Any] = Field(default_factory=dict, description="inputs of `prism run` on the embedded default")

    @field_validator("data_root")
    @classmethod
    def _data_root(cls, v: str) -> str:
        """A folder, or a path under one: never a file (nor under a file), checked before any stage runs."""
        if not str(v).strip():
            raise ValueError("must name a folder")
        p = Path(v).expanduser()
        for q in (p, *p.parents):
            if q.exists():
                if not q.is_dir():
                    what = "is a file" if q == p else f"is under {q}, which is a file"
                    raise ValueError(f"{v} {what}, not a folder; the data root holds tables/, mlflow/ and _staging/")
                break
        return v

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser().resolve()


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{dotted}': '{k}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` -> ("a.b", parsed YAML scalar of c)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", p) for p in key.split(".")):
        raise ConfigError(f"override key {key!r} is not a dotted key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _format_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            allowed = _allowed_keys(e["loc"][:-1])
            if allowed:
                msg += f" (allowed here: {', '.join(allowed)})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        parts.append(f"config key '{path}': {msg}")
    return "; ".join(parts)


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Settings:
    """Read YAML (default conf/default.yaml), apply ``key=value`` overrides and the data-root env var, validate.

    Raises:
        ConfigError: one line naming the key path and what is allowed.
    """
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    tree: dict[str, Any] = {}
    if path or cfg_path.exists():
        try:
            text = cfg_path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {cfg_path}: {e.strerror}") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {cfg_path} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {cfg_path} must hold a mapping at the top level")
    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        tree["data_root"] = env_root
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def to_flat_dict(settings: Settings) -> dict[str, Any]:
    """Flatten to ``a.b.c -> value`` (for MLflow params). Secrets never live in Settings, only env-var names."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = obj

    walk("", settings.model_dump())
    return out
