"""What a training job returns, built one way for both sessions from what the recipe returned (rank 0's result):
WiSE-FT's choice when configured, the run report (logged to MLflow too when tracked there), and the summary printed
as the job's last line."""

from __future__ import annotations

from pathlib import Path

from mtl.config import Config
from mtl.data.contract import RowReport
from mtl.train.report import write_report
from mtl.train.tracking import log_report
from mtl.train.wise_ft import choose_alpha


def finish_run(run_dir: Path, config: Config, trained: dict, rows: RowReport, checkpoint: str | None = None) -> dict:
    """`trained` is `run_training`'s result on rank 0 (metrics, steps, best score, throughput, retention, export and
    best directories); the summary adds the run directory, the rows read, the report, targets and the checkpoint."""
    result = {"run_dir": str(run_dir), "rows": rows.as_dict(), "best_dir": None, "checkpoint": checkpoint, **trained}
    if config.retain.wise_alphas:
        result["wise_ft"] = choose_alpha(Path(run_dir), config)
    report = write_report(Path(run_dir), config, Path(result["export_dir"]))
    result["report"] = report
    if "targets" in report:
        result["targets"] = report["targets"]
    if "index_compatibility" in report:  # whether vectors stored with the starting encoder need re-embedding
        result["index_compatibility"] = report["index_compatibility"]
    if result.get("mlflow_run_id"):  # rank 0's MLflow run gets the report and the export path, then ends
        log_report(config, result["mlflow_run_id"], Path(run_dir) / "report", result)
    return result
