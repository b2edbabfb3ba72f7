"""Evaluate an export on labelled rows and on STS-B: what `jobs.evaluate` prints and the demo reports."""

from __future__ import annotations

from pathlib import Path

from mtl.config import Config, validate_config
from mtl.data.contract import read_validated
from mtl.evaluation.classification import task_report
from mtl.evaluation.plots import plot_confusion
from mtl.evaluation.stsb import stsb_spearman
from mtl.export_format import manifest_path
from mtl.inference.exported_model import ExportedModel
from mtl.model.pooling import POOLING_MODES

# What of a manifest's task entry is task config (the rest, thresholds and validation figures, is the export's own).
TASK_KEYS = ("type", "labels", "score_range")
COLUMN_KEYS = ("text_column", "task_column", "label_column", "text_pair_column", "score_column", "labels_column")


def rows_config(model: ExportedModel, source: str) -> Config:
    """The config that reads rows for this export: its tasks and column names (the rest may be older; column keys
    an older export lacks keep their defaults)."""
    data = model.manifest["config"]["data"]
    columns = {key: data[key] for key in COLUMN_KEYS if key in data}
    tasks = {
        name: {key: entry[key] for key in TASK_KEYS if key in entry} for name, entry in model.manifest["tasks"].items()
    }
    # A similarity task needs an encoder that trains; how this one was trained does not matter for reading rows.
    return validate_config({"tasks": tasks, "data": columns, "finetune": {"strategy": "full"}}, source=source)


def evaluate_export(
    model_dir: str,
    data: list[str],
    stsb: str | None = None,
    compare_pooling: bool = False,
    plots_dir: str | None = None,
) -> dict:
    """Per-task metrics on `data` (`task_report`; confusion PNGs for the classification types); STS-B Spearman per
    pooling on `stsb`."""
    model = ExportedModel.load(model_dir)
    result: dict = {"model": model_dir, "pooling": model.pooling, "labels": model.labels}
    if data:
        config = rows_config(model, source=str(manifest_path(model_dir)))
        rows, row_report = read_validated(data, config, "--data")
        result["rows"] = row_report.as_dict()
        result["tasks"] = task_report(model, rows, config.task_names)
        plots = Path(plots_dir) if plots_dir else Path(model_dir).resolve().parent / "evaluation" / "confusion"
        result["figures"] = [
            str(plot_confusion(m["confusion"], model.labels[task], f"{task} confusion", plots / f"{task}.png"))
            for task, m in result["tasks"].items()
            if "confusion" in m
        ]
    if stsb:
        modes = POOLING_MODES if compare_pooling else (model.pooling,)
        result["stsb_spearman"] = {mode: stsb_spearman(model, stsb, pooling=mode) for mode in modes}
    return result
