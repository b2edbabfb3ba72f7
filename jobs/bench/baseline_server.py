"""The benchmark baseline: the server a user would hand-write first (uvicorn + FastAPI, transformers, no batching).

    python -m jobs.bench.baseline_server --model EXPORT --port 8001

It reads the same export but shares no code with the project's inference path on purpose.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from mtl.export_format import head_path, read_manifest


def build(model_dir: Path) -> FastAPI:
    manifest = read_manifest(model_dir)
    if manifest["pooling"] != "mean":
        raise SystemExit(f"{model_dir}: the baseline hand-codes mean pooling; this export uses {manifest['pooling']}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir).eval()
    heads = {task: load_file(str(head_path(model_dir, task))) for task in manifest["tasks"]}
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/predict")
    def predict(body: dict):
        texts = body["texts"]
        with torch.no_grad():
            tokens = tokenizer(texts, padding=True, truncation=True, max_length=manifest["max_seq_length"],
                               return_tensors="pt")  # fmt: skip
            hidden = encoder(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out = []
            for row in range(len(texts)):
                entry = {}
                for task, head in heads.items():
                    probs = torch.softmax(pooled[row] @ head["weight"].T + head["bias"], dim=-1)
                    labels = manifest["tasks"][task]["labels"]
                    entry[task] = {"label": labels[int(probs.argmax())], "probabilities": probs.tolist()}
                out.append(entry)
        return {"predictions": out}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(build(Path(args.model)), host="127.0.0.1", port=args.port, log_level="warning")
