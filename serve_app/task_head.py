"""`TaskHead` deployment: one per task that has a head (not similarity); pooled vectors -> probabilities by the
task's type (`mtl.inference.exported_model.task_outputs`: softmax, a pair head's softmax over the two texts' pooled
batches, multilabel sigmoids).

Its weights file is `user_config.head_file` (default: the export's `heads/<task>.safetensors`), so a new head rolls
out with `serve deploy` as a lightweight update of this deployment alone. A head file for another task, task type,
label order or encoder is refused: the replica keeps serving the head it has, logs the error and shows it under
`refused` in its identity (GET /v1/model, `heads.<task>.refused`). (Raising from `reconfigure` instead would make
Serve replace the replica, and every new one would fail the same way: no head would serve at all.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import numpy as np
from ray import serve

from mtl.export_format import head_path, read_manifest, task_type
from mtl.inference.exported_model import load_task_head, task_outputs

logger = logging.getLogger("ray.serve")


@serve.deployment
class TaskHead:
    def __init__(self, model_dir: str, task: str):
        self.model_dir = model_dir
        self.task = task
        self.started = time.time()
        self.task_type = task_type(read_manifest(model_dir), task)  # the type every head_file is checked against
        self.head = load_task_head(model_dir, task)  # the export's own head; an unreadable export fails the start
        self.source = self._source(None)
        self.refused: dict | None = None

    def _source(self, head_file: str | None) -> dict:
        path = head_path(self.model_dir, self.task, head_file)
        return {"head_file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}

    def reconfigure(self, user_config: dict) -> None:
        """Load `head_file` (or the export's own); a file for another task, type, label order or encoder, or an
        unreadable one, keeps the current head."""
        head_file = user_config.get("head_file")
        try:
            head, source = load_task_head(self.model_dir, self.task, head_file), self._source(head_file)
        except (OSError, ValueError) as error:
            self.refused = {"head_file": str(head_file), "error": str(error)}
            logger.error("head_%s: refused head_file=%s, still serving %s: %s", self.task, head_file,
                         self.source["head_file"], error)  # fmt: skip
            return
        self.head, self.source, self.refused = head, source, None

    async def __call__(self, pooled: np.ndarray, pooled_pair: np.ndarray | None = None) -> np.ndarray:
        """Probabilities `(B, n_labels)` for pooled vectors `(B, H)` (pair tasks: and the second texts' `(B, H)`)."""
        return task_outputs(self.task_type, self.head, pooled, pooled_pair)

    def identity(self) -> dict:
        context = serve.get_replica_context()
        identity = {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started, **self.source}
        return {**identity, "refused": self.refused}
