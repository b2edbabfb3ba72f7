"""`make demo`: prepare the bundled sample, train `poc.yaml` on a local Ray (Ray Data -> Ray Train ->
DeepSpeed), export, evaluate the export, serve it with Ray Serve and send example requests.

python -m jobs.demo [--keep-serving] [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import requests

from jobs.cli import run_command
from jobs.train import main as train
from mtl.config import load_config
from mtl.data.prepare import prepare
from mtl.evaluation.evaluate_export import evaluate_export
from mtl.inference.exported_model import ExportedModel
from serve_app.local import LocalServe

SAMPLE = Path("data/sample")
EXAMPLES = [
    "the soundtrack is a joy to watch .",
    "this sequel drags on far too long .",
    "who invented the telescope ?",
    "how many owls live in oslo ?",
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-serving", action="store_true", help="keep the Serve app up until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    sources = {"sentiment": SAMPLE / "sentiment.tsv", "topic": SAMPLE / "topic.tsv"}
    labels = {"sentiment": ["negative", "positive"], "topic": ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]}
    shutil.rmtree("runs/demo/data", ignore_errors=True)  # the demo's own directory (prepare refuses foreign shards)
    prepare(sources, labels, Path("runs/demo/data"), validation_fraction=0.2)
    config_path = "jobs/configs/poc.yaml"
    config = load_config(config_path)
    # A demo starts fresh; a real run with the same name would resume from its checkpoints instead.
    shutil.rmtree(Path(config.run.storage_path) / config.run.name, ignore_errors=True)
    result = train(["--config", config_path])
    print("\nevaluating the export on the validation rows:")
    evaluation = evaluate_export(result["export_dir"], [config.data.validation[0]])
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
    summary["served"] = serve_examples(result["export_dir"], args.port, args.keep_serving)
    print(json.dumps(summary))
    return summary


def serve_examples(export_dir: str, port: int, keep_serving: bool) -> dict:
    """Deploy the export with the shipped Serve config, call each endpoint once, print the answers."""
    print(f"\nserving {export_dir} on http://127.0.0.1:{port} (serve_app/serve_config.yaml)")
    served = LocalServe(export_dir, port=port)
    answers = {}
    try:
        for path, body in [
            ("/v1/embed", {"texts": EXAMPLES[:2]}),
            ("/v1/predict", {"texts": EXAMPLES[1:3]}),
            ("/v1/similarity", {"pairs": [[EXAMPLES[0], EXAMPLES[1]], [EXAMPLES[2], "who built the telescope ?"]]}),
        ]:
            response = requests.post(f"{served.url}{path}", json=body, timeout=60)
            response.raise_for_status()
            answers[path] = response.json()
            shown = dict(answers[path])
            if "embeddings" in shown:
                shown["embeddings"] = [[round(x, 4) for x in row[:4]] + ["..."] for row in shown["embeddings"]]
            print(f"POST {path} {json.dumps(body)}\n  -> {json.dumps(shown)[:600]}")
        if keep_serving:
            print(f"\nserving until Ctrl-C; try: curl -s {served.url}/v1/model")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
    return {path: "ok" for path in answers}


if __name__ == "__main__":
    run_command(main)
