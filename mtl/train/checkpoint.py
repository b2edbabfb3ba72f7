"""Checkpoints and exports from inside training: every rank's DeepSpeed shard with its stream position and manifest,
resume (verified before anything is unpickled), and the consolidated fp32 model exported on rank 0."""

from __future__ import annotations

import tempfile

import torch.distributed as dist

from mtl.config import Config
from mtl.model.multitask import MultiTaskModel, build_model
from mtl.model.strategies import apply_strategy
from mtl.train.checkpoint_integrity import checkpoint_key, verify_checkpoint, write_manifest
from mtl.train.progress import flatten
from mtl.train.session import Session


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
