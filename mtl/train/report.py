"""The run report: training history -> loss/accuracy curves (PNG), STS-B before/after, index compatibility of the
new encoder with the starting one (`mtl.evaluation.index_compatibility`), `report.json`.

Rank 0 appends one JSON line per logged step and per validation to `<run_dir>/history.jsonl`
(`append_history`); after training the driver calls `write_report`, which writes `<run_dir>/report/`.
The STS-B Spearman of the starting encoder and of the export is the catastrophic-forgetting guard.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mtl.config import Config
from mtl.data.contract import expand_paths
from mtl.evaluation.index_compatibility import K, compatibility_line, index_compatibility, sample_texts
from mtl.evaluation.plots import plot_series
from mtl.evaluation.stsb import stsb_spearman
from mtl.export_format import read_manifest
from mtl.inference.exported_model import ExportedModel
from mtl.model.backbone import load_encoder, load_tokenizer, starting_encoder_dir
from mtl.model.pooling import resolve_pooling

HISTORY = "history.jsonl"
COMPATIBILITY_TEXTS = 2_000  # validation texts (and their second texts) embedded by both encoders


def append_history(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / HISTORY, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / HISTORY
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    # A resumed run re-logs the steps after its checkpoint: keep the last record per (kind, step).
    latest = {(record["kind"], record["step"]): record for record in records}
    return sorted(latest.values(), key=lambda record: (record["step"], record["kind"]))


def starting_model(config: Config) -> ExportedModel:
    """The encoder before fine-tuning (`model.init_from` or the backbone) with the run's pooling, no heads."""
    source = starting_encoder_dir(config.model)
    return ExportedModel(
        encoder=load_encoder(config.model, source),
        tokenizer=load_tokenizer(config.model, source),
        pooling=resolve_pooling(config.model.pooling, source),
        max_seq_length=config.model.max_seq_length,
        labels={},
        heads=nn.ModuleDict(),
        manifest={"tasks": {}},  # no heads, so no tasks (task_info reads the key)
    )


def write_report(run_dir: Path, config: Config, export_dir: Path) -> dict:
    """Curves from the history, STS-B before/after when `data.stsb` is set; returns what `report.json` holds."""
    run_dir, out = Path(run_dir), Path(run_dir) / "report"
    history = read_history(run_dir)
    report: dict = {"figures": []}
    train = [record for record in history if record["kind"] == "train"]
    validation = [record for record in history if record["kind"] == "validation"]
    if train:
        steps = [record["step"] for record in train]
        names = list(train[-1]["loss"])  # the tasks, and `retain` when a retention term is on
        losses = {name: [record["loss"].get(name, float("nan")) for record in train] for name in names}
        curves = {name: (steps, values) for name, values in losses.items()}
        report["figures"].append(str(plot_series(curves, "training loss per task", "loss", out / "loss.png")))
    if validation:
        headline = {"similarity": "spearman", "multilabel": "micro_f1"}  # "accuracy": a task type's own headline
        for metric in ("loss", "accuracy", "macro_f1"):
            curves = {}
            for name in config.task_names:
                key = headline.get(config.tasks[name].type, "accuracy") if metric == "accuracy" else metric
                if key in validation[-1]["metrics"][name]:
                    label = name if key == metric else f"{name} ({key})"
                    curves[label] = ([r["step"] for r in validation], [r["metrics"][name][key] for r in validation])
            if metric == "accuracy" and "stsb" in validation[-1]:  # retention beside task accuracy
                probed = [r for r in validation if "stsb" in r]
                curves["STS-B Spearman"] = ([r["step"] for r in probed], [r["stsb"]["spearman"] for r in probed])
            path = out / f"validation_{metric}.png"
            report["figures"].append(str(plot_series(curves, f"validation {metric} per task", metric, path)))
        report["validation"] = validation[-1]["metrics"]
    retention = [record for record in history if record["kind"] == "retention"]
    if retention:
        report["retention"] = {key: value for key, value in retention[-1].items() if key not in ("kind", "step")}
    if config.data.stsb:
        before = stsb_spearman(starting_model(config), config.data.stsb)
        after = stsb_spearman(ExportedModel.load(export_dir), config.data.stsb)
        report["stsb_spearman"] = {"before": before, "after": after, "change": after - before, "file": config.data.stsb}
        print(f"STS-B Spearman ({config.data.stsb}): before {before:.4f} -> after {after:.4f} ({after - before:+.4f})")
    report["index_compatibility"] = compatibility_check(config, export_dir)
    print(compatibility_line(report["index_compatibility"]), flush=True)
    targets = target_check(config, export_dir, validation[-1]["metrics"] if validation else {}, report.get("retention"))
    if targets:
        report["targets"] = targets
        print(f"targets {'met' if targets['all_met'] else 'NOT met'}: {json.dumps(targets)}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def compatibility_check(config: Config, export_dir: Path, limit: int = COMPATIBILITY_TEXTS) -> dict:
    """`index_compatibility` of the export's encoder with the starting one on up to `limit` distinct texts of
    `data.validation` (texts and second texts; `data.train` when there is no validation data)."""
    key = "data.validation" if config.data.validation else "data.train"
    patterns = config.data.validation or config.data.train
    if not patterns:
        return {"skipped": "no data.validation or data.train files"}
    columns = [config.data.text_column, config.data.text_pair_column]
    texts = sample_texts(expand_paths(patterns, key), columns, limit)
    if len(texts) <= K:
        return {"skipped": f"{len(texts)} distinct texts in {key}, need more than {K}"}
    new = ExportedModel.load(export_dir, with_heads=False).embed(texts)
    old = starting_model(config).embed(texts)
    return index_compatibility(new, old) | {"source": key}


def target_check(config: Config, export_dir: Path, metrics: dict, retention: dict | None) -> dict:
    """Each `tasks.*.target_accuracy` against the export's validation accuracy (the chosen WiSE-FT blend's, if any;
    similarity tasks: Spearman, multilabel: micro-F1), and `retain.max_stsb_drop` against the export's STS-B drop;
    {} when no target is configured."""
    measure = {"similarity": "spearman", "multilabel": "micro_f1"}
    accuracy = {
        name: task.get(measure.get(config.tasks[name].type, "accuracy"), 0.0)
        for name, task in metrics.items()
        if name in config.tasks
    }
    drop = retention["final"]["drop"] if retention else None
    wise = read_manifest(export_dir).get("wise_ft")
    if wise:  # the export is the chosen blend: its own row of the WiSE-FT table
        chosen = next(row for row in wise["table"] if row["alpha"] == wise["alpha"])
        accuracy, drop = chosen["accuracy"], chosen["drop"]
    checks: dict = {}
    for name, task in config.tasks.items():
        if task.target_accuracy is not None and name in accuracy:
            target = task.target_accuracy
            checks[name] = {"target": target, "accuracy": accuracy[name], "met": accuracy[name] >= target}
    budget = config.retain.max_stsb_drop
    if budget is not None and drop is not None:
        checks["stsb"] = {"max_drop": budget, "drop": drop, "met": drop <= budget}
    return {**checks, "all_met": all(check["met"] for check in checks.values())} if checks else {}
