"""The per-worker training recipe: config -> model -> DeepSpeed engine -> steps -> checkpoints -> export.

It reads top to bottom and knows nothing of Ray: a `Session` hands it batches, checkpoints and a
place to report. `mtl.train.ray_session` drives it under Ray Train; `mtl.train.local_session` in one plain process
(its own gloo/NCCL group), which is how it runs on a host without Ray and the benchmark baseline.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from transformers import set_seed

from mtl.config import Config, validate_config
from mtl.data.length_grouping import Batch, TokenBatch, length_grouped
from mtl.data.stream_position import RowLog, StreamPosition
from mtl.data.tokenization import pad
from mtl.model.backbone import load_tokenizer, starting_encoder_dir
from mtl.model.multitask import MultiTaskModel, build_model
from mtl.model.precision import autocast
from mtl.model.strategies import apply_strategy, format_report, parameter_report
from mtl.train.checkpoint_integrity import checkpoint_key, verify_checkpoint, write_manifest
from mtl.train.deepspeed_config import deepspeed_config
from mtl.train.losses import multitask_loss
from mtl.train.optim import build_optimizer, build_scheduler
from mtl.train.progress import PhaseTimer, Throughput, flatten, progress_line
from mtl.train.report import append_history
from mtl.train.retention import StsbProbe, Teacher, distill_loss, l2sp_loss
from mtl.train.validation import evaluate, selection_score


class Session(Protocol):
    """What the recipe needs from whoever runs it (Ray Train or a plain process)."""

    rank: int
    world_size: int
    run_dir: Path
    teacher_vectors: bool  # training batches carry cached `teacher` vectors (retain.teacher: cached, on Ray)
    position: StreamPosition  # where `train_batches` is in the data stream (saved with checkpoints)

    def train_batches(self) -> Iterator[Batch | None]:
        """Endless micro batches of this rank's shard (re-shuffled every epoch), each row with its `row_id` and
        `epoch`, starting where `position` says; `None` after each epoch's last batch."""

    def validation_batches(self) -> Iterable[Batch]:
        """One pass over this rank's part of the validation rows."""

    def latest_checkpoint(self) -> AbstractContextManager[str | None]:
        """A local directory holding the checkpoint to resume from, or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Publish metrics (and this rank's checkpoint files) for this step."""


def import_deepspeed(use_gpu: bool):
    # DeepSpeed picks its accelerator at import; on CPU hosts say so rather than let it probe.
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def to_device(batch: TokenBatch, tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a token batch to its longest row and move it to the device."""
    padded = pad(tokenizer, batch["input_ids"])
    inputs = {
        "input_ids": padded["input_ids"].to(device),  # (B, T)
        "attention_mask": padded["attention_mask"].to(device),  # (B, T)
        # torch.tensor copies: Ray Data hands out read-only arrays, which torch.as_tensor would warn about.
        "task_ids": torch.tensor(batch["task_id"], dtype=torch.long, device=device),
        "labels": torch.tensor(batch["label"], dtype=torch.long, device=device),
    }
    if "teacher" in batch:  # cached teacher vectors (mtl.train.teacher_embeddings), (B, H)
        inputs["teacher"] = torch.tensor(batch["teacher"], dtype=torch.float32, device=device)
    return inputs


def token_batches(
    batches: Iterable[Batch | None], tokenizer, config: Config, seed: int, timer=None
) -> Iterator[TokenBatch]:
    """Row batches -> token batches, length-grouped over `data.length_window` batches."""
    window = config.data.length_window
    return length_grouped(batches, tokenizer, config.model.max_seq_length, window, seed, timer)


def time_grad_sync(engine, timer: PhaseTimer) -> None:
    """Charge DeepSpeed's gradient reduction (called inside backward and step) to the `grad_sync` phase.

    ZeRO-3 reduce-scatters inside backward hooks: there that time is counted as `backward`.
    """
    engine.allreduce_gradients = timer.timed("grad_sync", engine.allreduce_gradients)  # ZeRO-0 and 1
    if hasattr(engine.optimizer, "average_tensor"):  # ZeRO-2 bucket reduce-scatter
        engine.optimizer.average_tensor = timer.timed("grad_sync", engine.optimizer.average_tensor)


def validate(engine, session: Session, tokenizer, config: Config) -> dict:
    """Validation metrics over every rank's rows (the same dict on every rank)."""
    batches = token_batches(session.validation_batches(), tokenizer, config, seed=config.train.seed)
    inputs = (to_device(batch, tokenizer, engine.device) for batch in batches)
    return evaluate(engine, inputs, config, session.world_size)


def save_checkpoint(engine, session: Session, step: int, metrics: dict, state: dict) -> None:
    """Every rank writes its DeepSpeed shard into its own temp dir and reports it; `state` rides along.

    Last before the report, each rank's manifest of the files in its dir (signed when MTL_CHECKPOINT_KEY is set):
    the session copies the dirs of all ranks into one checkpoint, which `resume` verifies against all manifests."""
    with tempfile.TemporaryDirectory(prefix="mtl-ckpt-") as directory:
        engine.save_checkpoint(directory, tag="state", client_state={"step": step, **state})
        session.position.save(directory, session.rank, engine.device)  # collective
        write_manifest(directory, session.rank, session.world_size, checkpoint_key())
        session.report({"step": step, **flatten(metrics)}, checkpoint_dir=directory)


def resume(engine, session: Session) -> tuple[int, dict]:
    """Load the session's latest checkpoint if any; return the step to continue from and the loop's state
    (best selection score and the STS-B record of that best).

    The checkpoint's files are verified against its manifests before DeepSpeed unpickles any of them: refused with
    `CheckpointIntegrityError` naming the file (mtl.train.checkpoint_integrity)."""
    state = {"best": float("-inf"), "best_stsb": None}
    key = checkpoint_key()  # here, not at the first save: a Ray worker without the driver's key fails at once
    with session.latest_checkpoint() as directory:
        if directory is None:
            return 0, state
        trust = verify_checkpoint(directory, key)
        _, client_state = engine.load_checkpoint(directory, tag="state")
        step = int(client_state["step"])
        if session.position.restore(directory):
            where = session.position.describe()
        else:
            where = "the checkpoint predates stream positions: the data stream starts again from its beginning"
        if session.rank == 0:
            print(f"resumed from checkpoint at step {step} ({directory}; {trust}); {where}", flush=True)
        return step, {key: client_state.get(key, default) for key, default in state.items()}


def measure_stsb(engine, probe: StsbProbe | None, config: Config) -> float:
    """STS-B Spearman of the encoder as it is now (collective); bf16/fp16 autocast when training in it."""
    was_training = engine.module.training
    engine.module.eval()
    with autocast(config.train.precision, engine.device.type):
        value = probe.spearman(engine.module.pooled, engine.device)
    engine.module.train(was_training)
    return value


def stsb_record(spearman: float, before: float) -> dict:
    return {"spearman": spearman, "before": before, "drop": before - spearman}


def retention_summary(final: dict, best: dict | None, budget: float | None) -> dict:
    """STS-B of the final and best exports against the starting encoder, and whether each is within the budget."""
    summary = {"stsb_before": final["before"], "final": final, "best": best, "max_stsb_drop": budget}
    if budget is not None:
        summary["final_within_budget"] = final["drop"] <= budget
        summary["best_within_budget"] = best is not None and best["drop"] <= budget
    return summary


def export_snapshot(engine, session: Session, config: Config, tokenizer, name: str, metrics: dict, step: int):
    """Collective (every rank calls it): consolidate the model and export it on rank 0 to `<run_dir>/<name>`."""
    full_model = gather_full_model(engine, config)
    if full_model is None:
        return None
    from mtl.inference.export import export_model

    return str(export_model(full_model, config, tokenizer, session.run_dir / name, metrics=metrics, steps=step))


def gather_full_model(engine, config: Config) -> MultiTaskModel | None:
    """A full fp32 copy of the trained model on rank 0 (ZeRO-3 shards consolidated); None elsewhere.

    Under DeepSpeed bf16/fp16 the module holds 16-bit copies: trained parameters come from the optimizer's fp32
    masters (`safe_get_full_fp32_param`, collective), frozen ones from the starting weights (never updated, so the
    fp32 originals rather than their 16-bit rounding)."""
    from deepspeed.utils import safe_get_full_fp32_param

    sixteen_bit = config.train.precision in ("bf16", "fp16") and not config.deepspeed.autocast
    masters, frozen = {}, set()
    if sixteen_bit:
        for name, param in engine.module.named_parameters():
            if not param.requires_grad:
                frozen.add(name)
                continue
            master = safe_get_full_fp32_param(param)  # collective: every rank calls it for every trained parameter
            if master is not None:
                masters[name] = master.detach().float().cpu()
    if config.deepspeed.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank must call
    else:
        state = engine.module.state_dict()
    if not (not dist.is_initialized() or dist.get_rank() == 0):
        return None
    model = apply_strategy(build_model(config), config.finetune)
    starting = model.state_dict()
    model.load_state_dict({
        name: masters[name] if name in masters else starting[name] if name in frozen else tensor.float()
        for name, tensor in state.items()
    })  # fmt: skip
    return model


def run_training(config_data: dict, session: Session) -> dict:
    """The recipe. Returns the final validation metrics (and the export directory on rank 0)."""
    config = validate_config(config_data, source="worker config")  # re-validated on arrival
    assert session.world_size == config.scaling.num_workers, "the driver sets scaling.num_workers to the world size"
    assert config.train.max_steps is not None, "the driver resolves train.epochs into train.max_steps"
    total_steps = config.train.max_steps
    deepspeed = import_deepspeed(config.scaling.use_gpu)
    set_seed(config.train.seed)  # python, numpy and torch

    model = apply_strategy(build_model(config), config.finetune)
    if session.rank == 0:
        print(format_report(parameter_report(model)), flush=True)
    retain = config.retain
    start_weights = (
        {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad and "heads." not in name
        }
        if retain.method == "l2sp"
        else {}
    )
    if config.train.compile:
        model.encoder.compile(dynamic=True)  # in place: parameter names (checkpoints, export) stay as they are
    tokenizer = load_tokenizer(config.model, starting_encoder_dir(config.model))
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total_steps)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(config),
    )
    teacher = None
    if retain.method == "distill" and not session.teacher_vectors:
        teacher = Teacher(build_model(config), config.train.precision, engine.device)
        if session.rank == 0:
            print("distill: teacher vectors computed online in every step", flush=True)
    probe = None
    if config.data.stsb:
        ranks = 1 if config.deepspeed.zero_stage == 3 else session.world_size
        probe = StsbProbe(config.data.stsb, tokenizer, config.model.max_seq_length, session.rank % ranks, ranks)
        stsb_before = measure_stsb(engine, probe, config)  # the starting encoder, before any checkpoint is loaded
        if session.rank == 0:
            print(f"STS-B Spearman of the starting encoder ({config.data.stsb}): {stsb_before:.4f}", flush=True)
    step, state = resume(engine, session)
    row_log = RowLog(session.run_dir, session.rank) if config.train.log_rows else None
    if row_log:
        row_log.cut_back(step)
    stsb = None

    writer = _tensorboard(session)
    exact_gpu_times = engine.device.type == "cuda" and config.train.profile_phases
    timer = PhaseTimer(torch.cuda.synchronize if exact_gpu_times else None)
    time_grad_sync(engine, timer)
    batches = token_batches(session.train_batches(), tokenizer, config, config.train.seed + session.rank, timer)
    loss_weights = {name: task.loss_weight for name, task in config.tasks.items()}
    smoothing = {name: task.label_smoothing for name, task in config.tasks.items()}
    rows_per_step = config.rows_per_step
    started, start_step = time.perf_counter(), step
    loss_names = config.task_names + (["retain"] if retain.method != "none" else [])
    running: dict[str, list[float]] = {name: [] for name in loss_names}
    metrics: dict = {}
    throughput = Throughput()
    engine.train()
    while step < total_steps:
        timer.take()  # time between steps (validation, checkpoints) is not a step's
        step_started, step_tokens, step_real_tokens = time.perf_counter(), 0, 0
        for _ in range(config.train.grad_accum_steps):
            with timer.phase("data_wait"):
                batch = next(batches)
            with timer.phase("tokenize"):
                inputs = to_device(batch, tokenizer, engine.device)
            step_tokens += inputs["input_ids"].numel() * session.world_size
            step_real_tokens += int(inputs["attention_mask"].sum()) * session.world_size
            with timer.phase("forward"):
                logits, pooled = engine(inputs["input_ids"], inputs["attention_mask"], return_pooled=True)
                loss, per_task = multitask_loss(
                    logits, inputs["task_ids"], inputs["labels"], loss_weights, smoothing, config.train.task_loss
                )
                if retain.method == "distill":
                    if teacher is None:  # cached vectors stream with the rows (mtl.train.teacher_embeddings)
                        target = inputs["teacher"]
                    else:
                        with timer.phase("teacher"):
                            target = teacher(inputs["input_ids"], inputs["attention_mask"])
                    per_task["retain"] = distill_loss(pooled, target)
                elif retain.method == "l2sp":
                    per_task["retain"] = l2sp_loss(engine.module.named_parameters(), start_weights)
                if retain.method != "none":
                    loss = loss + retain.weight * per_task["retain"]
                    running["retain"].append(float(per_task["retain"].detach()))
            with timer.phase("backward"):
                engine.backward(loss)
            with timer.phase("optimizer"):
                engine.step()
            session.position.mark(batch)
            if row_log:
                row_log.add(batch)
            for task_id, name in enumerate(config.task_names):
                if (inputs["task_ids"] == task_id).any():
                    running[name].append(float(per_task[name]))
        step += 1
        if row_log:
            row_log.write(step)
        seconds = time.perf_counter() - step_started
        throughput.step(seconds, rows_per_step, step_tokens, step_real_tokens, timer.take())
        if session.rank == 0 and (step % config.train.log_every == 0 or step == total_steps):
            means = {name: float(np.mean(values)) if values else float("nan") for name, values in running.items()}
            rows = (step - start_step) * rows_per_step
            print(progress_line(step, total_steps, means, optimizer.param_groups, rows, started), flush=True)
            append_history(session.run_dir, {"kind": "train", "step": step, "time": time.time(), "loss": means})
            if writer:
                for name, value in means.items():
                    writer.add_scalar(f"train/loss/{name}", value, step)
                for group in optimizer.param_groups:
                    writer.add_scalar(f"lr/{group['name']}", group["lr"], step)
            running = {name: [] for name in loss_names}
        if step % config.train.eval_every == 0 or step == total_steps:
            metrics = validate(engine, session, tokenizer, config)
            stsb = stsb_record(measure_stsb(engine, probe, config), stsb_before) if probe else None
            budget = retain.max_stsb_drop
            within_budget = stsb is None or budget is None or stsb["drop"] <= budget
            if session.rank == 0:
                summary = " ".join(
                    f"{name}: acc={m['accuracy']:.4f} f1={m['macro_f1']:.4f} loss={m['loss']:.4f}"
                    for name, m in metrics.items()
                )
                if stsb:
                    summary += f" stsb: {stsb['spearman']:.4f} ({-stsb['drop']:+.4f})"
                print(f"validation step {step}: {summary}", flush=True)
                record = {"kind": "validation", "step": step, "metrics": metrics, **({"stsb": stsb} if stsb else {})}
                append_history(session.run_dir, record)
                if writer:
                    for key, value in flatten({**metrics, **({"stsb": stsb} if stsb else {})}, "validation/").items():
                        writer.add_scalar(key, value, step)
            has_rows = any(task["count"] for task in metrics.values())
            # Same on every rank: validation rows and STS-B cosines are gathered.
            if has_rows and within_budget and selection_score(metrics) > state["best"]:
                state.update(best=selection_score(metrics), best_stsb=stsb)
                path = export_snapshot(engine, session, config, tokenizer, "best", metrics, step)
                if path:
                    print(f"best validation so far (mean macro-F1 {state['best']:.4f}): exported {path}", flush=True)
        if step % config.train.checkpoint_every == 0 or step == total_steps:
            save_checkpoint(engine, session, step, metrics, state)
    if not metrics:  # resumed at the last step: nothing ran, but the result still carries metrics
        metrics = validate(engine, session, tokenizer, config)
    if writer:
        writer.close()

    result: dict = {"metrics": metrics, "steps": step, "best_score": state["best"], "throughput": throughput.as_dict()}
    if probe:
        final = stsb_record(measure_stsb(engine, probe, config), stsb_before) if stsb is None else stsb
        result["retention"] = retention_summary(final, state["best_stsb"], retain.max_stsb_drop)
    if session.rank == 0 and result["throughput"]:
        append_history(session.run_dir, {"kind": "throughput", "step": step, **result["throughput"]})
    if session.rank == 0 and "retention" in result:
        append_history(session.run_dir, {"kind": "retention", "step": step, **result["retention"]})
    export_dir = export_snapshot(engine, session, config, tokenizer, "export", metrics, step)
    if export_dir is not None:
        result["export_dir"] = export_dir
        if (session.run_dir / "best").is_dir():
            result["best_dir"] = str(session.run_dir / "best")
    return result


def _tensorboard(session: Session):
    if session.rank != 0:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(session.run_dir / "tensorboard"))
