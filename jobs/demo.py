"""`make demo`: prepare the bundled sample, train `poc.yaml` on a local Ray (Ray Data -> Ray Train ->
DeepSpeed), export, evaluate the export, print validation metrics and example predictions.

python -m jobs.demo
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jobs.evaluate import main as evaluate
from jobs.prepare_data import main as prepare_data
from jobs.train import main as train
from mtl.config import load_config
from mtl.inference import ExportedModel

SAMPLE = Path("data/sample")
EXAMPLES = [
    "the soundtrack is a joy to watch .",
    "this sequel drags on far too long .",
    "who invented the telescope ?",
    "how many owls live in oslo ?",
]


def main() -> None:
    prepare_data(
        [
            "--task",
            f"sentiment={SAMPLE / 'sentiment.tsv'}",
            "--labels",
            "sentiment=negative,positive",
            "--task",
            f"topic={SAMPLE / 'topic.tsv'}",
            "--labels",
            "topic=ABBR,ENTY,DESC,HUM,LOC,NUM",
            "--output",
            "runs/demo/data",
            "--validation-fraction",
            "0.2",
        ]
    )
    config_path = "jobs/configs/poc.yaml"
    config = load_config(config_path)
    # A demo starts fresh; a real run with the same name would resume from its checkpoints instead.
    shutil.rmtree(Path(config.run.storage_path) / config.run.name, ignore_errors=True)
    result = train(["--config", config_path])
    print("\nevaluating the export on the validation rows:")
    evaluation = evaluate(["--model", result["export_dir"], "--data", config.data.validation[0]])
    model = ExportedModel.load(result["export_dir"])
    print("\nvalidation:")
    for task, metrics in evaluation["tasks"].items():
        scores = f"accuracy={metrics['accuracy']:.3f} macro_f1={metrics['macro_f1']:.3f}"
        print(f"  {task:<10} {scores} rows={metrics['count']}")
    print("\npredictions:")
    for text, prediction in zip(EXAMPLES, model.predict(EXAMPLES), strict=True):
        labels = ", ".join(
            f"{task}={p['label']} ({max(p['probabilities'].values()):.2f})" for task, p in prediction.items()
        )
        print(f"  {text!r:<42} {labels}")
    summary = {"run_dir": result["run_dir"], "export_dir": result["export_dir"], "metrics": evaluation["tasks"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
