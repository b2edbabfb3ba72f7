"""Compare pre-trained encoders under one recipe: the same config trained from each backbone, one table, one picture.

    python -m jobs.compare_backbones --config jobs/configs/production.yaml \
        --backbones sentence-transformers/all-MiniLM-L6-v2,models/all-mpnet-base-v2 --steps 300 --output runs/compare

`--backbones` takes model directories or Hugging Face ids already in the local cache, comma-separated. Each trains on
Ray exactly as `jobs.train` would (one after another), from the config with only `model.backbone` replaced; its run
is `<run.name>-backbone-<label>`. Every backbone is found, checked and loaded before the first one trains: one that
is missing or unreadable is `error: --backbones: ...` (exit 2) in seconds. Writes `backbones.json`, `backbones.md`
(per-task validation figures, STS-B before -> after, parameters, export size, training samples/s, encoder latency
p50/p95 for one text of typical length in this process; not Serve's latency) and `backbones.png` (mean task score
against that latency). The last stdout line is the JSON table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jobs.cli import run_command
from jobs.presets import resolve_config
from mtl.config import load_config
from mtl.train.backbone_comparison import plan_comparison, run_comparison


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", required=True, help="base config (data, tasks, strategy, optimizer, budget), file or preset"
    )
    parser.add_argument(
        "--backbones", required=True, help="comma-separated model directories or cached Hugging Face ids"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per backbone (default: the config's)")
    parser.add_argument("--latency-calls", type=int, default=200, help="timed encoder calls per backbone")
    parser.add_argument("--output", "--out", default=None, help="default: <run.storage_path>/compare-backbones")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.latency_calls < 1:
        parser.error("--latency-calls must be at least 1")
    backbones = [name.strip() for name in args.backbones.split(",") if name.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = load_config(resolve_config(args.config), args.overrides)
    output = Path(args.output or Path(base.run.storage_path) / "compare-backbones")
    trials = plan_comparison(base, backbones, args.steps)  # every backbone checked before Ray starts

    import ray

    ray.init()  # no runtime env of its own, as jobs.train
    rows = run_comparison(trials, base, output, latency_calls=args.latency_calls)
    print(f"wrote {output}/backbones.md, backbones.json, backbones.png", flush=True)
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    run_command(main)
