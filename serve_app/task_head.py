"""`TaskHead` deployment: one per task; pooled vectors -> probabilities (maths in `mtl.inference`).

Its weights file is `user_config.head_file` (default: the export's `heads/<task>.safetensors`), so a
new head rolls out with `serve deploy` as a lightweight update of this deployment alone.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
from ray import serve

from mtl.inference import head_path, head_probabilities, load_task_head


@serve.deployment
class TaskHead:
    def __init__(self, model_dir: str, task: str):
        self.model_dir = model_dir
        self.task = task
        self.head = None
        self.source: dict = {}
        self.started = time.time()
        self.reconfigure({})

    def reconfigure(self, user_config: dict) -> None:
        """Load `head_file` (or the export's own); a wrong shape keeps the old head and fails the update."""
        head_file = user_config.get("head_file")
        self.head = load_task_head(self.model_dir, self.task, head_file)
        path = head_path(self.model_dir, self.task, head_file)
        self.source = {"head_file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        return head_probabilities(self.head, pooled)

    def identity(self) -> dict:
        context = serve.get_replica_context()
        return {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started, **self.source}
