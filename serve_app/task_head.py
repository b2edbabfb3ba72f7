"""`TaskHead` deployment: one per task; pooled vectors -> probabilities (maths in `mtl.inference`).

Its weights file is `user_config.head_file` (default: the export's `heads/<task>.safetensors`), so a
new head rolls out with `serve deploy` as a lightweight update of this deployment alone. A head file for another
task, label order or encoder is refused: the replica keeps serving the head it has, logs the error and shows it
under `refused` in its identity (GET /v1/model, `heads.<task>.refused`). (Raising from `reconfigure` instead would
make Serve replace the replica, and every new one would fail the same way: no head would serve at all.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import numpy as np
from ray import serve

from mtl.inference import head_path, head_probabilities, load_task_head

logger = logging.getLogger("ray.serve")


@serve.deployment
class TaskHead:
    def __init__(self, model_dir: str, task: str):
        self.model_dir = model_dir
        self.task = task
        self.started = time.time()
        self.head = load_task_head(model_dir, task)  # the export's own head; an unreadable export fails the start
        self.source = self._source(None)
        self.refused: dict | None = None

    def _source(self, head_file: str | None) -> dict:
        path = head_path(self.model_dir, self.task, head_file)
        return {"head_file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}

    def reconfigure(self, user_config: dict) -> None:
        """Load `head_file` (or the export's own); a mismatched or unreadable file keeps the current head."""
        head_file = user_config.get("head_file")
        try:
            head, source = load_task_head(self.model_dir, self.task, head_file), self._source(head_file)
        except (OSError, ValueError) as error:
            self.refused = {"head_file": str(head_file), "error": str(error)}
            logger.error("head_%s: refused head_file=%s, still serving %s: %s", self.task, head_file,
                         self.source["head_file"], error)  # fmt: skip
            return
        self.head, self.source, self.refused = head, source, None

    async def __call__(self, pooled: np.ndarray) -> np.ndarray:
        return head_probabilities(self.head, pooled)

    def identity(self) -> dict:
        context = serve.get_replica_context()
        identity = {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started, **self.source}
        return {**identity, "refused": self.refused}
