"""Application metrics an operator can graph (docs/serving.md, "Metrics"), through `ray.serve.metrics`.

Ray exports them on each node's metrics port (Prometheus text) with a `ray_` prefix, a counter with `_total`, and
Serve's `deployment`, `replica` and `application` tags on every series. Each replica creates its metric objects once
(`ingress_metrics()`, `encoder_metrics()`); recording is one call with its tags. Totals come from the counters: Ray's
exporter rebuilds a histogram's `_sum` from bucket midpoints, so only its buckets and `_count` are exact.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache

from ray.serve.metrics import Counter, Histogram

SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
# An answer the app did not serve: any 4xx, and 503 (overload, a restarting replica, a model timeout).
RETRYABLE_REFUSAL = 503
CLIENT_CLOSED = 499  # nginx's code: the client went away before the answer started


class IngressMetrics:
    """One ingress replica's: requests by route and status and their latency, refusals by reason, predictions by
    task, requests per batch and their wait in the batcher's queue."""

    def __init__(self):
        self.requests = Counter(
            "mtl_requests", "HTTP requests answered by an ingress replica", tag_keys=("route", "status")
        )
        self.latency = Histogram(
            "mtl_request_seconds",
            "Time from a request reaching the ingress replica to its answer, seconds",
            boundaries=SECONDS,
            tag_keys=("route", "status"),
        )
        self.refused = Counter("mtl_refused_requests", "Requests answered 4xx or 503, by reason", tag_keys=("reason",))
        self.task_requests = Counter(
            "mtl_task_requests", "/v1/predict requests answered with this task's predictions", tag_keys=("task",)
        )
        self.task_inputs = Counter(
            "mtl_task_inputs", "Texts or pairs this task predicted (answered requests)", tag_keys=("task",)
        )
        self.batch_requests = Histogram(
            "mtl_ingress_batch_requests",
            "Requests merged into one ingress batch (one encoder call, one call per head)",
            boundaries=SIZES,
        )
        self.queue_wait = Histogram(
            "mtl_ingress_queue_wait_seconds",
            "Time a request waits in the ingress batcher before its batch starts, seconds",
            boundaries=SECONDS,
        )

    def answered(self, route: str, status: int, seconds: float) -> None:
        tags = {"route": route, "status": str(status)}
        self.requests.inc(1, tags)
        self.latency.observe(seconds, tags)

    def refusal(self, reason: str) -> None:
        self.refused.inc(1, {"reason": reason})

    def predicted(self, tasks: list[str], inputs: int) -> None:
        for task in tasks:
            self.task_requests.inc(1, {"task": task})
            self.task_inputs.inc(inputs, {"task": task})

    def batch(self, waits: list[float]) -> None:
        """`Batcher`'s `on_batch`: one batch, each request's queue wait."""
        self.batch_requests.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(wait)


class EncoderMetrics:
    """One encoder replica's: ingress calls per batch and their queue wait, texts per batch, forward time."""

    def __init__(self):
        self.batch_calls = Histogram(
            "mtl_encoder_batch_calls",
            "Encoder calls (one per ingress batch, from every ingress replica) merged into one encoder batch",
            boundaries=SIZES,
        )
        self.queue_wait = Histogram(
            "mtl_encoder_queue_wait_seconds",
            "Time an encoder call waits in the encoder batcher before its batch starts, seconds",
            boundaries=SECONDS,
        )
        self.batch_texts = Histogram(
            "mtl_encoder_batch_texts", "Texts in one encoder batch (encoded successfully)", boundaries=SIZES
        )
        self.texts = Counter("mtl_encoder_texts", "Texts encoded")
        self.forward = Histogram(
            "mtl_encoder_forward_seconds",
            "Time to tokenise, encode and pool one encoder batch (its forward passes of max_batch_size), seconds",
            boundaries=SECONDS,
        )

    def batch(self, waits: list[float]) -> None:
        """`Batcher`'s `on_batch`: one batch, each call's queue wait."""
        self.batch_calls.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(wait)

    def encoded(self, texts: int, seconds: float) -> None:
        self.batch_texts.observe(texts)
        self.forward.observe(seconds)
        if texts:
            self.texts.inc(texts)


@cache
def ingress_metrics() -> IngressMetrics:
    """This process's (one replica's) ingress metrics, created on first use."""
    return IngressMetrics()


@cache
def encoder_metrics() -> EncoderMetrics:
    return EncoderMetrics()


def is_refusal(status: int) -> bool:
    return 400 <= status < 500 or status == RETRYABLE_REFUSAL


class RequestMetrics:
    """ASGI middleware (the app's outermost): every answer by route and status, and its latency. An exception that
    escapes becomes Starlette's 500 outside this middleware; a cancelled request (the client went away) is 499.

    The route is the matched route's path (a template, so the tag stays bounded); a request refused before routing
    (the body limit) gets its path if that is one of the app's OpenAPI paths, else `other`."""

    def __init__(self, app):
        self.app = app
        self.paths: set[str] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = None

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        finally:
            ingress_metrics().answered(self.route(scope), status or 500, time.perf_counter() - start)

    def route(self, scope) -> str:
        matched = scope.get("route")
        if matched is not None and hasattr(matched, "path"):
            return matched.path
        if self.paths is None:  # not `app.routes`: Serve re-mounts the routes under a nested router
            self.paths = set(scope["app"].openapi()["paths"])
        return scope["path"] if scope["path"] in self.paths else "other"
