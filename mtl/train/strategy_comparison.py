"""Which fine-tuning strategy? The same data and step budget under each strategy, trained on Ray, one table.

Each trial is a full `train_on_ray` run (Ray Data -> Ray Train -> DeepSpeed -> export), exactly what `jobs.train`
runs, with the base config's `finetune` and `retain` replaced by the trial's. Trials run one after another (a small
cluster has room for one). A trial's run directory, `<run.storage_path>/<run.name>-compare-<trial>`, belongs to
the comparison: a previous comparison's directory of that name is removed first (Ray Train would resume it).
WiSE-FT is off in every trial so that the table compares strategies as trained.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from mtl.config import Config, validate_config
from mtl.errors import UserError

# The validation figures a trial keeps per task (those its type has).
FIGURES = ("accuracy", "macro_f1", "spearman", "pearson", "micro_f1")
# name -> (finetune section, retain section); partial keeps the base config's unfreeze_last_n_layers.
STRATEGIES: dict[str, tuple[dict, dict]] = {
    "head_only": ({"strategy": "head_only"}, {"method": "none"}),
    "lora": ({"strategy": "lora"}, {"method": "none"}),
    "partial": ({"strategy": "partial"}, {"method": "none"}),
    "full": ({"strategy": "full"}, {"method": "none"}),
    "full+distill": ({"strategy": "full"}, {"method": "distill"}),
}


def with_steps(raw: dict, steps: int | None) -> None:
    """A comparison's `--steps`: every trial runs that many optimizer steps, validating and checkpointing at least at
    the end (in place on a plain config dict; None keeps the config's own budget)."""
    if steps is None:
        return
    raw["train"].update(max_steps=steps, epochs=None)
    raw["train"]["eval_every"] = min(raw["train"]["eval_every"], steps)
    raw["train"]["checkpoint_every"] = min(raw["train"]["checkpoint_every"], steps)


def trial_config(base: Config, name: str, steps: int | None) -> Config:
    """The base config with this trial's strategy and retention (other settings, e.g. LoRA rank, kept)."""
    finetune, retain = STRATEGIES[name]
    raw = base.model_dump(mode="json")
    raw["finetune"] = {**raw["finetune"], **finetune, "freeze_heads": []}
    raw["retain"] = {**raw["retain"], **retain, "wise_alphas": []}
    raw["run"]["name"] = f"{base.run.name}-compare-{name.replace('+', '-')}"
    with_steps(raw, steps)
    return validate_config(raw, source=f"strategy {name}")


def trainable_parameters(config: Config) -> dict[str, int]:
    from mtl.model.multitask import build_model
    from mtl.model.strategies import apply_strategy, parameter_report

    report = parameter_report(apply_strategy(build_model(config), config.finetune))
    return {
        "trainable": sum(group["trainable"] for group in report.values()),
        "total": sum(group["total"] for group in report.values()),
    }


def run_trial(config: Config) -> dict:
    from mtl.train.driver import train_on_ray

    previous = config.run.run_dir()
    if previous.exists():
        print(f"removing the previous comparison's {previous}", flush=True)
        shutil.rmtree(previous)
    started = time.perf_counter()
    result = train_on_ray(config)
    seconds = time.perf_counter() - started
    retention = result.get("retention", {})
    final = retention.get("final") or {}
    return {
        "run_dir": result["run_dir"],
        "steps": result["steps"],
        "tasks": {name: {key: m[key] for key in FIGURES if key in m} for name, m in result["metrics"].items()},
        "stsb_before": final.get("before"),
        "stsb_after": final.get("spearman"),
        "parameters": trainable_parameters(config),
        "wall_s": round(seconds, 1),
        "samples_per_s": result["throughput"].get("samples_per_s"),
    }


def compare_strategies(base: Config, names: list[str], steps: int | None, output: Path) -> list[dict]:
    """Run each trial, then write `strategies.json`, `strategies.md` and `strategies.png` under `output`."""
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise UserError(f"--strategies: unknown {unknown}; choose from {list(STRATEGIES)}")
    configs = {name: trial_config(base, name, steps) for name in names}  # every config checked before any run
    rows = []
    for name, config in configs.items():
        print(f"strategy {name}: training {config.run.name} for {config.train.max_steps} steps", flush=True)
        rows.append({"strategy": name, **run_trial(config)})
        write_tables(rows, base, output)  # a partial table survives an interrupted comparison
    return rows


def mean_score(row: dict, key: str) -> float:
    """Mean over tasks of `key` (macro-F1), or of the task's own headline figure where it has none (similarity:
    Spearman, multilabel: micro-F1)."""
    values = [task.get(key, task.get("spearman", task.get("micro_f1", 0.0))) for task in row["tasks"].values()]
    return sum(values) / len(values)


def task_cell(figures: dict) -> str:
    if "accuracy" in figures:
        return f"{figures['accuracy']:.3f} / {figures['macro_f1']:.3f}"
    if "spearman" in figures:
        return f"Spearman {figures['spearman']:.3f}"
    return f"micro-F1 {figures.get('micro_f1', 0.0):.3f}"


def write_tables(rows: list[dict], base: Config, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "strategies.json").write_text(json.dumps(rows, indent=2))
    tasks = list(base.task_names)
    header = ["strategy", *[f"{t} acc / F1" for t in tasks], "STS-B before -> after", "trainable params", "wall"]
    header[1 : 1 + len(tasks)] = [
        f"{t} acc / F1" if base.tasks[t].type in ("classification", "pair_classification") else t for t in tasks
    ]
    header.append("samples/s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["strategy"]]
        cells += [task_cell(row["tasks"][t]) for t in tasks]
        if row["stsb_before"] is None:
            cells.append("(no data.stsb)")
        else:
            drop = row["stsb_after"] - row["stsb_before"]
            cells.append(f"{row['stsb_before']:.3f} -> {row['stsb_after']:.3f} ({drop:+.3f})")
        params = row["parameters"]
        cells.append(f"{params['trainable']:,} of {params['total']:,}")
        cells.append(f"{row['wall_s'] / 60:.1f} min")
        cells.append(f"{row['samples_per_s']:.0f}" if row["samples_per_s"] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    (output / "strategies.md").write_text("\n".join(lines) + "\n")
    plot_strategies(rows, output / "strategies.png")


def plot_strategies(rows: list[dict], path: Path) -> Path | None:
    """Mean task macro-F1 against STS-B change, one labelled point per strategy."""
    points = [row for row in rows if row["stsb_before"] is not None]
    if not points:
        return None
    from mtl.evaluation.plots import plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for row in points:
        x, y = row["stsb_after"] - row["stsb_before"], mean_score(row, "macro_f1")
        axes.scatter([x], [y])
        axes.annotate(row["strategy"], (x, y), textcoords="offset points", xytext=(5, 5))
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set(xlabel="STS-B Spearman change of the encoder", ylabel="mean task macro-F1", title="Strategies")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
