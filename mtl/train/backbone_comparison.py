"""Which pre-trained encoder? The same recipe trained from each backbone, one table and one picture.

Each trial is the base config with only `model.backbone` and `run.name` replaced (`<run.name>-backbone-<label>`),
trained one after another by `train_on_ray` (what `jobs.train` runs; tests pass `train_locally`). Every backbone is
resolved offline, checked against the fine-tuning settings and loaded once (its parameters counted) before the
first trial trains: a typo in the third backbone fails in seconds, not after two trainings. A trial's run directory
belongs to the comparison and is removed first, as in `mtl.train.strategy_comparison`.

Per backbone: validation metrics per task, STS-B Spearman before -> after (when `data.stsb` is set), training
samples/s, parameters, export size on disk, and the encoder latency for one text of typical length, measured in this
process with `ExportedModel.embed` (p50/p95 over `latency_calls` calls after a warm-up). That is not Serve's latency
(no HTTP, no batching, no replica hop); it compares encoders, not deployments.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.config import RUN_NAME, TYPE_METRICS, Config, validate_config
from mtl.errors import UserError
from mtl.train.strategy_comparison import trainable_parameters, with_steps

# The figures shown per task type, in table order (a type missing here shows its TYPE_METRICS).
SHOWN_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "pair_classification": ("accuracy", "macro_f1"),
    "similarity": ("spearman",),
    "multilabel": ("micro_f1", "macro_f1"),
}
SHORT_NAMES = {"accuracy": "acc", "macro_f1": "F1", "micro_f1": "micro-F1", "spearman": "Spearman"}
WARMUP_CALLS = 10
# Used only when the config names no Parquet file to take a typical text from (e.g. only `data.sources`).
FALLBACK_TEXT = "the acting was wonderful but the film was far too long for its story"


@dataclass
class Trial:
    """One backbone of the comparison: as given on the command line, its short label, its config, its size."""

    backbone: str
    label: str
    config: Config
    parameters: dict[str, int]


def backbone_label(backbone: str) -> str:
    """A short name for tables and run names: a hub id's last part, a directory's name."""
    path = Path(backbone).expanduser()
    name = path.resolve().name if path.is_dir() else backbone.rstrip("/").rsplit("/", 1)[-1]
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return label or "backbone"


def unique_labels(backbones: list[str]) -> list[str]:
    """Labels made unique with `-2`, `-3`...: two directories named `model` must not share a run directory."""
    labels: list[str] = []
    for backbone in backbones:
        label, number = backbone_label(backbone), 2
        while label in labels:
            label, number = f"{backbone_label(backbone)}-{number}", number + 1
        labels.append(label)
    return labels


def trial_config(base: Config, backbone: str, label: str, steps: int | None) -> Config:
    """The base config with this backbone and a run name of its own; every other setting kept."""
    raw = base.model_dump(mode="json")
    raw["model"]["backbone"] = backbone
    raw["run"]["name"] = f"{base.run.name}-backbone-{label}"
    assert RUN_NAME.fullmatch(raw["run"]["name"]), raw["run"]["name"]
    with_steps(raw, steps)
    return validate_config(raw, source=f"backbone {backbone}")


def check_trial(config: Config) -> dict[str, int]:
    """Resolve the backbone offline, check it against the fine-tuning settings, load tokenizer and weights once;
    returns the parameter counts (the load is the check that the weights are readable)."""
    from mtl.model.backbone import load_tokenizer
    from mtl.train.preflight import check_backbone

    check_backbone(config)
    load_tokenizer(config.model)
    return trainable_parameters(config)


def plan_comparison(base: Config, backbones: list[str], steps: int | None) -> list[Trial]:
    """Every trial's config and backbone checked before any trains; an error names the backbone at fault."""
    if not backbones:
        raise UserError("--backbones: name at least one backbone (a model directory or a cached Hugging Face id)")
    repeated = sorted({name for name in backbones if backbones.count(name) > 1})
    if repeated:
        raise UserError(f"--backbones: {repeated} named more than once")
    if base.model.init_from:
        raise UserError(
            f"model.init_from={base.model.init_from!r}: every trial would start from that export, not from its "
            "backbone; remove model.init_from (--set model.init_from=null) to compare backbones"
        )
    trials = []
    for backbone, label in zip(backbones, unique_labels(backbones), strict=True):
        try:
            config = trial_config(base, backbone, label, steps)
            parameters = check_trial(config)
        except UserError as error:
            raise UserError(f"--backbones: {backbone!r} cannot be used: {error}") from error
        print(f"backbone {label}: {backbone} ({parameters['total']:,} parameters) checked", flush=True)
        trials.append(Trial(backbone, label, config, parameters))
    return trials


def typical_text(config: Config) -> str:
    """The validation (else training) text of median word count: what one request to the encoder looks like."""
    import pyarrow.parquet as pq

    from mtl.data.contract import expand_paths

    key = "data.validation" if config.data.validation else "data.train"
    patterns = config.data.validation or config.data.train
    if not patterns:
        return FALLBACK_TEXT
    first = expand_paths(patterns, key)[0]
    texts = [text for text in pq.read_table(first, columns=[config.data.text_column]).column(0).to_pylist() if text]
    if not texts:
        return FALLBACK_TEXT
    return sorted(texts, key=lambda text: len(text.split()))[len(texts) // 2]


def encoder_latency(export_dir: str | Path, text: str, calls: int) -> dict:
    """p50/p95 milliseconds of `ExportedModel.embed([text])`, one call at a time, after a warm-up."""
    from mtl.inference.exported_model import ExportedModel

    model = ExportedModel.load(export_dir, with_heads=False)
    for _ in range(WARMUP_CALLS):
        model.embed([text])
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        model.embed([text])
        seconds.append(time.perf_counter() - started)
    milliseconds = 1000 * np.asarray(seconds)
    return {
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
        "p95_ms": round(float(np.percentile(milliseconds, 95)), 2),
        "calls": calls,
        "words": len(text.split()),
    }


def directory_bytes(directory: str | Path) -> int:
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def task_scores(config: Config, metrics: dict) -> dict[str, dict]:
    """Per task: its type and the figures shown for that type (None where the result lacks one)."""
    scores = {}
    for name, task in config.tasks.items():
        shown = SHOWN_METRICS.get(task.type, TYPE_METRICS[task.type])
        scores[name] = {"type": task.type, **{key: metrics.get(name, {}).get(key) for key in shown}}
    return scores


def run_trial(trial: Trial, train: Callable[[Config], dict], text: str, latency_calls: int) -> dict:
    previous = trial.config.run.run_dir()
    if previous.exists():
        print(f"removing the previous comparison's {previous}", flush=True)
        shutil.rmtree(previous)
    started = time.perf_counter()
    result = train(trial.config)
    seconds = time.perf_counter() - started
    final = result.get("retention", {}).get("final") or {}
    return {
        "backbone": trial.backbone,
        "label": trial.label,
        "run_dir": result["run_dir"],
        "export_dir": result["export_dir"],
        "steps": result["steps"],
        "tasks": task_scores(trial.config, result["metrics"]),
        "stsb_before": final.get("before"),
        "stsb_after": final.get("spearman"),
        "parameters": trial.parameters,
        "export_mb": round(directory_bytes(result["export_dir"]) / 1e6, 1),
        "latency": encoder_latency(result["export_dir"], text, latency_calls),
        "wall_s": round(seconds, 1),
        "samples_per_s": result["throughput"].get("samples_per_s"),
    }


def run_comparison(
    trials: list[Trial], base: Config, output: Path, train: Callable[[Config], dict] | None = None,
    latency_calls: int = 200,
) -> list[dict]:  # fmt: skip
    """Train each planned trial, then write `backbones.json`, `backbones.md` and `backbones.png` under `output`."""
    if train is None:
        from mtl.train.driver import train_on_ray as train
    text = typical_text(base)
    rows = []
    for trial in trials:
        steps = trial.config.train.max_steps
        print(f"backbone {trial.label}: training {trial.config.run.name} for {steps} steps", flush=True)
        rows.append(run_trial(trial, train, text, latency_calls))
        write_tables(rows, base, output)  # a partial table survives an interrupted comparison
    return rows


def compare_backbones(
    base: Config, backbones: list[str], steps: int | None, output: Path, train: Callable[[Config], dict] | None = None,
    latency_calls: int = 200,
) -> list[dict]:  # fmt: skip
    """`plan_comparison` (every backbone checked), then `run_comparison`."""
    return run_comparison(plan_comparison(base, backbones, steps), base, output, train, latency_calls)


def headline_score(row: dict) -> float | None:
    """Mean over tasks of accuracy (classification types), Spearman (similarity), micro-F1 (multilabel)."""
    values = [next(iter(value for key, value in task.items() if key != "type")) for task in row["tasks"].values()]
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def format_cell(task: dict) -> str:
    return " / ".join("-" if value is None else f"{value:.3f}" for key, value in task.items() if key != "type")


def write_tables(rows: list[dict], base: Config, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "backbones.json").write_text(json.dumps(rows, indent=2))
    header = ["backbone"]
    for name, task in base.tasks.items():
        shown = SHOWN_METRICS.get(task.type, TYPE_METRICS[task.type])
        header.append(f"{name} {' / '.join(SHORT_NAMES.get(key, key) for key in shown)}")
    header += ["STS-B before -> after", "parameters", "export", "samples/s", "encoder p50 / p95 (one text, in-process)"]
    header.append("wall")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], *[format_cell(row["tasks"][name]) for name in base.tasks]]
        if row["stsb_before"] is None:
            cells.append("(no data.stsb)")
        else:
            change = row["stsb_after"] - row["stsb_before"]
            cells.append(f"{row['stsb_before']:.3f} -> {row['stsb_after']:.3f} ({change:+.3f})")
        cells.append(f"{row['parameters']['total']:,}")
        cells.append(f"{row['export_mb']:.0f} MB" if row["export_mb"] >= 10 else f"{row['export_mb']:.1f} MB")
        cells.append(f"{row['samples_per_s']:.0f}" if row["samples_per_s"] else "-")
        cells.append(f"{row['latency']['p50_ms']:.1f} / {row['latency']['p95_ms']:.1f} ms")
        cells.append(f"{row['wall_s'] / 60:.1f} min" if row["wall_s"] >= 60 else f"{row['wall_s']:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    (output / "backbones.md").write_text("\n".join(lines) + "\n")
    plot_backbones(rows, output / "backbones.png")


def plot_backbones(rows: list[dict], path: Path) -> Path:
    """Mean task score against encoder latency (p50 dot, line to p95), one labelled point per backbone."""
    from mtl.evaluation.plots import plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for row in rows:
        score = headline_score(row)
        p50, p95 = row["latency"]["p50_ms"], row["latency"]["p95_ms"]
        y = float("nan") if score is None else score
        (dot,) = axes.plot([p50], [y], "o")
        axes.plot([p50, p95], [y, y], color=dot.get_color(), linewidth=1.5, alpha=0.6)
        axes.annotate(f"{row['label']} ({row['export_mb']:.0f} MB)", (p50, y), textcoords="offset points",
                      xytext=(5, 5))  # fmt: skip
    axes.set(
        xlabel="encoder latency, one text, in-process (ms; dot p50, line to p95)",
        ylabel="mean validation score",
        title="Backbones (score: accuracy; Spearman for similarity tasks)",
    )
    axes.margins(x=0.3, y=0.2)  # room for the labels right of the points
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
