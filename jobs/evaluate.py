"""Evaluate an export: each task's figures by type (accuracy, macro-F1, confusion; Spearman; micro-F1); STS-B
Spearman (per pooling mode).

    python -m jobs.evaluate --model runs/demo/poc/export --data runs/demo/data/validation.parquet \
        [--stsb ../shared/data/stsb/train.parquet] [--compare-pooling]

Through Ray: ray job submit --working-dir . -- python -m jobs.evaluate --model ... --data ...
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

from jobs.cli import run_command
from mtl.evaluation.evaluate_export import evaluate_export


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--data", action="append", default=[], help="Parquet file/glob in the data contract")
    parser.add_argument("--stsb", help="STS-B Parquet (sentence1, sentence2, score)")
    parser.add_argument("--compare-pooling", action="store_true", help="STS-B Spearman for cls, mean and max")
    parser.add_argument("--plots", help="where the confusion-matrix PNGs go (default: <export>/../evaluation)")
    args = parser.parse_args(argv)
    result = evaluate_export(args.model, args.data, args.stsb, args.compare_pooling, args.plots)
    for task, metrics in result.get("tasks", {}).items():
        figures = " ".join(f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float))
        print(f"{task}: {figures} n={metrics['count']}")
        if "confusion" in metrics:
            labels = result["labels"][task]
            print(f"  confusion (rows = true {labels}, columns = predicted): {metrics['confusion']}")
    for mode, value in result.get("stsb_spearman", {}).items():
        print(f"STS-B Spearman ({mode} pooling): {value:.4f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main)
