"""The per-worker training recipe: config -> model -> DeepSpeed engine -> steps -> checkpoints -> export.

`Recipe` reads top to bottom in the shape of torchtune's recipes: `setup` builds everything, `train` is a short loop
of `train_step`, `log_progress`, `validate` and `save_checkpoint`, and `finish` exports. It knows nothing of Ray: a
`Session` (mtl.train.session) hands it batches, checkpoints and a place to report. `mtl.train.ray_session` drives
it under Ray Train; `mtl.train.local_session` in one plain process (its own gloo/NCCL group), which is how it runs
on a host without Ray and the benchmark baseline. Checkpoints and exports: `mtl.train.checkpoint`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from transformers import set_seed

from mtl.config import Config, ConfigError
from mtl.data.length_grouping import Batch, TokenBatch, length_grouped
from mtl.data.stream_position import RowLog
from mtl.data.tokenization import pad
from mtl.model.backbone import load_tokenizer, starting_encoder_dir
from mtl.model.fast_dropout import use_fast_dropout
from mtl.model.multitask import build_model
from mtl.model.precision import autocast
from mtl.model.strategies import apply_strategy, format_report, parameter_report
from mtl.train.checkpoint import export_snapshot, resume, save_checkpoint
from mtl.train.deepspeed_config import deepspeed_config
from mtl.train.losses import multitask_loss
from mtl.train.optim import build_optimizer, build_scheduler
from mtl.train.progress import PhaseTimer, Throughput, flatten, progress_line
from mtl.train.report import append_history
from mtl.train.retention import L2SP, Distill, NoRetention, StsbProbe, Teacher
from mtl.train.session import Session
from mtl.train.tracking import open_tracker
from mtl.train.validation import evaluate, selection_score


def import_deepspeed(use_gpu: bool):
    # DeepSpeed picks its accelerator at import; on CPU hosts say so rather than let it probe.
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


def to_device(batch: TokenBatch, tokenizer, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad a token batch's B texts and the P second texts of its pair rows to the longest and move them to the
    device: `input_ids`/`attention_mask` `(B + P, T)`, `pair_rows` `(P,)`, `task_ids`, `labels`, `scores` `(B,)`."""
    pair_ids = batch.get("pair_ids") or [[] for _ in batch["input_ids"]]
    pair_rows = [row for row, ids in enumerate(pair_ids) if ids]
    padded = pad(tokenizer, list(batch["input_ids"]) + [pair_ids[row] for row in pair_rows])
    scores = batch["score"] if "score" in batch else np.full(len(batch["task_id"]), np.nan, np.float32)
    inputs = {
        "input_ids": padded["input_ids"].to(device),  # (B + P, T)
        "attention_mask": padded["attention_mask"].to(device),  # (B + P, T)
        "pair_rows": torch.tensor(pair_rows, dtype=torch.long, device=device),  # (P,)
        # torch.tensor copies: Ray Data hands out read-only arrays, which torch.as_tensor would warn about.
        "task_ids": torch.tensor(batch["task_id"], dtype=torch.long, device=device),
        "labels": torch.tensor(batch["label"], dtype=torch.long, device=device),
        "scores": torch.tensor(scores, dtype=torch.float32, device=device),
    }
    if "teacher" in batch:  # cached teacher vectors of every text encoded (mtl.train.teacher_embeddings), (B + P, H)
        teacher = np.asarray(batch["teacher"], dtype=np.float32)
        if pair_rows:
            teacher = np.concatenate([teacher, np.asarray(batch["teacher_pair"], dtype=np.float32)[pair_rows]])
        inputs["teacher"] = torch.tensor(teacher, dtype=torch.float32, device=device)
    return inputs


def token_batches(
    batches: Iterable[Batch | None], tokenizer, config: Config, seed: int, timer=None
) -> Iterator[TokenBatch]:
    """Row batches -> token batches, length-grouped over `data.length_window` batches."""
    window = config.data.length_window
    return length_grouped(batches, tokenizer, config.model.max_seq_length, window, seed, timer)


def skip_lone_reduction(engine, world_size: int, zero_stage: int) -> None:
    """One worker at ZeRO-0 has nothing to average: DeepSpeed still flattens every gradient, all-reduces it with
    itself over gloo and copies it back (5-9 ms a step on 2 CPU cores, `jobs.bench.train`'s `grad_sync`). Turn that
    reduction off, as DeepSpeed itself does when it has no process group. ZeRO >= 1 reduces inside its optimizer."""
    if world_size == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False


def time_grad_sync(engine, timer: PhaseTimer) -> None:
    """Charge DeepSpeed's gradient reduction (called inside backward and step) to the `grad_sync` phase.

    ZeRO-3 reduce-scatters inside backward hooks: there that time is counted as `backward`.
    """
    engine.allreduce_gradients = timer.timed("grad_sync", engine.allreduce_gradients)  # ZeRO-0 and 1
    if hasattr(engine.optimizer, "average_tensor"):  # ZeRO-2 bucket reduce-scatter
        engine.optimizer.average_tensor = timer.timed("grad_sync", engine.optimizer.average_tensor)


def validation_metrics(engine, session: Session, tokenizer, config: Config) -> dict:
    """Validation metrics over every rank's rows (the same dict on every rank)."""
    batches = token_batches(session.validation_batches(), tokenizer, config, seed=config.train.seed)
    inputs = (to_device(batch, tokenizer, engine.device) for batch in batches)
    return evaluate(engine, inputs, config, session.world_size)


def measure_stsb(engine, probe: StsbProbe | None, config: Config) -> float:
    """STS-B Spearman of the encoder as it is now (collective); bf16/fp16 autocast when training in it."""
    was_training = engine.module.training
    engine.module.eval()
    with autocast(config.train.precision, engine.device.type):
        value = probe.spearman(engine.module.pooled, engine.device)
    engine.module.train(was_training)
    return value


def metric_summary(name: str, metrics: dict, config: Config, before: dict) -> str:
    """One task's validation figures for the progress line, by its type (similarity: with the change from the
    starting encoder)."""
    kind = config.tasks[name].type
    if kind == "similarity":
        figures = f"spearman={metrics['spearman']:.4f} pearson={metrics['pearson']:.4f}"
        if name in before:
            figures += f" ({metrics['spearman'] - before[name]['spearman']:+.4f} from the start)"
    elif kind == "multilabel":
        figures = f"micro_f1={metrics['micro_f1']:.4f} macro_f1={metrics['macro_f1']:.4f}"
    else:
        figures = f"acc={metrics['accuracy']:.4f} f1={metrics['macro_f1']:.4f}"
    return f"{name}: {figures} loss={metrics['loss']:.4f}"


def stsb_record(spearman: float, before: float) -> dict:
    return {"spearman": spearman, "before": before, "drop": before - spearman}


def retention_summary(final: dict, best: dict | None, budget: float | None) -> dict:
    """STS-B of the final and best exports against the starting encoder, and whether each is within the budget."""
    summary = {"stsb_before": final["before"], "final": final, "best": best, "max_stsb_drop": budget}
    if budget is not None:
        summary["final_within_budget"] = final["drop"] <= budget
        summary["best_within_budget"] = best is not None and best["drop"] <= budget
    return summary


class Recipe:
    """One worker's training run. `train()` = `setup()`, then steps until `train.max_steps`, then `finish()`."""

    def __init__(self, config: Config, session: Session):
        assert session.world_size == config.scaling.num_workers, "the driver sets scaling.num_workers to the world size"
        assert config.train.max_steps is not None, "the driver resolves train.epochs into train.max_steps"
        self.config, self.session = config, session

    def setup(self) -> None:
        """Model and strategy, tokenizer, optimizer and schedule in a DeepSpeed engine, the retention term, the STS-B
        probe (measured on the starting encoder), the checkpoint to resume from, the batch stream and the meters."""
        config, session = self.config, self.session
        deepspeed = import_deepspeed(config.scaling.use_gpu)
        set_seed(config.train.seed)  # python, numpy and torch
        model = apply_strategy(build_model(config), config.finetune)
        if config.train.fast_dropout and not config.scaling.use_gpu and not config.train.compile:
            use_fast_dropout(model)  # same keep rate and scaling, a cheaper mask (mtl.model.fast_dropout)
        self.tokenizer = load_tokenizer(config.model, starting_encoder_dir(config.model))
        if config.train.length_chunks > 1:
            if self.tokenizer.padding_side != "right":
                raise ConfigError(
                    f"train.length_chunks={config.train.length_chunks} cuts padded batches at their longest text, "
                    f"which needs right padding; this tokenizer pads on the {self.tokenizer.padding_side}: set "
                    "train.length_chunks=1"
                )
            model.length_chunks = (config.train.length_chunks, config.train.chunk_cost_tokens)
        if session.rank == 0:
            print(format_report(parameter_report(model)), flush=True)
        l2sp = L2SP(model) if config.retain.method == "l2sp" else None  # the weights before any step
        if config.train.compile:
            model.encoder.compile(dynamic=True)  # in place: parameter names (checkpoints, export) stay as they are
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, config.train.max_steps)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(config)
        )
        self.retention = l2sp or self._distill_or_none()
        self.probe, self.stsb_before = self._stsb_probe()
        self.similarity_before = self._similarity_before()
        self.step, self.state = resume(self.engine, session)
        self.row_log = RowLog(session.run_dir, session.rank) if config.train.log_rows else None
        if self.row_log:
            self.row_log.cut_back(self.step)
        self.tracker = open_tracker(config, session.run_dir, session.rank)
        exact_gpu_times = self.engine.device.type == "cuda" and config.train.profile_phases
        self.timer = PhaseTimer(torch.cuda.synchronize if exact_gpu_times else None)
        skip_lone_reduction(self.engine, session.world_size, config.deepspeed.zero_stage)
        time_grad_sync(self.engine, self.timer)
        seed = config.train.seed + session.rank
        self.batches = token_batches(session.train_batches(), self.tokenizer, config, seed, self.timer)
        self.loss_names = config.task_names + (["retain"] if config.retain.method != "none" else [])
        self.running: dict[str, list[float]] = {name: [] for name in self.loss_names}
        self.metrics: dict = {}
        self.stsb: dict | None = None
        self.throughput = Throughput()
        self.started, self.start_step = time.perf_counter(), self.step

    def _distill_or_none(self):
        if self.config.retain.method != "distill":
            return NoRetention()
        if self.session.teacher_vectors:  # cached vectors stream with the rows (mtl.train.teacher_embeddings)
            return Distill(None)
        teacher = Teacher(build_model(self.config), self.config.train.precision, self.engine.device)
        if self.session.rank == 0:
            print("distill: teacher vectors computed online in every step", flush=True)
        return Distill(teacher)

    def _stsb_probe(self) -> tuple[StsbProbe | None, float | None]:
        config, session = self.config, self.session
        if not config.data.stsb:
            return None, None
        ranks = 1 if config.deepspeed.zero_stage == 3 else session.world_size
        probe = StsbProbe(config.data.stsb, self.tokenizer, config.model.max_seq_length, session.rank % ranks, ranks)
        before = measure_stsb(self.engine, probe, config)  # the starting encoder, before any checkpoint is loaded
        if session.rank == 0:
            print(f"STS-B Spearman of the starting encoder ({config.data.stsb}): {before:.4f}", flush=True)
        return probe, before

    def _similarity_before(self) -> dict:
        """Each similarity task's validation figures on the starting encoder (before any step or checkpoint): what
        training it is measured against."""
        config = self.config
        if not any(task.type == "similarity" for task in config.tasks.values()):
            return {}
        metrics = validation_metrics(self.engine, self.session, self.tokenizer, config)
        before = {
            name: {key: metrics[name][key] for key in ("spearman", "pearson", "count")}
            for name, task in config.tasks.items()
            if task.type == "similarity" and metrics[name]["count"]
        }
        if self.session.rank == 0 and before:
            print(f"similarity on validation, starting encoder: {json.dumps(before)}", flush=True)
        return before

    def train(self) -> dict:
        """The loop: one optimizer step at a time; validation and checkpoints when due; then `finish`."""
        self.setup()
        total_steps, train = self.config.train.max_steps, self.config.train
        self.engine.train()
        while self.step < total_steps:
            self.train_step()
            self.log_progress()
            if self.step % train.eval_every == 0 or self.step == total_steps:
                self.validate()
            if self.step % train.checkpoint_every == 0 or self.step == total_steps:
                save_checkpoint(self.engine, self.session, self.step, self.metrics, self.state)
        return self.finish()

    def train_step(self) -> None:
        """`train.grad_accum_steps` micro batches: forward (task losses + retention term), backward, optimizer step;
        their rows are marked trained (stream position, row log) and the step's time and tokens metered."""
        config, session, engine, timer = self.config, self.session, self.engine, self.timer
        timer.take()  # time between steps (validation, checkpoints) is not a step's
        step_started, step_tokens, step_real_tokens = time.perf_counter(), 0, 0
        loss_weights = {name: task.loss_weight for name, task in config.tasks.items()}
        for _ in range(config.train.grad_accum_steps):
            with timer.phase("data_wait"):
                batch = next(self.batches)
            with timer.phase("tokenize"):
                inputs = to_device(batch, self.tokenizer, engine.device)
            step_real_tokens += int(inputs["attention_mask"].sum()) * session.world_size
            with timer.phase("forward"):
                outputs, pooled = engine(
                    inputs["input_ids"], inputs["attention_mask"], inputs["pair_rows"], return_pooled=True
                )
                step_tokens += engine.module.last_padded_tokens * session.world_size  # as passed: length chunks
                loss, per_task = multitask_loss(
                    outputs, inputs["task_ids"], inputs["labels"], loss_weights, reduction=config.train.task_loss,
                    scores=inputs["scores"], tasks=config.tasks,
                )  # fmt: skip
                retain = self.retention.loss(pooled, inputs, engine.module, timer)
                if retain is not None:
                    loss = loss + config.retain.weight * retain
                    self.running["retain"].append(float(retain.detach()))
            with timer.phase("backward"):
                engine.backward(loss)
            with timer.phase("optimizer"):
                engine.step()
            session.position.mark(batch)
            if self.row_log:
                self.row_log.add(batch)
            for task_id, name in enumerate(config.task_names):
                if (inputs["task_ids"] == task_id).any():
                    self.running[name].append(float(per_task[name]))
        self.step += 1
        if self.row_log:
            self.row_log.write(self.step)
        seconds = time.perf_counter() - step_started
        self.throughput.step(seconds, config.rows_per_step, step_tokens, step_real_tokens, timer.take())

    def log_progress(self) -> None:
        """Every `train.log_every` steps, on rank 0: the progress line, history.jsonl and the tracker."""
        config, step, total_steps = self.config, self.step, self.config.train.max_steps
        if self.session.rank != 0 or not (step % config.train.log_every == 0 or step == total_steps):
            return
        means = {name: float(np.mean(values)) if values else float("nan") for name, values in self.running.items()}
        rows = (step - self.start_step) * config.rows_per_step
        print(progress_line(step, total_steps, means, self.optimizer.param_groups, rows, self.started), flush=True)
        append_history(self.session.run_dir, {"kind": "train", "step": step, "time": time.time(), "loss": means})
        # A label's `/no_decay` group has its LR (one schedule factor for all): one scalar per label, and no key is
        # another's prefix (MLflow's file store keeps each metric as a file at its key's path).
        groups = self.optimizer.param_groups
        learning_rates = {f"lr/{group['name'].removesuffix('/no_decay')}": group["lr"] for group in groups}
        self.tracker.log({**flatten(means, "train/loss/"), **learning_rates}, step)
        self.running = {name: [] for name in self.loss_names}

    def validate(self) -> None:
        """Validation metrics and STS-B (collective), reported on rank 0; the best so far within the STS-B budget is
        exported to `<run_dir>/best` (the same decision on every rank: rows and cosines are gathered)."""
        config, session, step = self.config, self.session, self.step
        self.metrics = metrics = validation_metrics(self.engine, session, self.tokenizer, config)
        stsb = self.stsb = self._stsb_now()
        budget = config.retain.max_stsb_drop
        within_budget = stsb is None or budget is None or stsb["drop"] <= budget
        if session.rank == 0:
            summary = " ".join(metric_summary(name, m, config, self.similarity_before) for name, m in metrics.items())
            if stsb:
                summary += f" stsb: {stsb['spearman']:.4f} ({-stsb['drop']:+.4f})"
            print(f"validation step {step}: {summary}", flush=True)
            record = {"kind": "validation", "step": step, "metrics": metrics, **({"stsb": stsb} if stsb else {})}
            append_history(session.run_dir, record)
            self.tracker.log(flatten({**metrics, **({"stsb": stsb} if stsb else {})}, "validation/"), step)
        has_rows = any(task["count"] for task in metrics.values())
        score = selection_score(metrics, config)
        if has_rows and within_budget and score > self.state["best"]:
            self.state.update(best=score, best_stsb=stsb)
            path = export_snapshot(self.engine, session, config, self.tokenizer, "best", metrics, step)
            if path:
                print(f"best validation so far (selection score {score:.4f}): exported {path}", flush=True)

    def _stsb_now(self) -> dict | None:
        if self.probe is None:
            return None
        return stsb_record(measure_stsb(self.engine, self.probe, self.config), self.stsb_before)

    def finish(self) -> dict:
        """Final metrics, retention and throughput into the result and history; the export (rank 0's directory)."""
        config, session, step = self.config, self.session, self.step
        if not self.metrics:  # resumed at the last step: nothing ran, but the result still carries metrics
            self.metrics = validation_metrics(self.engine, session, self.tokenizer, config)
        result: dict = {
            "metrics": self.metrics, "steps": step, "best_score": self.state["best"],
            "throughput": self.throughput.as_dict(),
        }  # fmt: skip
        self.tracker.log(flatten(result["throughput"], "throughput/"), step)
        result.update(self.tracker.close())  # rank 0 with MLflow: its `mlflow_run_id`
        if self.similarity_before:
            result["similarity_before"] = self.similarity_before
        if self.probe:
            final = self._stsb_now() if self.stsb is None else self.stsb
            result["retention"] = retention_summary(final, self.state["best_stsb"], config.retain.max_stsb_drop)
        if session.rank == 0 and result["throughput"]:
            append_history(session.run_dir, {"kind": "throughput", "step": step, **result["throughput"]})
        if session.rank == 0 and "retention" in result:
            append_history(session.run_dir, {"kind": "retention", "step": step, **result["retention"]})
        export_dir = export_snapshot(self.engine, session, config, self.tokenizer, "export", self.metrics, step)
        if export_dir is not None:
            result["export_dir"] = export_dir
            if (session.run_dir / "best").is_dir():
                result["best_dir"] = str(session.run_dir / "best")
        return result


def run_training(config: Config, session: Session) -> dict:
    """The recipe. Returns the final validation metrics (and the export directory on rank 0)."""
    return Recipe(config, session).train()
