"""Batch embedding/scoring on Ray Data: Parquet in, Parquet out.

    python -m jobs.embed --model runs/production/export --input '../shared/data/sst2/train-*.parquet' \
        --output runs/embeddings/sst2 [--tasks all] [--precision bf16] [--keep-columns label]
    python -m jobs.embed --model runs/production/export --input pairs.parquet --output runs/embeddings/pairs \
        --text-column sentence1 --text-pair-column sentence2 --tasks all
    python -m jobs.embed --model runs/production/export --input '../shared/data/sst2/train-*.parquet' \
        --output runs/embeddings/sst2 --incremental --overwrite      # after a retrain or new rows: see docs/batch.md

Through a cluster: ray job submit --working-dir . -- python -m jobs.embed ... (paths as the cluster sees them).
Output: Parquet files `part-<first input row>.parquet`; read in name order, their rows are in input order (rows
skipped by --on-empty skip left out). Columns: the kept input columns, `embedding` (fixed-size list<float32>, of the
--text-column text), and with --tasks per task: classification and pair_classification `<task>_label`,
`<task>_label_id`, `<task>_score`; similarity `<task>_score` (on the task's score range) and `<task>_cosine`;
multilabel `<task>_labels` (list<string>) and `<task>_probabilities` (list<float>, label order). Pair tasks score
(text, --text-pair-column) per row; `--tasks all` includes them only with --text-pair-column. Each row also gets
`embedding_fingerprint` (the encoder that made its vector) and `embedding_text_hash` (sha256 of the text, first 16
bytes); each file's schema metadata names the export version (`mtl.export_id`), the encoder fingerprint
(`mtl.encoder_fingerprint`) and the vector settings (`mtl.embedding`). --incremental reads an earlier output
(--previous, default --output itself, then --overwrite is needed) and copies the vector of every row whose text it
holds from this encoder under the same settings; only the other rows are encoded (not with --tasks). The earlier
output is never changed in place: the new one is staged and swapped in whole. `_jobs_embed.json` in the output
records the job (model, export id, fingerprint, counts); --overwrite replaces only a directory holding one. The last
stdout line is one JSON object: rows in/out, rows reused/embedded, rows skipped by reason, seconds, rows/s, output
path, export id and fingerprint. A bad flag, file, column or output prints one line `error: ...` and exits 2 before
Ray starts (--debug shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import os

from pydantic import ValidationError

from jobs.cli import run_command
from mtl.inference.batch import EmbedOptions, plan_embedding, run_embedding


def parse_options(argv: list[str] | None) -> EmbedOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory (jobs.train output)")
    parser.add_argument("--input", required=True, action="append", help="Parquet file or glob (repeatable)")
    parser.add_argument("--output", required=True, help="output directory of Parquet files")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--text-pair-column", help="second text of each row, for pair tasks (pair_classification, "
                        "similarity)")  # fmt: skip
    parser.add_argument("--keep-columns", default="", help="comma-separated input columns copied to the output")
    parser.add_argument("--tasks", default="", help="'all' (every task the columns allow) or comma-separated task "
                        "names to score")  # fmt: skip
    parser.add_argument("--no-normalize", action="store_true", help="raw pooled vectors instead of unit length")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per Ray Data batch (default 1024)")
    parser.add_argument("--actors", type=int, default=1, help="model replicas in the actor pool (default 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--threads", type=int, help="torch threads per actor (default: cores / actors)")
    parser.add_argument("--on-empty", choices=("error", "skip"), default="error", help="null/empty texts")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--incremental", action="store_true", help="copy the stored vectors of rows whose text the "
                        "previous output holds from this encoder; embed only the others")  # fmt: skip
    parser.add_argument("--previous", help="the earlier output --incremental reads (default: --output)")
    args = parser.parse_args(argv)
    options = vars(args) | {
        "inputs": args.input,
        "keep_columns": [name for name in args.keep_columns.split(",") if name],
        "tasks": [] if not args.tasks else ["all"] if args.tasks == "all" else args.tasks.split(","),
        "normalize": not args.no_normalize,
        "threads": args.threads or max(1, (os.cpu_count() or 1) // max(args.actors, 1)),
    }
    del options["input"], options["no_normalize"]
    try:
        return EmbedOptions.model_validate(options)
    except ValidationError as error:
        flag = {"inputs": "input", "normalize": "no-normalize"}
        names = [str(item["loc"][0]) if item["loc"] else "" for item in error.errors()]  # none: a cross-field rule
        names = [f"--{flag.get(name, name.replace('_', '-'))}: " if name else "" for name in names]
        messages = [item["msg"].removeprefix("Value error, ") for item in error.errors()]
        parser.error("; ".join(f"{name}{message}" for name, message in zip(names, messages, strict=True)))


def main(argv: list[str] | None = None) -> dict:
    options = parse_options(argv)
    plan = plan_embedding(options)  # inputs, export and output checked before Ray starts
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A batch job that starts its own local Ray needs no dashboard (on a small machine its processes compete with
    # the actors for the first seconds); joining a cluster (RAY_ADDRESS, ray job submit) ignores this.
    ray.init(include_dashboard=False)
    summary = run_embedding(plan)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run_command(main)
