"""`Encoder` deployment: texts -> pooled vectors; concurrent calls (one per ingress batch) merge into one."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
import torch
from ray import serve

from mtl.inference.exported_model import ExportedModel
from mtl.model.precision import resolve_precision
from serve_app.batching import Batcher
from serve_app.metrics import encoder_metrics

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Encoder")
class Encoder:
    def __init__(self, model_dir: str, precision: str, threads: int | None, device: str = "cpu"):
        self.precision = resolve_precision(precision, device)
        if threads is None and self.precision == "bf16" and device == "cpu":
            threads = 1  # bf16 forwards of a few texts run faster on one thread; the other cores serve the ingress
        if threads:
            torch.set_num_threads(threads)
        logger.info("encoder precision %s (asked: %s) on %s, %d torch threads", self.precision, precision, device,
                    torch.get_num_threads())  # fmt: skip
        self.model = ExportedModel.load(model_dir, device=device, precision=self.precision, with_heads=False)
        self.max_batch_size = 32
        self.metrics = encoder_metrics()
        self.calls = Batcher(self.encode_calls, max_batch_size=16, on_batch=self.metrics.batch)
        self.started = time.time()

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (`user_config`): `max_batch_size` texts per forward pass, `batch_wait_timeout_s`."""
        self.max_batch_size = int(user_config.get("max_batch_size", self.max_batch_size))
        self.calls.wait_s = float(user_config.get("batch_wait_timeout_s", self.calls.wait_s))

    async def encode_calls(self, calls: list[list[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Concurrent calls (one per ingress batch, from every ingress replica) merged; forward passes of
        `max_batch_size` texts. Per call: its vectors and each text's token count (`ExportedModel.encode_counted`)."""
        texts = [text for call in calls for text in call]
        # Off the event loop, so new calls keep queueing for the next batch meanwhile.
        began = time.perf_counter()
        pooled, counts = await asyncio.to_thread(self.model.encode_counted, texts, self.max_batch_size)
        pooled = pooled.numpy()
        self.metrics.encoded(len(texts), time.perf_counter() - began)
        bounds = np.cumsum([0] + [len(call) for call in calls])
        return [(pooled[start:end], counts[start:end]) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    async def encode(self, texts: list[str]) -> np.ndarray:
        """Un-normalised pooled vectors `(len(texts), dim)`."""
        return (await self.calls(texts))[0]

    async def encode_counted(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode`, and each text's tokens as the encoder read them (`max_seq_length + 1`: the window cut it). The
        ingress counts /v1/embeddings usage and refuses over-long texts from these, without a tokenizer of its own."""
        return await self.calls(texts)

    def identity(self) -> dict:
        context = serve.get_replica_context()
        return {"pid": os.getpid(), "replica": context.replica_id.unique_id, "started": self.started,
                "precision": self.precision, "threads": torch.get_num_threads()}  # fmt: skip
