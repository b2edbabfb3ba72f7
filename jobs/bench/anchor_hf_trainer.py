"""Anchor: the Hugging Face `Trainer` script a user would write before adopting this project, timed like ours.

    python jobs/bench/anchor_hf_trainer.py '<request JSON>'   (jobs/bench/train.py --anchor hf-trainer runs it)

Imports nothing from this project. The model is ours: `AutoModel` + mean pooling over the attention mask + one
`Linear(hidden, labels)` per task, each task's cross-entropy over its rows of the batch, summed with the tasks' loss
weights. Tokenised up front (no `datasets`: a plain torch Dataset; `DataCollatorWithPadding` pads each batch);
`TrainingArguments` with bf16 autocast on CPU, the Trainer's default (fused) AdamW, a linear schedule with warmup,
length-grouped batches by default. A step is timed from the previous step's end (the Trainer fetches and pads the
next batch before `on_step_begin`; our steps count that too); real tokens are the attention mask's sum, and the first
2 steps are skipped, as ours. Afterwards: accuracy per task on the validation Parquet. Last stdout line: the result
as JSON (everything else goes to stderr).

Request keys: backbone, train and validation (Parquet paths; columns text, task, label id), tasks (task -> label
names), loss_weights, rows_per_step, max_seq_length, learning_rate, head_learning_rate (null: learning_rate),
weight_decay, warmup_ratio, max_steps, max_seconds (null: no wall budget), threads, torch_compile, group_by_length,
seed.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch
import transformers
from torch import nn
from transformers import (
    AutoModel,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

WARMUP_STEPS = 2  # skipped by the throughput figures, as ours (mtl/train/progress.py)


class MultiTaskModel(nn.Module):
    """Shared encoder, mean pooling, one linear head per task; the loss is the weighted sum of per-task means."""

    def __init__(self, backbone: str, label_counts: list[int], loss_weights: list[float]):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(backbone)
        self.heads = nn.ModuleList(nn.Linear(self.encoder.config.hidden_size, count) for count in label_counts)
        self.loss_weights = loss_weights

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()
        return ((hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)).to(hidden.dtype)

    def forward(self, input_ids, attention_mask, task_ids, labels=None) -> dict:
        pooled = self.pooled(input_ids, attention_mask)
        logits = [head(pooled) for head in self.heads]
        if labels is None:
            return {"logits": logits}
        loss = torch.zeros((), device=pooled.device)
        for task, (task_logits, weight) in enumerate(zip(logits, self.loss_weights, strict=True)):
            rows = task_ids == task
            if rows.any():
                loss = loss + weight * nn.functional.cross_entropy(task_logits[rows].float(), labels[rows])
        return {"loss": loss}


class HeadRateTrainer(Trainer):
    """The Trainer with the heads at their own learning rate (the Trainer's optimizer and weight-decay groups)."""

    def __init__(self, *args, head_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.head_learning_rate is None:
            return super().create_optimizer(model)
        model = model or self.model
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for is_head in (False, True):
            for decays in (True, False):
                params = [
                    p
                    for n, p in model.named_parameters()
                    if p.requires_grad and ("heads" in n.split(".")) == is_head and (n in decay) == decays
                ]
                groups.append({
                    "params": params,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "lr": self.head_learning_rate if is_head else self.args.learning_rate,
                })  # fmt: skip
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


class Rows(torch.utils.data.Dataset):
    """Tokenised rows: `input_ids` (what the length-grouped sampler measures), task id, label id."""

    def __init__(self, input_ids: list[list[int]], task_ids: list[int], labels: list[int]):
        self.input_ids, self.task_ids, self.labels = input_ids, task_ids, labels

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.input_ids[index], "task_ids": self.task_ids[index], "labels": self.labels[index]}


@dataclass
class MeteredCollator(DataCollatorWithPadding):
    """Pads like `DataCollatorWithPadding` and notes each batch's rows, real and padded tokens, in fetch order."""

    batches: deque = field(default_factory=deque)

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        self.batches.append((len(features), int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch


class StepMeter(TrainerCallback):
    """Wall time of each optimizer step (from the previous step's end) and of its compute (`on_step_begin` to end);
    with `max_seconds`, stops training once that much wall time has passed since training began."""

    def __init__(self, collator: MeteredCollator, max_seconds: float | None):
        self.collator, self.max_seconds = collator, max_seconds
        self.started = self.step_started = 0.0
        self.ends: list[float] = []
        self.compute: list[float] = []
        self.sizes: list[tuple[int, int, int]] = []
        self.stopped_by_time = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.ends.append(now)
        self.compute.append(now - self.step_started)
        self.sizes.append(self.collator.batches.popleft())  # one batch per step; the loader fetches ahead
        if self.max_seconds is not None and now - self.started >= self.max_seconds and not control.should_training_stop:
            control.should_training_stop = self.stopped_by_time = True

    def figures(self) -> dict:
        """Steady-state throughput (the first `WARMUP_STEPS` skipped when there are more steps than that)."""
        seconds = np.diff([self.started, *self.ends])
        skip = WARMUP_STEPS if len(seconds) > WARMUP_STEPS else 0
        rows, real, padded = (sum(size[i] for size in self.sizes[skip:]) for i in range(3))
        total = float(seconds[skip:].sum())
        measured = len(seconds) - skip
        return {
            "samples_per_s": rows / total,
            "real_tokens_per_s": real / total,
            "padded_tokens_per_s": padded / total,
            "padded_per_real_token": padded / max(real, 1),
            "step_ms": 1000 * total / measured,
            "compute_ms": 1000 * float(np.sum(self.compute[skip:])) / measured,
            "steps_measured": measured,
            "steps": len(self.ends),
            "train_wall_s": self.ends[-1] - self.started,
            "stopped_by": "max_seconds" if self.stopped_by_time else "max_steps",
        }


def read_rows(paths: list[str], tasks: list[str], tokenizer, max_seq_length: int) -> Rows:
    """The rows of `tasks` in the Parquet files, tokenised (truncated to `max_seq_length`) up front."""
    texts, task_ids, labels = [], [], []
    for path in paths:
        table = pq.read_table(path, columns=["text", "task", "label"])
        for text, task, label in zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True):
            if task in tasks:
                texts.append(text)
                task_ids.append(tasks.index(task))
                labels.append(int(label))
    encoded = tokenizer(texts, truncation=True, max_length=max_seq_length, return_token_type_ids=False)
    return Rows(encoded["input_ids"], task_ids, labels)


@torch.inference_mode()
def accuracy(model: MultiTaskModel, rows: Rows, collator, tasks: list[str], batch_size: int = 256) -> dict:
    """Accuracy per task: each row's prediction from its task's head; bf16 autocast as in training."""
    model.eval()
    correct, count = np.zeros(len(tasks)), np.zeros(len(tasks))
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch["input_ids"], batch["attention_mask"], batch["task_ids"])["logits"]
        for task in range(len(tasks)):
            mine = batch["task_ids"] == task
            correct[task] += int((logits[task][mine].argmax(-1) == batch["labels"][mine]).sum())
            count[task] += int(mine.sum())
    return {name: float(correct[i] / count[i]) for i, name in enumerate(tasks) if count[i]}


def main(request: dict) -> dict:
    torch.set_num_threads(request["threads"])
    transformers.set_seed(request["seed"])
    tasks = list(request["tasks"])
    tokenizer = AutoTokenizer.from_pretrained(request["backbone"])
    train = read_rows(request["train"], tasks, tokenizer, request["max_seq_length"])
    validation = read_rows(request["validation"], tasks, tokenizer, request["max_seq_length"])
    label_counts = [len(request["tasks"][name]) for name in tasks]
    model = MultiTaskModel(request["backbone"], label_counts, [request["loss_weights"][name] for name in tasks])
    collator = MeteredCollator(tokenizer)
    meter = StepMeter(collator, request.get("max_seconds"))
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=request["rows_per_step"],
            max_steps=request["max_steps"],
            learning_rate=request["learning_rate"],
            weight_decay=request.get("weight_decay", 0.0),
            warmup_steps=request["warmup_ratio"],  # a float below 1: a share of max_steps (transformers 5)
            lr_scheduler_type="linear",
            bf16=True,
            train_sampling_strategy="group_by_length" if request["group_by_length"] else "random",
            torch_compile=request["torch_compile"],
            dataloader_num_workers=0,
            remove_unused_columns=False,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**9,
            use_cpu=True,
            seed=request["seed"],
        )
        trainer = HeadRateTrainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[meter],
            head_learning_rate=request.get("head_learning_rate"),
        )
        trainer.train()
    return {
        **meter.figures(),
        "validation": accuracy(model, validation, DataCollatorWithPadding(tokenizer), tasks),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "flags": {
            "bf16": True,
            "group_by_length": request["group_by_length"],
            "torch_compile": request["torch_compile"],
            "optim": args.optim.value,
            "head_learning_rate": request.get("head_learning_rate"),
        },
    }


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines; stdout's last line is the result
        result = main(json.loads(sys.argv[1]))
    print(json.dumps(result))
