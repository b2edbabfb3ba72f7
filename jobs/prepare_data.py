"""Per-task sources -> sharded mixed-task Parquet (`text`, `task`, and `label`, `text_pair`, `score` or `labels` as
the tasks' types read them) plus `labels.json`.

    python -m jobs.prepare_data --task sentiment=data/sample/sentiment.tsv --labels sentiment=negative,positive \
        --task topic=data/sample/topic.tsv --output runs/demo/data [--config jobs/configs/poc.yaml]

With --config each source is read as its task's `tasks.*.type` (text, text_pair, label | score rows for pair types,
text, labels rows for multilabel: see mtl/data/prepare.py), scores are checked against `tasks.*.score_range`, and
the label ids written follow `tasks.*.labels` order (a source label it lacks is an error). Without it every task is
classification (text, label) and ids follow --labels, the source's labels.json, or sorted names. Training refuses
data whose labels.json orders a task's labels differently from its config.

Through Ray: ray job submit --working-dir . -- python -m jobs.prepare_data --task ... --output ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jobs.cli import run_command
from jobs.presets import resolve_config
from mtl.config import load_config
from mtl.data.contract import DataError
from mtl.data.prepare import prepare


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise DataError(f"{flag} {value!r}: expected task=value")
        pairs[name] = rest
    return pairs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", required=True, help="task=path (.tsv, .csv or .parquet)")
    parser.add_argument("--labels", action="append", default=[], help="task=name0,name1,... (label id order)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--shard-rows", type=int, default=20_000, help="rows per training shard (>= 1)")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="share of rows held out, in [0, 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="training config (file or preset): label ids follow its tasks.*.labels order")
    args = parser.parse_args(argv)
    if args.shard_rows < 1:
        raise DataError(f"--shard-rows {args.shard_rows}: must be at least 1")
    if not 0 <= args.validation_fraction < 1:
        raise DataError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    labels = {task: names.split(",") for task, names in _pairs(args.labels, "--labels").items()}
    sources = {task: Path(path) for task, path in _pairs(args.task, "--task").items()}
    tasks = None
    if args.config:
        config = load_config(resolve_config(args.config))
        unknown = [task for task in sources if task not in config.tasks]
        if unknown:
            parser.error(f"--task {unknown}: not in {args.config} (tasks: {list(config.tasks)})")
        tasks = {task: config.tasks[task] for task in sources}
    summary = prepare(
        sources,
        labels,
        args.output,
        shard_rows=args.shard_rows,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        tasks=tasks,
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_command(main)
