"""WiSE-FT (Wortsman et al., 2022): export the encoder as a weight-space blend of the fine-tuned and the starting one.

encoder = (1 - alpha) * start + alpha * tuned, parameter by parameter; heads stay as trained. alpha = 1 is the
fine-tuned model, 0 the starting encoder. It costs no training: `retain.wise_alphas` lists the candidates, each is
scored on the validation rows and on STS-B, and the one with the best mean task macro-F1 among those within
`retain.max_stsb_drop` becomes `<run_dir>/export` (the fine-tuned one moves to `<run_dir>/export_tuned`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModel

from mtl.config import Config
from mtl.data.contract import read_split
from mtl.evaluation.classification import task_report
from mtl.evaluation.stsb import stsb_spearman
from mtl.export_format import head_path, read_manifest, write_manifest
from mtl.inference.export import new_version_dir, publish
from mtl.inference.exported_model import ExportedModel
from mtl.model.backbone import starting_encoder_dir
from mtl.model.heads import build_heads, load_head_into, save_head, weights_fingerprint
from mtl.train.validation import selection_score


def blend_export(tuned_dir: Path, start: Path | dict, alpha: float, out_dir: Path) -> Path:
    """A copy of the export at `tuned_dir` whose encoder is (1 - alpha) * start + alpha * tuned.

    `start` is the starting encoder's directory or its state dict (loaded once when blending several alphas)."""
    tuned = AutoModel.from_pretrained(tuned_dir, local_files_only=True)
    source = "the starting encoder" if isinstance(start, dict) else start
    if not isinstance(start, dict):
        start = AutoModel.from_pretrained(start, local_files_only=True).state_dict()
    state = tuned.state_dict()
    mismatched = [name for name, tensor in state.items() if name not in start or start[name].shape != tensor.shape]
    if mismatched:
        raise ValueError(f"{tuned_dir} and {source}: encoders differ in {mismatched[:5]}; cannot interpolate")
    with torch.no_grad():
        tuned.load_state_dict({name: (1 - alpha) * start[name] + alpha * tensor for name, tensor in state.items()})
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(tuned_dir, out_dir)
    tuned.save_pretrained(out_dir)
    restamp_heads(out_dir, weights_fingerprint(tuned))  # the heads are served with this encoder now
    return out_dir


def restamp_heads(export_dir: Path, fingerprint: str) -> None:
    """Record `fingerprint` as the export's encoder, in `mtl.json` and in every head file's metadata."""
    manifest = read_manifest(export_dir)
    for task, spec in manifest["tasks"].items():
        kind = spec.get("type", "classification")
        if kind == "similarity":  # no head: its output is the encoder's cosine
            continue
        path = head_path(export_dir, task)
        head = build_heads(int(manifest["hidden_size"]), {task: (kind, len(spec["labels"]))})[task]
        load_head_into(head, path)
        save_head(head, path, task, spec["labels"], fingerprint, kind)
    manifest["encoder_fingerprint"] = fingerprint
    write_manifest(export_dir, manifest)


def choose_alpha(run_dir: Path, config: Config, precision: str = "bf16") -> dict:
    """Score every `retain.wise_alphas` candidate (and 1.0) and install the chosen one as `<run_dir>/export`."""
    run_dir = Path(run_dir)
    device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
    export, tuned = run_dir / "export", run_dir / "export_tuned"
    publish(export.resolve(), tuned)  # `export` keeps pointing at the fine-tuned version until the blend is published
    start_dir = starting_encoder_dir(config.model)
    start_state = AutoModel.from_pretrained(start_dir, local_files_only=True).state_dict()
    rows, _ = read_split(config, "validation")
    start = blend_export(tuned, start_state, 0.0, run_dir / "wise" / "alpha-0")  # the starting encoder, as exported
    before = stsb_spearman(ExportedModel.load(start, device=device, precision=precision), config.data.stsb)
    table = []
    for alpha in sorted({1.0, *config.retain.wise_alphas}, reverse=True):
        candidate = blend_export(tuned, start_state, alpha, run_dir / "wise" / f"alpha-{alpha:g}")
        model = ExportedModel.load(candidate, device=device, precision=precision)
        tasks = task_report(model, rows, config.task_names)
        spearman = stsb_spearman(model, config.data.stsb)
        score = selection_score(tasks, config)
        accuracy = {name: task["accuracy"] for name, task in tasks.items() if "accuracy" in task}
        row = {"alpha": alpha, "score": score, "accuracy": accuracy, "stsb": spearman, "drop": before - spearman}
        table.append(row)
        print(f"WiSE-FT alpha={alpha:g}: selection score {score:.4f} accuracy {accuracy} STS-B {spearman:.4f} "
              f"({spearman - before:+.4f})", flush=True)  # fmt: skip
    budget = config.retain.max_stsb_drop
    eligible = [row for row in table if budget is None or row["drop"] <= budget] or table[-1:]  # else the smallest
    chosen = max(eligible, key=lambda row: row["score"])
    version = new_version_dir(export, f"{read_manifest(tuned)['provenance']['steps']}-wise{chosen['alpha']:g}")
    shutil.copytree(run_dir / "wise" / f"alpha-{chosen['alpha']:g}", version)
    shutil.rmtree(run_dir / "wise")
    manifest = read_manifest(version)
    manifest["wise_ft"] = {"alpha": chosen["alpha"], "stsb_before": before, "table": table, "tuned": str(tuned)}
    write_manifest(version, manifest)
    publish(version, export)
    print(f"WiSE-FT: exported alpha={chosen['alpha']:g} to {export} (fine-tuned encoder kept in {tuned})", flush=True)
    return manifest["wise_ft"]
