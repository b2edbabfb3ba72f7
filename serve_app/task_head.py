"""`TaskHead` deployment: one per task; pooled vectors -> probabilities.

Its weights file is `user_config.head_file` (default: the export's `heads/<task>.safetensors`), so a
new head rolls out with `serve deploy` as a lightweight update of this deployment alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from ray import serve

from mtl.model.heads import build_heads, load_head_into


@serve.deployment
class TaskHead:
    def __init__(self, model_dir: str, task: str):
        self.model_dir = Path(model_dir)
        self.task = task
        manifest = json.loads((self.model_dir / "mtl.json").read_text())
        self.labels = manifest["tasks"][task]["labels"]
        self.hidden = int(manifest["hidden_size"])
        self.head = None
        self.source: dict = {}
        self.started = time.time()
        self.reconfigure({})

    def reconfigure(self, user_config: dict) -> None:
        """Load `head_file` (or the export's own); a wrong shape keeps the old head and fails the update."""
        path = Path(user_config.get("head_file") or self.model_dir / "heads" / f"{self.task}.safetensors")
        head = build_heads(self.hidden, {self.task: len(self.labels)})[self.task]
        load_head_into(head, path)  # raises naming the file on a shape mismatch
        self.head = head.eval()
        self.source = {"head_file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}

    @torch.inference_mode()
    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        return torch.softmax(self.head(torch.as_tensor(pooled)), dim=-1).numpy()

    def identity(self) -> dict:
        context = serve.get_replica_context()
        return {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started, **self.source}
