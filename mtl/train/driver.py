"""The training driver: pre-flight the data, build Ray Datasets, run a `TorchTrainer`, return the result."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from mtl.config import Config, ConfigError
from mtl.data.ray_datasets import read_rows, training_dataset
from mtl.data.stream_position import RESUME_FILE
from mtl.train.checkpoint_integrity import KEY_ID_ENV, TRUST_ENV, checkpoint_key, key_id
from mtl.train.preflight import TrainingPlan, check_rows_per_worker, plan_training
from mtl.train.ray_session import REFUSED_FILE, raise_if_refused, train_worker
from mtl.train.run_record import check_or_record
from mtl.train.run_result import finish_run
from mtl.train.teacher_embeddings import teacher_embeddings
from mtl.train.worker_allocator import worker_runtime_env


def storage_visibility(root: str) -> dict[str, bool]:
    """Node IP -> whether a marker this driver writes under `root` is visible there (a zero-CPU task per alive node)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    Path(root).mkdir(parents=True, exist_ok=True)
    marker = Path(root) / f".storage-probe-{uuid.uuid4().hex}"
    marker.write_text(marker.name)

    @ray.remote(num_cpus=0)
    def sees(path: str, expected: str) -> bool:
        return Path(path).is_file() and Path(path).read_text() == expected

    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        answers = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                str(marker), marker.name
            )
            for node in nodes
        ]
        seen = ray.get(answers, timeout=120)
        return {node["NodeManagerAddress"]: visible for node, visible in zip(nodes, seen, strict=True)}
    finally:
        marker.unlink(missing_ok=True)


def check_storage(root: str, visibility=storage_visibility) -> str:
    """Refuse, before any worker starts, a storage root that not every node of the cluster can read and write: on
    more than one node a local path is probed from every node; one that some node does not see is refused with the
    nodes named. (Object-store URIs were refused by the pre-flight, `mtl.train.preflight.check_storage_path`.)"""
    if ray.is_initialized() and len([node for node in ray.nodes() if node["Alive"]]) > 1:
        blind = sorted(node for node, seen in visibility(root).items() if not seen)
        if blind:
            raise ConfigError(
                f"run.storage_path ({root}) is not visible from node(s) {blind}: on more than one node the run "
                "directory must be shared storage every node mounts at the same path (e.g. /mnt/shared)"
            )
    return root


def check_cpu_budget(config: Config) -> None:
    """Refuse a layout where the training workers leave Ray Data no CPU (it would hang, silently)."""
    total = float(ray.cluster_resources().get("CPU", 0))
    held = config.scaling.num_workers * config.scaling.cpus_per_worker
    if total - held < config.scaling.data_cpus:
        raise ConfigError(
            f"scaling: {config.scaling.num_workers} workers x scaling.cpus_per_worker={config.scaling.cpus_per_worker} "
            f"hold {held} of the cluster's {total:g} CPUs, leaving less than scaling.data_cpus="
            f"{config.scaling.data_cpus} for Ray Data; lower scaling.cpus_per_worker or scaling.num_workers"
        )


# Ray Train 2.60 re-routes a worker's print() to its logger *and* tees it to stdout when stdout is
# redirected (always, in a Ray worker): every progress line reached the driver twice. Ray Train
# propagates this variable from the driver to the workers; history.jsonl and TensorBoard keep the record.
PRINT_PATCH_ENV = "RAY_TRAIN_ENABLE_PRINT_PATCH"


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment every worker sets for itself on start (unless already set there): offline hub, the DeepSpeed op
    cache, the CPU accelerator. Passed as trainer config, not as a runtime env, so it never clashes with a job's.

    Not `MTL_CHECKPOINT_KEY`: Ray Train records this config in its run state (dashboard, state API). Workers read the
    key from their node's environment and check it against the driver's key id (mtl.train.checkpoint_integrity)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR", TRUST_ENV)
    env = {name: os.environ[name] for name in names if name in os.environ}
    key = checkpoint_key()
    if key is not None:
        env[KEY_ID_ENV] = key_id(key)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def train_on_ray(config: Config, plan: TrainingPlan | None = None) -> dict:
    """Train on the current Ray cluster. `plan` is `plan_training(config)`'s result (jobs.train runs it before Ray
    starts); without one the pre-flight runs here."""
    os.environ.setdefault(PRINT_PATCH_ENV, "0")
    plan = plan or plan_training(config)
    root = check_storage(str(plan.run_dir.parent))
    datasets, config, teacher_vectors = training_datasets(plan)
    check_cpu_budget(config)
    run_dir = str(plan.run_dir)
    check_or_record(run_dir, config, plan.train_files)
    # Rank 0 puts what `run_training` returned here: Ray Train 2.60 drops the train function's return value, and its
    # `Result.metrics` holds only what was reported with the last checkpoint. Zero CPUs: it must not take Ray Data's.
    results = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": run_dir,
            "has_validation": "validation" in datasets,
            "teacher_vectors": teacher_vectors,
            "results": results,
            "env": worker_env(config.scaling.use_gpu),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": config.scaling.cpus_per_worker},
            placement_strategy=config.scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=config.run.name,
            storage_path=root,
            failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.keep_checkpoints),
            worker_runtime_env=worker_runtime_env(config.scaling),  # an allocator is chosen at process start
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )
    Path(run_dir, REFUSED_FILE).unlink(missing_ok=True)
    try:
        result = trainer.fit()
    except Exception:
        raise_if_refused(run_dir)  # a worker's config/data error, as the user error it is
        raise
    raise_if_refused(run_dir)  # the retry's workers stopped at once: training did not happen
    try:
        trained = results.get(timeout=60)
    except Empty:
        raise RuntimeError("training finished but rank 0 returned no result") from None
    checkpoint = result.checkpoint.path if result.checkpoint else None
    return finish_run(plan.run_dir, config, trained, plan.train_report, checkpoint)


def training_datasets(plan: TrainingPlan) -> tuple[dict, Config, bool]:
    """The Ray Datasets the workers read (train, the rest of a resumed epoch, validation), the config with
    `train.epochs` resolved for the epoch's rows, and whether training rows carry cached teacher vectors."""
    config, run_dir, counts = plan.config, plan.run_dir, plan.counts
    print(f"data.train: {len(plan.train_files)} files, {json.dumps(plan.train_report.as_dict())}, rows per task "
          f"{counts}")  # fmt: skip
    datasets = {}
    if plan.validation_files:
        print(f"data.validation: {len(plan.validation_files)} files, {json.dumps(plan.validation_report.as_dict())}")
        datasets["validation"] = read_rows(plan.validation_files, config, split="validation")
    teacher_files = None
    if config.retain.method == "distill" and config.retain.teacher == "cached":
        teacher_files, _ = teacher_embeddings(plan.train_files, config, sum(counts.values()))
    resume_file = str(run_dir / RESUME_FILE)
    datasets["train"], rest, epoch_rows = training_dataset(
        plan.train_files, config, counts, plan.weight_sums, resume_file, teacher_files
    )
    # Only when this job can resume mid-epoch (a checkpoint is there, or Ray Train may restart workers): Ray Train
    # starts a split coordinator actor for every dataset it is given.
    if config.run.max_failures != 0 or any(run_dir.glob("checkpoint_*")):
        datasets["train_rest"] = rest
    check_rows_per_worker(epoch_rows, config)
    return datasets, config.with_steps_for(epoch_rows), teacher_files is not None
