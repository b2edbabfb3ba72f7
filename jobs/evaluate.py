"""Evaluate an export: per-task accuracy, macro-F1, confusion; STS-B Spearman (per pooling mode).

    python -m jobs.evaluate --model runs/demo/poc/export --data runs/demo/data/validation.parquet \
        [--stsb ../shared/data/stsb/train.parquet] [--compare-pooling]

Through Ray: ray job submit --working-dir . -- python -m jobs.evaluate --model ... --data ...
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mtl.config import validate_config
from mtl.data.contract import read_validated
from mtl.evaluation.classification import classification_report
from mtl.evaluation.plots import plot_confusion
from mtl.evaluation.stsb import stsb_spearman
from mtl.inference.exported_model import ExportedModel
from mtl.model.pooling import POOLING_MODES


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--data", action="append", default=[], help="Parquet file/glob in the data contract")
    parser.add_argument("--stsb", help="STS-B Parquet (sentence1, sentence2, score)")
    parser.add_argument("--compare-pooling", action="store_true", help="STS-B Spearman for cls, mean and max")
    parser.add_argument("--plots", help="where the confusion-matrix PNGs go (default: <export>/../evaluation)")
    args = parser.parse_args(argv)
    model = ExportedModel.load(args.model)
    result: dict = {"model": args.model, "pooling": model.pooling}
    if args.data:
        # Only the tasks and column names matter for reading rows; the rest of the training config may be older.
        columns = {key: model.manifest["config"]["data"][key] for key in ("text_column", "task_column", "label_column")}
        config = validate_config({"tasks": model.manifest["tasks"], "data": columns}, source=f"{args.model}/mtl.json")
        rows, row_report = read_validated(args.data, config, "--data")
        result["rows"] = row_report.as_dict()
        result["tasks"] = classification_report(model, rows, config.task_names)
        for task, metrics in result["tasks"].items():
            print(f"{task}: accuracy={metrics['accuracy']:.4f} macro_f1={metrics['macro_f1']:.4f} n={metrics['count']}")
            print(f"  confusion (rows = true {model.labels[task]}): {metrics['confusion']}")
        plots = Path(args.plots) if args.plots else Path(args.model).resolve().parent / "evaluation" / "confusion"
        result["figures"] = [
            str(plot_confusion(m["confusion"], model.labels[task], f"{task} confusion", plots / f"{task}.png"))
            for task, m in result["tasks"].items()
        ]
    if args.stsb:
        modes = POOLING_MODES if args.compare_pooling else (model.pooling,)
        result["stsb_spearman"] = {mode: stsb_spearman(model, args.stsb, pooling=mode) for mode in modes}
        for mode, value in result["stsb_spearman"].items():
            print(f"STS-B Spearman ({mode} pooling): {value:.4f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
