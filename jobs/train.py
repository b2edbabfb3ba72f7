"""Train the multi-task model on Ray (Ray Data -> Ray Train workers running DeepSpeed) and export it.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env-json '{"excludes": [".venv", ".git", "runs", ".torch_extensions"]}' \
        -- python -m jobs.train --config jobs/configs/poc.yaml [--set train.max_steps=50 ...]

Without a cluster it starts a local Ray. A config, data or backbone problem prints one line `error: ...` and exits 2
before Ray starts (--debug shows the traceback). The last stdout line is one JSON object with
`run_dir`, `export_dir` and the final validation `metrics`.
"""

from __future__ import annotations

import argparse
import json
import os

from jobs.cli import run_command
from jobs.presets import resolve_config
from mtl.config import load_config
from mtl.train.preflight import plan_training


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file or shipped preset name (poc, production, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(resolve_config(args.config), args.overrides)
    # Config, data, backbone and run directory are checked before Ray starts (seconds, not a cluster start).
    plan = plan_training(config)

    import ray

    from mtl.train.driver import train_on_ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No runtime env here: Ray refuses to merge a driver's env_vars with a job's (a RayJob manifest, `ray job submit
    # --runtime-env-json`) that sets the same keys. The workers get what they need through the trainer's config.
    ray.init()
    result = train_on_ray(plan.config, plan)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main)
