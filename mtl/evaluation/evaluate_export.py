"""Evaluate an export on labelled rows and on STS-B: what `jobs.evaluate` prints and the demo reports."""

from __future__ import annotations

from pathlib import Path

from mtl.config import Config, validate_config
from mtl.data.contract import read_validated
from mtl.evaluation.classification import classification_report
from mtl.evaluation.plots import plot_confusion
from mtl.evaluation.stsb import stsb_spearman
from mtl.export_format import manifest_path
from mtl.inference.exported_model import ExportedModel
from mtl.model.pooling import POOLING_MODES


def rows_config(model: ExportedModel, source: str) -> Config:
    """The config that reads rows for this export: its tasks and column names (the rest may be older)."""
    data = model.manifest["config"]["data"]
    columns = {key: data[key] for key in ("text_column", "task_column", "label_column")}
    return validate_config({"tasks": model.manifest["tasks"], "data": columns}, source=source)


def evaluate_export(
    model_dir: str,
    data: list[str],
    stsb: str | None = None,
    compare_pooling: bool = False,
    plots_dir: str | None = None,
) -> dict:
    """Per-task accuracy, macro-F1 and confusion (with PNGs) on `data`; STS-B Spearman per pooling on `stsb`."""
    model = ExportedModel.load(model_dir)
    result: dict = {"model": model_dir, "pooling": model.pooling, "labels": model.labels}
    if data:
        config = rows_config(model, source=str(manifest_path(model_dir)))
        rows, row_report = read_validated(data, config, "--data")
        result["rows"] = row_report.as_dict()
        result["tasks"] = classification_report(model, rows, config.task_names)
        plots = Path(plots_dir) if plots_dir else Path(model_dir).resolve().parent / "evaluation" / "confusion"
        result["figures"] = [
            str(plot_confusion(m["confusion"], model.labels[task], f"{task} confusion", plots / f"{task}.png"))
            for task, m in result["tasks"].items()
        ]
    if stsb:
        modes = POOLING_MODES if compare_pooling else (model.pooling,)
        result["stsb_spearman"] = {mode: stsb_spearman(model, stsb, pooling=mode) for mode in modes}
    return result
