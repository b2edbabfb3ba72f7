"""The one typed config tree: YAML in, `--set section.key=value` overrides, cross-field rules.

Every error names the YAML key to change. The tree crosses process boundaries as plain data
(`model_dump()`) and is re-validated on arrival with `Config.model_validate`.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtl.errors import UserError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


# A run name is one plain directory name: the run directory is <storage_path>/<name> and must stay inside it.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class ConfigError(UserError):
    """A config that cannot be used; the message names the key to change."""


class Section(BaseModel):
    # No setting means anything as inf or nan (`optim.head_lr=.inf` would train nothing useful): refused by name.
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, protected_namespaces=(), allow_inf_nan=False
    )


class ModelConfig(Section):
    backbone: str = DEFAULT_BACKBONE
    """Local directory or Hugging Face id of a BERT-family encoder (loaded offline only)."""
    pooling: Literal["auto", "cls", "mean", "max"] = "auto"
    """Sentence vector: [CLS] state, mean or max over real tokens; auto = what the backbone declares, else cls."""
    max_seq_length: int = Field(128, ge=8, le=8192)
    """Tokens per text after truncation."""
    trust_remote_code: bool = False
    """Allow the backbone repository's own Python code to run (only for backbones you trust)."""
    init_from: str | None = None
    """An export directory whose encoder and heads initialise training (e.g. to retrain one head)."""


TaskType = Literal["classification", "pair_classification", "similarity", "multilabel"]
# What each task type reads from a row besides `text` (the data contract's columns, by their config key).
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("label_column",),
    "pair_classification": ("text_pair_column", "label_column"),
    "similarity": ("text_pair_column", "score_column"),
    "multilabel": ("labels_column",),
}
PAIR_TYPES = ("pair_classification", "similarity")
# Validation metrics per task type (higher is better, except loss); the first is the type's primary metric.
TYPE_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("macro_f1", "accuracy"),
    "pair_classification": ("macro_f1", "accuracy"),
    "similarity": ("spearman", "pearson"),
    "multilabel": ("micro_f1", "macro_f1"),
}
# Multi-label targets travel through training as a bit set in one int64 per row.
MAX_MULTILABEL_LABELS = 63


class TaskConfig(Section):
    type: TaskType = "classification"
    """classification: one text -> one label (softmax head); pair_classification: two texts -> one label (head over
    [u, v, |u-v|, u*v] of their pooled vectors); similarity: two texts -> a score, trained on the cosine of their
    normalised embeddings (no head: the encoder itself learns); multilabel: one text -> a set of labels (sigmoid head,
    per-label thresholds chosen on validation)."""
    labels: list[str] = Field(default_factory=list)
    """Label names; a label's id is its position in this list (none for `similarity`)."""
    score_range: tuple[float, float] | None = None
    """`similarity`: the lowest and highest score in the data (e.g. [0, 5] for STS-B); scores map linearly to
    cosines 0..1 (`cosine_mse`) and served scores back to this range."""
    similarity_loss: Literal["cosine_mse", "cosent"] = "cosine_mse"
    """`similarity`: cosine_mse = (cos(u, v) - scaled score)^2 (sentence-transformers' CosineSimilarityLoss);
    cosent = the CoSENT ranking loss over the batch's pairs (only the order of scores matters)."""
    loss_weight: float = Field(1.0, gt=0)
    """Weight of this task's mean loss in the summed loss."""
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    """Cross-entropy label smoothing for this task's training loss (validation loss stays plain)."""
    target_accuracy: float | None = Field(None, gt=0, le=1)
    """Accuracy the export should reach on data.validation (classification types; `similarity`: Spearman,
    `multilabel`: micro-F1); the run result and report.json say whether it does."""
    may_be_empty: bool = False
    """Allow this task to have no training rows (its head then keeps its starting weights); otherwise a task without
    rows is refused before training starts."""

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        duplicates = sorted({name for name in labels if labels.count(name) > 1})
        if duplicates:
            raise ValueError(f"label names must be unique, repeated: {duplicates}")
        return labels

    @model_validator(mode="after")
    def _fits_type(self) -> TaskConfig:
        if self.type == "similarity":
            if self.labels:
                raise ValueError("a similarity task has no labels (it is trained on scores); remove labels")
            if self.score_range is None or not self.score_range[0] < self.score_range[1]:
                raise ValueError("a similarity task needs score_range: [lowest, highest] with lowest < highest")
            if self.label_smoothing:
                raise ValueError("label_smoothing applies to classification types, not similarity")
            return self
        if self.score_range is not None:
            raise ValueError(f"score_range is for similarity tasks, this task's type is {self.type}")
        least = 1 if self.type == "multilabel" else 2
        if len(self.labels) < least:
            raise ValueError(f"a {self.type} task needs at least {least} label names, got {self.labels}")
        if self.type == "multilabel":
            if len(self.labels) > MAX_MULTILABEL_LABELS:
                raise ValueError(f"a multilabel task has at most {MAX_MULTILABEL_LABELS} labels")
            if self.label_smoothing:
                raise ValueError("label_smoothing applies to single-label types, not multilabel")
        return self

    @property
    def is_pair(self) -> bool:
        return self.type in PAIR_TYPES

    @property
    def has_head(self) -> bool:
        return self.type != "similarity"

    @property
    def head_outputs(self) -> int:
        return len(self.labels)


class SourceConfig(Section):
    """A Parquet source whose columns differ from the contract, e.g. STS-B's sentence1/sentence2/score: every row
    belongs to `task`, `columns` maps contract names to the file's, and `holdout` sets a validation part aside."""

    path: str
    """Parquet file or glob."""
    task: str
    """Every row of these files belongs to this task (the files need no task column)."""
    columns: dict[Literal["text", "text_pair", "label", "score", "labels"], str] = Field(default_factory=dict)
    """Contract column -> the file's column, e.g. {text: sentence1, text_pair: sentence2}; unnamed ones keep the
    data section's names."""
    holdout: float | None = Field(None, gt=0, lt=1)
    """Fraction of rows held out for validation, chosen by a hash of each row's texts (the same rows every read,
    duplicates on the same side): training reads the rest, validation the held-out part."""


class DataConfig(Section):
    train: list[str] = Field(default_factory=list)
    """Parquet files or globs of mixed-task training rows."""
    validation: list[str] = Field(default_factory=list)
    """Parquet files or globs of validation rows (same contract)."""
    text_column: str = "text"
    """Column holding the input text."""
    task_column: str = "task"
    """Column holding the task name of each row."""
    label_column: str = "label"
    """Column holding the label: an integer id or the label's name (classification and pair tasks)."""
    text_pair_column: str = "text_pair"
    """Column holding the second text of a pair row (pair_classification and similarity tasks; null otherwise)."""
    score_column: str = "score"
    """Column holding a similarity row's score (a number within the task's score_range)."""
    labels_column: str = "labels"
    """Column holding a multilabel row's labels: a list of ids or of label names (may be empty)."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """Extra training sources with their own columns and one task each (see SourceConfig), read beside data.train;
    their `holdout` parts are read beside data.validation."""
    sampling: Literal["proportional", "temperature", "uniform"] = "proportional"
    """How tasks are mixed: by size, by size^(1/temperature), or equally."""
    temperature: float = Field(2.0, gt=0)
    """Temperature for `sampling: temperature` (1 = proportional, large = uniform)."""
    length_window: int = Field(64, ge=0)
    """Micro batches whose rows are sorted by token length together before batching (0 or 1: random batches)."""
    long_text_words: int | None = Field(None, ge=1)
    """Rows of at least this many words are drawn `long_text_factor` times as often as the shorter rows of their
    task (each task keeps its share of the batches). None: every row of a task equally often."""
    long_text_factor: float = Field(1.0, ge=1)
    """How much more often a long row is drawn (needs `long_text_words`)."""
    on_bad_rows: Literal["error", "skip"] = "error"
    """Stop at the first bad row (naming file, row, column) or drop bad rows and report counts."""
    stsb: str | None = None
    """Optional STS-B Parquet (sentence1, sentence2, score) for the before/after forgetting check."""

    @field_validator("train", "validation", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _long_text(self) -> DataConfig:
        if self.long_text_factor != 1.0 and self.long_text_words is None:
            raise ValueError("data.long_text_factor needs data.long_text_words (the length that counts as long)")
        return self


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    """Rank of the LoRA update matrices."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator (update scaled by alpha / r)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    """Names of the attention projections that get adapters."""


class FinetuneConfig(Section):
    strategy: Literal["head_only", "lora", "partial", "full"] = "head_only"
    """What of the backbone trains: nothing, LoRA adapters, the last N layers, or everything."""
    unfreeze_last_n_layers: int = Field(2, ge=1)
    """For `strategy: partial`, how many top encoder layers train."""
    freeze_embeddings: bool = False
    """Keep the encoder's embedding tables (word, position, type) as pretrained: half of MiniLM's weights, so the
    optimizer step and gradient sync do half the work; the transformer layers still train."""
    freeze_heads: list[str] = Field(default_factory=list)
    """Task heads kept fixed (e.g. keep Task A while improving Task B)."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """LoRA settings, used when `strategy: lora`."""


class RetainConfig(Section):
    method: Literal["none", "distill", "l2sp"] = "none"
    """Retention term in the loss: none; distill = mean(1 - cos) of pooled vectors to the frozen starting encoder's;
    l2sp = squared distance of the trainable encoder weights from their starting values."""
    weight: float = Field(1.0, ge=0)
    """Multiplier of the retention term."""
    teacher: Literal["cached", "online"] = "cached"
    """distill: the starting encoder's vectors computed once per dataset with Ray Data and cached on disk (reused by
    later runs on the same data and encoder), or by a teacher forward in every step (also what training without Ray
    does)."""
    teacher_cache: str | None = None
    """Directory holding teacher-embedding caches (one per key); default `<run.storage_path>/teacher_cache`."""
    max_stsb_drop: float | None = Field(None, ge=0)
    """STS-B Spearman budget (needs data.stsb): "best" = best task score among validations that lost at most this."""
    wise_alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=list)
    """WiSE-FT: candidate blends (1 - a) * start + a * tuned of the final encoder; the best validation task score
    within max_stsb_drop becomes the export (needs data.validation and data.stsb). Empty: export as trained."""


class OptimConfig(Section):
    head_lr: float = Field(1e-3, gt=0)
    """Peak learning rate of the task heads."""
    backbone_lr: float = Field(2e-5, gt=0)
    """Peak learning rate of the top backbone layer (and LoRA adapters)."""
    layer_decay: float = Field(1.0, gt=0, le=1)
    """Each lower encoder layer's LR is multiplied by this (1.0 = off); embeddings lowest."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay (never applied to biases and LayerNorm)."""
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Fraction of optimizer steps spent warming up linearly from 0."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """LR shape after warm-up; every group is scaled by the same factor."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 = off)."""
    fused: bool = False
    """Use torch's fused AdamW kernel (one kernel for all parameters instead of a loop over them)."""


class TrainConfig(Section):
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps to run (set this or `epochs`)."""
    epochs: float | None = Field(None, gt=0)
    """Passes over the (sampled) training data (set this or `max_steps`)."""
    micro_batch_size: int = Field(32, ge=1)
    """Rows per forward pass on each worker."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro batches accumulated per optimizer step."""
    task_loss: Literal["task_mean", "row_mean"] = "task_mean"
    """How a batch's rows of each task add up: `task_mean` = loss_weight x the mean over the task's rows (a task's
    weight per batch is fixed, so a single row of a task carries all of it); `row_mean` = loss_weight x the sum over
    the task's rows / rows in the batch (every row counts alike; a task weighs as much as its share of the batch,
    which `data.sampling` sets)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision; bf16 runs on CPUs with avx512-bf16/AMX and on recent GPUs."""
    compile: bool = False
    """torch.compile the encoder (dynamic shapes); the compile time is paid at the start of every run."""
    fast_dropout: bool = True
    """On CPU, the model's dropouts draw their masks from 16-bit PCG64 draws (mtl.model.fast_dropout: same keep rate
    and scaling, ~3x cheaper than torch's bernoulli); false: torch's own dropout."""
    length_chunks: int = Field(1, ge=1, le=16)
    """Up to this many encoder passes per micro batch, its texts split by token count so that each pass pads to its
    own longest (mtl.model.length_chunks): same rows, losses and gradients, fewer padded tokens; 1 (default): one
    padded pass. On this project's short texts the extra passes cost about what the padding saved (docs/benchmarks.md);
    worth it where tasks' lengths differ widely (long documents beside short queries)."""
    chunk_cost_tokens: int = Field(128, ge=0)
    """What one more pass costs, in padded tokens: a split is made only where it saves more than this per chunk."""
    profile_phases: bool = False
    """On GPUs, synchronise at every phase boundary so per-phase step times are exact (slows training; CPU times are
    always exact)."""
    seed: int = 0
    """Seed for weights, sampling and shuffling."""
    eval_every: int = Field(200, ge=1)
    """Validate every this many optimizer steps (and at the end)."""
    checkpoint_every: int = Field(200, ge=1)
    """Save a checkpoint every this many optimizer steps (and at the end)."""
    log_every: int = Field(20, ge=1)
    """Print a progress line every this many optimizer steps."""
    select_metrics: list[str] = Field(default_factory=list)
    """What "best checkpoint" means: the mean of these `task.metric` validation figures (e.g. [topic.accuracy,
    stsb.spearman]); empty = every task's primary metric (macro_f1; similarity: spearman; multilabel: micro_f1)."""
    log_rows: bool = False
    """Write the ids, epochs and task ids of the rows every step trained on to `<run_dir>/trained_rows/` (one JSON
    line per step and rank; a resume cuts it back to its checkpoint, so it lists the rows behind the final model)."""

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainConfig:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(
                "set exactly one of train.max_steps and train.epochs, both are set: to run a number of steps add "
                "--set train.epochs=null (or train.max_steps=null to run epochs)"
            )
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set exactly one of train.max_steps and train.epochs")
        return self


class DeepSpeedConfig(Section):
    zero_stage: int = Field(0, ge=0, le=3)
    """ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters sharded."""
    offload_optimizer: bool = False
    """Keep optimizer states on CPU (ZeRO >= 1; compiles DeepSpeedCPUAdam on first use)."""
    autocast: bool = False
    """bf16/fp16 via DeepSpeed's torch_autocast (fp32 weights, low-precision matmuls) instead of low-precision
    weights with fp32 master copies in the optimizer."""


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (one DeepSpeed rank each)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs each training worker reserves."""
    data_cpus: float = Field(1.0, ge=1.0)
    """CPUs kept free for Ray Data (its file-listing task needs a whole CPU) so training never starves it."""
    torch_threads: int | None = Field(None, ge=1)
    """torch threads per worker; default: Ray's (the worker's whole-CPU reservation, at least 1)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers on nodes; STRICT_SPREAD puts every worker on a different node."""
    allocator: Literal["auto", "jemalloc", "system"] = "auto"
    """The workers' memory allocator: jemalloc (Ray's bundled one, set to keep freed pages: no page faults for the
    step's large tensors; mtl.train.worker_allocator) or the system's malloc; auto: jemalloc where Ray ships it."""


class RunConfig(Section):
    name: str = "mtl"
    """Run name: letters, digits, `.`, `_` and `-`, starting with a letter, digit or `_`; the run directory is
    storage_path/name."""
    storage_path: str = "runs"
    """Where checkpoints, logs and the export go (local dir, NFS, or s3:// / gs://)."""
    max_failures: int = Field(0, ge=-1)
    """Worker failures to recover from by restarting from the last checkpoint (-1 = unlimited)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on storage (the newest ones)."""
    if_exists: Literal["resume", "fresh"] = "resume"
    """A run directory of this name exists: resume it (refused if its recorded config or data differ), or set it
    aside as `<name>.replaced-<time>` and start fresh."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(
                f"{name!r} is not a plain directory name (letters, digits, '.', '_', '-'; not empty, not starting "
                "with '.' or '-', no '/'): the run directory is run.storage_path/run.name and must stay inside it"
            )
        return name

    def run_dir(self) -> Path:
        """`<storage_path>/<name>`, resolved; it lies directly inside the resolved storage root (checked)."""
        root = Path(self.storage_path).expanduser().resolve()
        run_dir = (root / self.name).resolve()
        if run_dir.parent != root:  # a symlinked run directory pointing elsewhere
            raise ConfigError(f"run.name={self.name!r}: {root / self.name} resolves to {run_dir}, outside {root}")
        return run_dir


class TrackingConfig(Section):
    backends: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=lambda: ["tensorboard"])
    """Where rank 0 logs: tensorboard (`<run_dir>/tensorboard`), mlflow (params, metrics, the report and the export
    path; needs `pip install '.[mlflow]'`); [] logs to neither."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (http://host:5000, file:/path/mlruns); None: the MLFLOW_TRACKING_URI environment variable."""
    experiment: str | None = None
    """MLflow experiment name (created if missing); None: run.name."""

    @field_validator("backends")
    @classmethod
    def _once_each(cls, backends: list[str]) -> list[str]:
        if len(set(backends)) != len(backends):
            raise ValueError(f"tracking.backends lists a backend twice: {backends}")
        return backends


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The encoder and how it pools."""
    tasks: dict[str, TaskConfig] = Field(min_length=1)
    """Task name -> type, labels and loss weight; one head each (similarity tasks train the encoder itself)."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Where rows come from and how tasks are mixed."""
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """What trains."""
    retain: RetainConfig = Field(default_factory=RetainConfig)
    """How much of the starting encoder's general knowledge training must keep."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Learning rates, decay and schedule."""
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100))
    """Loop length, batch, precision."""
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    """DeepSpeed engine settings."""
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    """Ray Train workers and resources."""
    run: RunConfig = Field(default_factory=RunConfig)
    """Run name, storage and fault tolerance."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Experiment tracking: TensorBoard and/or MLflow."""

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        bad = [name for name in tasks if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
        if bad:
            raise ValueError(f"task names may use letters, digits, _ and - only: {bad}")
        return tasks

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Config:
        unknown = [name for name in self.finetune.freeze_heads if name not in self.tasks]
        if unknown:
            raise ValueError(f"finetune.freeze_heads names unknown task(s) {unknown}; tasks are {list(self.tasks)}")
        if self.finetune.strategy == "head_only" and set(self.finetune.freeze_heads) >= set(self.tasks):
            raise ValueError(
                "nothing to train: finetune.strategy=head_only freezes the backbone and finetune.freeze_heads "
                "freezes every head; remove a task from finetune.freeze_heads or change finetune.strategy"
            )
        if self.retain.wise_alphas and not (self.data.stsb and self.data.validation):
            raise ValueError("retain.wise_alphas needs data.validation and data.stsb (each blend is scored on both)")
        if self.retain.max_stsb_drop is not None and not self.data.stsb:
            raise ValueError("retain.max_stsb_drop needs data.stsb (the STS-B file validation measures retention on)")
        if self.retain.method != "none" and self.finetune.strategy == "head_only":
            raise ValueError(
                f"retain.method={self.retain.method} with finetune.strategy=head_only: the encoder does "
                "not train, so there is nothing to retain; set retain.method=none"
            )
        unknown = [source.task for source in self.data.sources if source.task not in self.tasks]
        if unknown:
            raise ValueError(f"data.sources names unknown task(s) {unknown}; tasks are {list(self.tasks)}")
        similarity = [name for name, task in self.tasks.items() if task.type == "similarity"]
        if similarity and self.finetune.strategy == "head_only":
            raise ValueError(
                f"similarity task(s) {similarity} train the encoder itself, which finetune.strategy=head_only "
                "freezes; use lora, partial or full"
            )
        for entry in self.train.select_metrics:
            task, _, metric = entry.partition(".")
            if task not in self.tasks or metric not in TYPE_METRICS[self.tasks[task].type]:
                known = [f"{name}.{m}" for name, t in self.tasks.items() for m in TYPE_METRICS[t.type]]
                raise ValueError(f"train.select_metrics: {entry!r} is not a task's metric; choose from {known}")
        if self.retain.method == "l2sp" and self.deepspeed.zero_stage == 3:
            raise ValueError("retain.method=l2sp needs whole parameters on every rank; use deepspeed.zero_stage <= 2")
        if self.train.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("train.precision=fp16 needs a GPU (scaling.use_gpu=true); use bf16 or fp32 on CPU")
        if self.deepspeed.autocast and self.train.precision == "fp32":
            raise ValueError("deepspeed.autocast needs train.precision bf16 or fp16 (it picks the autocast dtype)")
        if self.deepspeed.autocast and self.train.precision == "fp16" and self.deepspeed.zero_stage >= 1:
            raise ValueError(
                "deepspeed.autocast with train.precision=fp16 has no loss scaling under ZeRO >= 1; "
                "use train.precision=bf16 or deepspeed.autocast=false"
            )
        if self.train.compile and self.deepspeed.zero_stage == 3:
            raise ValueError(
                "train.compile is not supported with deepspeed.zero_stage=3 (parameters are gathered "
                "by hooks the compiled graph would bypass); use zero_stage <= 2 or train.compile=false"
            )
        if self.deepspeed.offload_optimizer and self.deepspeed.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        return self

    @property
    def task_names(self) -> list[str]:
        """Task names in head order; a row's task id is its index here."""
        return list(self.tasks)

    @property
    def rows_per_step(self) -> int:
        """Rows per optimizer step over all workers: micro batch x accumulation x workers."""
        return self.train.micro_batch_size * self.train.grad_accum_steps * self.scaling.num_workers

    def with_steps_for(self, train_rows: int) -> Config:
        """Resolve `train.epochs` into `train.max_steps` for an epoch of `train_rows` sampled rows."""
        if self.train.max_steps is not None:
            return self
        steps = max(1, math.ceil(self.train.epochs * train_rows / self.rows_per_step))
        train = self.train.model_copy(update={"max_steps": steps, "epochs": None})
        return self.model_copy(update={"train": train})


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value parsed as YAML: numbers, lists, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    path = key.strip().split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set {text!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {error}") from error
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with each `section.key=value` applied."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"--set {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check spelling; see docs/training.md#configuration)"
        lines.append(f"  {key}: {message}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def validate_config(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a plain dict (from YAML or `model_dump()`); errors list each bad key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read YAML at `path`, apply `--set` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return validate_config(apply_overrides(raw, overrides or []), source=str(path))
