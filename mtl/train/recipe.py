"""The per-worker training recipe: config -> model -> DeepSpeed engine -> steps -> checkpoints -> export.

It reads top to bottom and knows nothing of Ray: a `Session` hands it batches, checkpoints and a
place to report. `mtl.train.ray_session` drives it under Ray Train; `mtl.train.local_session` in one plain process
(its own gloo/NCCL group), which is how it runs on a host without Ray and the benchmark baseline.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from mtl.config import Config, validate_config
from mtl.data.tokenization import tokenize
from mtl.evaluation.metrics import accuracy_from_confusion, macro_f1_from_confusion
from mtl.model.backbone import load_tokenizer, resolve_backbone
from mtl.model.multitask import MultiTaskModel, build_model
from mtl.model.strategies import apply_strategy, format_report, parameter_report
from mtl.train.deepspeed_config import deepspeed_config
from mtl.train.losses import multitask_loss
from mtl.train.optim import build_optimizer, build_scheduler
from mtl.train.report import append_history

Batch = dict[str, np.ndarray]  # text (object), task_id (int32), label (int64); micro_batch_size rows


class Session(Protocol):
    """What the recipe needs from whoever runs it (Ray Train or a plain process)."""

    rank: int
    world_size: int
    run_dir: Path

    def train_batches(self) -> Iterator[Batch]:
        """Endless micro batches of this rank's shard (re-shuffled every epoch)."""

    def validation_batches(self) -> Iterable[Batch]:
        """One pass over this rank's part of the validation rows."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """A local directory holding the checkpoint to resume from, or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Publish metrics (and this rank's checkpoint files) for this step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def import_deepspeed(use_gpu: bool):
    # DeepSpeed picks its accelerator at import; on CPU hosts say so rather than let it probe.
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def to_device(batch: Batch, tokenizer, config: Config, device: torch.device) -> dict[str, torch.Tensor]:
    tokens = tokenize(tokenizer, batch["text"].tolist(), config.model.max_seq_length)
    return {
        "input_ids": tokens["input_ids"].to(device),
        "attention_mask": tokens["attention_mask"].to(device),
        "task_ids": torch.as_tensor(np.asarray(batch["task_id"]), dtype=torch.long, device=device),
        "labels": torch.as_tensor(np.asarray(batch["label"]), dtype=torch.long, device=device),
    }


def evaluate(engine, session: Session, tokenizer, config: Config) -> dict:
    """Per-task loss, accuracy and macro-F1 over every rank's validation rows (summed across ranks)."""
    device = engine.device
    task_names = config.task_names
    sizes = [len(config.tasks[name].labels) for name in task_names]
    width = max(sizes)
    confusion = torch.zeros(len(task_names), width, width, dtype=torch.float64, device=device)
    loss_sums = torch.zeros(len(task_names), dtype=torch.float64, device=device)
    was_training = engine.module.training
    engine.module.eval()
    with torch.no_grad():
        for batch in session.validation_batches():
            inputs = to_device(batch, tokenizer, config, device)
            logits = engine(inputs["input_ids"], inputs["attention_mask"])
            for task_id, name in enumerate(task_names):
                mask = inputs["task_ids"] == task_id
                if not mask.any():
                    continue
                task_logits = logits[name][mask].float()
                labels = inputs["labels"][mask]
                loss_sums[task_id] += torch.nn.functional.cross_entropy(task_logits, labels, reduction="sum")
                predictions = task_logits.argmax(dim=-1)
                confusion[task_id].index_put_(
                    (labels, predictions), torch.ones_like(labels, dtype=torch.float64), accumulate=True
                )
    engine.module.train(was_training)
    if session.world_size > 1:
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sums)
    metrics = {}
    for task_id, name in enumerate(task_names):
        matrix = confusion[task_id, : sizes[task_id], : sizes[task_id]].cpu().numpy().astype(np.int64)
        count = int(matrix.sum())
        metrics[name] = {
            "loss": float(loss_sums[task_id] / max(count, 1)),
            "accuracy": accuracy_from_confusion(matrix),
            "macro_f1": macro_f1_from_confusion(matrix),
            "count": count,
            "confusion": matrix.tolist(),
        }
    return metrics


def save_checkpoint(engine, session: Session, step: int, metrics: dict, best: float) -> None:
    """Every rank writes its DeepSpeed shard into its own temp dir and reports it."""
    with tempfile.TemporaryDirectory(prefix="mtl-ckpt-") as directory:
        engine.save_checkpoint(directory, tag="state", client_state={"step": step, "best": best})
        session.report({"step": step, **flatten(metrics)}, checkpoint_dir=directory)


def resume(engine, session: Session) -> tuple[int, float]:
    """Load the session's latest checkpoint if any; return the step to continue from and the best score."""
    with session.latest_checkpoint() as directory:
        if directory is None:
            return 0, float("-inf")
        _, client_state = engine.load_checkpoint(directory, tag="state")
        step = int(client_state["step"])
        if session.rank == 0:
            print(f"resumed from checkpoint at step {step} ({directory})", flush=True)
        return step, float(client_state.get("best", float("-inf")))


def selection_score(metrics: dict) -> float:
    """What "best checkpoint" means: the mean over tasks of validation macro-F1."""
    return float(np.mean([task["macro_f1"] for task in metrics.values()]))


def export_snapshot(engine, session: Session, config: Config, tokenizer, name: str, metrics: dict, step: int):
    """Collective (every rank calls it): consolidate the model and export it on rank 0 to `<run_dir>/<name>`."""
    full_model = gather_full_model(engine, config)
    if full_model is None:
        return None
    from mtl.inference.export import export_model

    return str(export_model(full_model, config, tokenizer, session.run_dir / name, metrics=metrics, steps=step))


def flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif not isinstance(value, list):
            flat[f"{prefix}{key}"] = value
    return flat


def gather_full_model(engine, config: Config) -> MultiTaskModel | None:
    """A full fp32 copy of the trained model on rank 0 (ZeRO-3 shards consolidated); None elsewhere."""
    if config.deepspeed.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank must call
    else:
        state = engine.module.state_dict()
    if not (not dist.is_initialized() or dist.get_rank() == 0):
        return None
    model = apply_strategy(build_model(config), config.finetune)
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return model


class Throughput:
    """Steady-state samples/s, padded tokens/s and the share of step time spent waiting for the next batch.

    Tokens are this rank's padded `input_ids` times the world size (ranks see batches of similar shape), so runs whose
    batches pad to different lengths can still be compared on work done. The first `warmup_steps` are skipped.
    """

    def __init__(self, warmup_steps: int = 2):
        self.warmup_steps = warmup_steps
        self.seen = 0
        self.step_seconds = self.wait_seconds = 0.0
        self.rows = self.tokens = 0
        self._wait = 0.0

    def waited(self, seconds: float) -> None:
        self._wait += seconds

    def step(self, seconds: float, rows: int, tokens: int) -> None:
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.step_seconds += seconds
            self.wait_seconds += self._wait
            self.rows += rows
            self.tokens += tokens
        self._wait = 0.0

    def as_dict(self) -> dict:
        if not self.step_seconds:
            return {}
        return {
            "samples_per_s": self.rows / self.step_seconds,
            "padded_tokens_per_s": self.tokens / self.step_seconds,
            "data_wait_fraction": self.wait_seconds / self.step_seconds,
            "steps_measured": self.seen - self.warmup_steps,
        }


def log_progress(step: int, total: int, per_task: dict[str, float], optimizer, rows: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    rate = rows / max(elapsed, 1e-9)
    remaining = elapsed / max(step, 1) * (total - step)
    losses = " ".join(f"loss/{name}={value:.4f}" for name, value in per_task.items())
    lrs = " ".join(
        f"lr/{group['name']}={group['lr']:.2e}"
        for group in optimizer.param_groups
        if not group["name"].endswith("/no_decay")  # same LR as its decayed twin
    )
    return f"step {step}/{total} {losses} {lrs} samples/s={rate:.1f} eta={remaining:.0f}s"


def run_training(config_data: dict, session: Session) -> dict:
    """The recipe. Returns the final validation metrics (and the export directory on rank 0)."""
    config = validate_config(config_data, source="worker config")  # re-validated on arrival
    assert config.train.max_steps is not None, "the driver resolves train.epochs into train.max_steps"
    total_steps = config.train.max_steps
    deepspeed = import_deepspeed(config.scaling.use_gpu)
    seed_everything(config.train.seed)

    model = apply_strategy(build_model(config), config.finetune)
    if session.rank == 0:
        print(format_report(parameter_report(model)), flush=True)
    tokenizer = load_tokenizer(config.model, _tokenizer_dir(config))
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config, session.world_size),
    )
    step, best = resume(engine, session)

    writer = _tensorboard(session)
    batches = session.train_batches()
    loss_weights = {name: task.loss_weight for name, task in config.tasks.items()}
    smoothing = {name: task.label_smoothing for name, task in config.tasks.items()}
    rows_per_step = config.train.micro_batch_size * config.train.grad_accum_steps * session.world_size
    started, start_step = time.perf_counter(), step
    running: dict[str, list[float]] = {name: [] for name in config.task_names}
    metrics: dict = {}
    throughput = Throughput()
    engine.train()
    while step < total_steps:
        step_started, step_tokens = time.perf_counter(), 0
        for _ in range(config.train.grad_accum_steps):
            wait_started = time.perf_counter()
            batch = next(batches)
            throughput.waited(time.perf_counter() - wait_started)
            inputs = to_device(batch, tokenizer, config, engine.device)
            step_tokens += inputs["input_ids"].numel() * session.world_size
            logits = engine(inputs["input_ids"], inputs["attention_mask"])
            loss, per_task = multitask_loss(logits, inputs["task_ids"], inputs["labels"], loss_weights, smoothing)
            engine.backward(loss)
            engine.step()
            for task_id, name in enumerate(config.task_names):
                if (inputs["task_ids"] == task_id).any():
                    running[name].append(float(per_task[name]))
        step += 1
        throughput.step(time.perf_counter() - step_started, rows_per_step, step_tokens)
        if session.rank == 0 and (step % config.train.log_every == 0 or step == total_steps):
            means = {name: float(np.mean(values)) if values else float("nan") for name, values in running.items()}
            rows = (step - start_step) * rows_per_step
            print(log_progress(step, total_steps, means, optimizer, rows, started), flush=True)
            append_history(session.run_dir, {"kind": "train", "step": step, "time": time.time(), "loss": means})
            if writer:
                for name, value in means.items():
                    writer.add_scalar(f"train/loss/{name}", value, step)
                for group in optimizer.param_groups:
                    writer.add_scalar(f"lr/{group['name']}", group["lr"], step)
            running = {name: [] for name in config.task_names}
        if step % config.train.eval_every == 0 or step == total_steps:
            metrics = evaluate(engine, session, tokenizer, config)
            if session.rank == 0:
                summary = " ".join(
                    f"{name}: acc={m['accuracy']:.4f} f1={m['macro_f1']:.4f} loss={m['loss']:.4f}"
                    for name, m in metrics.items()
                )
                print(f"validation step {step}: {summary}", flush=True)
                append_history(session.run_dir, {"kind": "validation", "step": step, "metrics": metrics})
                if writer:
                    for key, value in flatten(metrics, "validation/").items():
                        writer.add_scalar(key, value, step)
            has_rows = any(task["count"] for task in metrics.values())
            if has_rows and selection_score(metrics) > best:  # same on every rank: metrics are all-reduced
                best = selection_score(metrics)
                path = export_snapshot(engine, session, config, tokenizer, "best", metrics, step)
                if path:
                    print(f"best validation so far (mean macro-F1 {best:.4f}): exported {path}", flush=True)
        if step % config.train.checkpoint_every == 0 or step == total_steps:
            save_checkpoint(engine, session, step, metrics, best)
    if not metrics:  # resumed at the last step: nothing ran, but the result still carries metrics
        metrics = evaluate(engine, session, tokenizer, config)
    if writer:
        writer.close()

    result: dict = {"metrics": metrics, "steps": step, "best_score": best, "throughput": throughput.as_dict()}
    if session.rank == 0 and result["throughput"]:
        append_history(session.run_dir, {"kind": "throughput", "step": step, **result["throughput"]})
    export_dir = export_snapshot(engine, session, config, tokenizer, "export", metrics, step)
    if export_dir is not None:
        result["export_dir"] = export_dir
        if (session.run_dir / "best").is_dir():
            result["best_dir"] = str(session.run_dir / "best")
    return result


def _tokenizer_dir(config: Config) -> Path:
    return Path(config.model.init_from) if config.model.init_from else resolve_backbone(config.model.backbone)


def _tensorboard(session: Session):
    if session.rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(session.run_dir / "tensorboard"))
