"""Everything a training run can check before Ray starts: storage and run directory, data, backbone.

`plan_training(config)` runs on the driver with no Ray session: a glob that matches nothing, a missing column, a bad
row, a task without rows, a backbone that is not there or lacks the layers or modules the config names, all fail
here in seconds, naming the key, file, row or column. What needs the cluster (CPU budget, storage every node sees)
is checked by the driver once Ray is up (`mtl.train.driver`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mtl.config import Config, ConfigError
from mtl.data.contract import (
    DataError,
    RowReport,
    check_schema,
    normalise,
    read_schema,
    sources_by_file,
    split_files,
)
from mtl.export_format import MANIFEST_FILE, is_export
from mtl.train.tracking import check_tracking
from mtl.train.worker_allocator import worker_runtime_env

# torch, transformers and Ray are imported where first needed, after the cheap checks: a glob typo or a missing
# column is refused before any of them loads (a few seconds each on a small machine).


@dataclass
class TrainingPlan:
    """What the pre-flight found, handed to the driver: the config with absolute paths, the run directory, the
    data files (absolute: workers run elsewhere, and Ray Data's row ids hash the path as written), row reports,
    clean rows and draw-weight sums per task."""

    config: Config
    run_dir: Path
    train_files: list[str]
    train_report: RowReport
    counts: dict[str, int]
    weight_sums: dict[str, float]
    validation_files: list[str]
    validation_report: RowReport | None


def check_storage_path(config: Config) -> Path:
    """The run directory, `<storage root>/<run.name>`; object-store URIs are refused (docs/cluster.md, "Storage")."""
    path = config.run.storage_path
    if "://" in path:
        raise ConfigError(
            f"run.storage_path={path!r}: object-store URIs are not supported (run.json, teacher cache, history, "
            "reports and exports are written with local file operations); mount shared storage on every node "
            "(cluster/kuberay/storage.yaml at /mnt/shared, EFS in cluster/aws.yaml) and use its path"
        )
    return config.run.run_dir()


def existing_file(path: str, key: str) -> Path:
    if not Path(path).is_file():
        raise ConfigError(f"{key}={path!r}: no such file (relative paths start at {Path.cwd()})")
    return Path(path)


def resolved_model_paths(config: Config) -> Config:
    """`model.init_from` and a local `model.backbone` as absolute paths: workers run in another directory (or node)."""
    updates = {}
    if config.model.init_from:
        init_from = Path(config.model.init_from).expanduser()
        if not is_export(init_from):
            raise ConfigError(
                f"model.init_from={config.model.init_from!r}: not an export directory (no {MANIFEST_FILE}; "
                f"relative paths start at {Path.cwd()})"
            )
        updates["init_from"] = str(init_from.resolve())
    backbone = Path(config.model.backbone).expanduser()
    if backbone.is_dir():
        updates["backbone"] = str(backbone.resolve())
    return config.model_copy(update={"model": config.model.model_copy(update=updates)}) if updates else config


def check_backbone(config: Config) -> None:
    """The starting encoder exists offline and has what the fine-tuning settings name: enough layers for
    `partial`, every LoRA target module. Built on the meta device from its config.json: no weights are read."""
    from transformers import AutoConfig, AutoModel

    from mtl.model.backbone import BackboneError, resolve_backbone

    directory = Path(config.model.init_from) if config.model.init_from else resolve_backbone(config.model.backbone)
    key = "model.init_from" if config.model.init_from else "model.backbone"
    trust = config.model.trust_remote_code
    try:
        encoder_config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=trust)
    except (OSError, ValueError) as error:
        raise BackboneError(f"{key}: {directory} has no usable config.json ({error})") from None
    finetune = config.finetune
    if finetune.strategy == "partial":
        layers = int(getattr(encoder_config, "num_hidden_layers", 0))
        if finetune.unfreeze_last_n_layers > layers:
            raise ConfigError(
                f"finetune.unfreeze_last_n_layers={finetune.unfreeze_last_n_layers}: the backbone ({directory}) has "
                f"{layers} layers; lower it, or use finetune.strategy=full to train all of them"
            )
    if finetune.strategy == "lora":
        import torch

        with torch.device("meta"):
            encoder = AutoModel.from_config(encoder_config, trust_remote_code=trust)
        names = [name for name, _ in encoder.named_modules() if name]
        missing = [
            target
            for target in finetune.lora.target_modules
            if not any(name == target or name.endswith(f".{target}") for name in names)
        ]
        if missing:
            leaves = sorted({name.rsplit(".", 1)[-1] for name in names if not name.rsplit(".", 1)[-1].isdigit()})
            raise ConfigError(
                f"finetune.lora.target_modules: {missing} not in the backbone ({directory}); its module names "
                f"are {leaves}"
            )


def check_schemas(files: list[str], config: Config) -> None:
    """Every file's contract columns and types from its footer, before any row is read (a `data.sources` file
    under its contract names)."""
    sources = sources_by_file(config) if config.data.sources else {}
    for path in files:
        schema, source = read_schema(path, "data"), sources.get(str(Path(path).resolve()))
        if source is not None:
            index = config.data.sources.index(source)
            for name, column in source.columns.items():
                if column not in schema.names:
                    raise DataError(
                        f"data.sources[{index}].columns.{name}: {path} has no column {column!r} (columns are "
                        f"{schema.names})"
                    )
            schema = normalise(schema.empty_table(), source, config.data).schema
        check_schema(schema, path, config.data, task_given=source is not None)


def check_rows_per_worker(epoch_rows: int, config: Config) -> None:
    """Refuse data too small for one micro batch per worker: no step could ever run (it would wait forever)."""
    per_worker = epoch_rows // config.scaling.num_workers
    if per_worker < config.train.micro_batch_size:
        raise ConfigError(
            f"data.train: an epoch of {epoch_rows} rows gives each of scaling.num_workers={config.scaling.num_workers} "
            f"workers {per_worker} rows, fewer than train.micro_batch_size={config.train.micro_batch_size}; "
            "lower either or add rows"
        )


def check_tasks_have_rows(counts: dict[str, int], config: Config, key: str = "data.train") -> None:
    """A task with no clean rows would export an untrained head: refused unless frozen or `may_be_empty`."""
    empty = [
        task
        for task, rows in counts.items()
        if rows == 0 and task not in config.finetune.freeze_heads and not config.tasks[task].may_be_empty
    ]
    if empty:
        raise DataError(
            f"{key}: no rows for task(s) {empty} (rows per task {counts}); check the task column's names, or set "
            f"tasks.{empty[0]}.may_be_empty=true to train without them"
        )


def plan_training(config: Config) -> TrainingPlan:
    """All driver-side checks, cheapest first; returns what the driver needs to build the datasets."""
    run_dir = check_storage_path(config)
    config = resolved_model_paths(config)
    config = check_tracking(config)  # mlflow installed and its URI known, before Ray; workers get the resolved URI
    train_files = split_files(config, "train")
    validation_files = split_files(config, "validation")
    check_schemas(train_files + validation_files, config)
    if config.data.stsb:
        existing_file(config.data.stsb, "data.stsb")
    check_backbone(config)
    worker_runtime_env(config.scaling)  # scaling.allocator=jemalloc where this Ray ships none: refused before Ray
    from mtl.data.ray_datasets import validate_files

    train_files, train_report, counts, weight_sums = validate_files(train_files, config, "data.train")
    check_tasks_have_rows(counts, config)
    validation_report = None
    if validation_files:
        validation_files, validation_report, *_ = validate_files(validation_files, config, "data.validation")
    train_files = [str(Path(f).resolve()) for f in train_files]
    validation_files = [str(Path(f).resolve()) for f in validation_files]
    sourced = set(sources_by_file(config))
    resolved = {  # the config's own lists, absolute: data.train/validation without the sources' files
        "train": [f for f in train_files if f not in sourced],
        "validation": [f for f in validation_files if f not in sourced],
        "sources": [s.model_copy(update={"path": os.path.abspath(s.path)}) for s in config.data.sources],
    }
    if config.data.stsb:
        resolved["stsb"] = str(Path(config.data.stsb).resolve())
    config = config.model_copy(update={"data": config.data.model_copy(update=resolved)})
    return TrainingPlan(
        config, run_dir, train_files, train_report, counts, weight_sums, validation_files, validation_report
    )
