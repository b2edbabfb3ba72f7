"""Compare fine-tuning strategies on the same data and step budget: head-only, LoRA, partial, full, full + distill.

    python -m jobs.compare_strategies --config jobs/configs/production.yaml --steps 400 --output runs/compare

Each strategy trains on Ray exactly as `jobs.train` would (one after another), from the base config with its
`finetune` and `retain` sections replaced. Writes `strategies.json`, `strategies.md` (per-task accuracy and
macro-F1, STS-B before -> after, trainable parameters, wall time, samples/s) and `strategies.png` (task score
against STS-B change). The last stdout line is the JSON table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jobs.cli import run_command
from jobs.presets import resolve_config
from mtl.config import load_config
from mtl.train.strategy_comparison import STRATEGIES, compare_strategies


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base config (data, model, optimizer, budget): file or preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per strategy (default: the config's)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--output", default=None, help="default: <run.storage_path>/compare-strategies")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    base = load_config(resolve_config(args.config), args.overrides)
    output = Path(args.output or Path(base.run.storage_path) / "compare-strategies")

    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ray.init()  # no runtime env of its own, as jobs.train
    rows = compare_strategies(base, args.strategies, args.steps, output)
    print(f"wrote {output}/strategies.md, strategies.json, strategies.png", flush=True)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    run_command(main)
