"""`Encoder` deployment: texts -> pooled vectors, with `@serve.batch` across concurrent requests."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import torch
from ray import serve

from mtl.inference import ExportedModel


@serve.deployment(name="Encoder")
class Encoder:
    def __init__(self, model_dir: str, precision: str, threads: int | None, device: str = "cpu"):
        if threads:
            torch.set_num_threads(threads)
        self.model = ExportedModel.load(model_dir, device=device, precision=precision)
        self.started = time.time()

    def reconfigure(self, user_config: dict) -> None:
        """Batch size and wait are runtime knobs: `user_config: {max_batch_size, batch_wait_timeout_s}`."""
        if "max_batch_size" in user_config:
            self.encode_one.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.encode_one.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode_one(self, texts: list[str]) -> list[np.ndarray]:
        # The forward pass runs off the event loop so new requests keep queueing for the next batch.
        pooled = await asyncio.to_thread(self.model.encode, texts, len(texts))
        return list(pooled.numpy())

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Un-normalised pooled vectors `(len(texts), dim)`; each text joins whatever batch is forming."""
        return np.stack(await asyncio.gather(*(self.encode_one(text) for text in texts)))

    def identity(self) -> dict:
        context = serve.get_replica_context()
        return {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started}
