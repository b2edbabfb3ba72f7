"""Application metrics (serve_app/metrics.py, docs/serving.md "Metrics"): the ingress's middleware and error handlers
count every answer by route and status and every refusal by reason (no Ray); the served app, scraped from Ray's
Prometheus endpoint, moves each counter and histogram by exactly the traffic sent."""

import asyncio
import os
import time
from collections import Counter

import pytest
import requests
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from serve_app.batching import Batcher
from serve_app.errors import Refusal
from serve_app.metrics import ingress_metrics

TOKEN_ENV = "MTL_METRICS_TEST_TOKEN"
TOKEN = "s3cret-metrics"
REPORT_INTERVAL_MS = 1000  # Ray's floor; the default (10 s) would make the test wait


# --- without Ray: the wiring ---------------------------------------------------------------------------------------


class Texts(BaseModel):
    texts: list[str]


def wired_app() -> FastAPI:
    """A FastAPI app with the ingress's own middleware and error handlers (serve_app/ingress.py `api`), its route
    in an included router as Serve mounts the ingress's routes."""
    from serve_app.ingress import api

    app = FastAPI()
    app.user_middleware = list(api.user_middleware)
    app.exception_handlers = dict(api.exception_handlers)
    app.state.max_body_bytes = 1024
    router = APIRouter()

    @router.post("/v1/echo")
    async def echo(body: Texts) -> dict:
        if len(body.texts) > 2:
            raise Refusal(413, "too_many_texts", "texts: at most 2")
        if body.texts == ["busy"]:
            raise Refusal(503, "overloaded", "overloaded, retry later", headers={"Retry-After": "1"})
        if body.texts == ["plain"]:
            raise HTTPException(status_code=422, detail="tasks: no such task")
        if body.texts == ["bug"]:
            raise RuntimeError("a bug")
        return {"texts": body.texts}

    app.include_router(router)
    return app


def test_every_answer_is_counted_by_route_and_status_and_every_refusal_by_reason(monkeypatch):
    metrics = ingress_metrics()
    answered, refused = Counter(), Counter()
    monkeypatch.setattr(metrics, "answered", lambda route, status, seconds: answered.update([(route, status)]))
    monkeypatch.setattr(metrics, "refusal", lambda reason: refused.update([reason]))
    client = TestClient(wired_app(), raise_server_exceptions=False)
    bodies = [["a"], ["a", "b", "c"], ["busy"], ["plain"], ["bug"], ["a"]]
    statuses = [client.post("/v1/echo", json={"texts": texts}).status_code for texts in bodies]
    assert statuses == [200, 413, 503, 422, 500, 200]
    assert client.post("/v1/echo", json={"texts": "not a list"}).status_code == 422  # the schema's own 422
    assert client.post("/v1/echo", content=b"x" * 2000).status_code == 413  # the body limit, before routing
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/echo").status_code == 405
    assert answered == {
        ("/v1/echo", 200): 2,
        ("/v1/echo", 413): 2,
        ("/v1/echo", 503): 1,
        ("/v1/echo", 422): 2,
        ("/v1/echo", 500): 1,
        ("/v1/echo", 405): 1,
        ("other", 404): 1,
    }
    assert refused == {
        "too_many_texts": 1,
        "overloaded": 1,
        "invalid_request": 2,
        "body_too_large": 1,
        "not_found": 1,
        "method_not_allowed": 1,
    }


def test_the_batcher_reports_each_batch_once_with_each_items_queue_wait():
    reported: list[list[float]] = []

    async def double(items: list[int]) -> list[int]:
        await asyncio.sleep(0.05)
        if 3 in items:  # fails the batch: retried in halves, not reported again
            raise ValueError("three")
        return [item * 2 for item in items]

    async def run() -> list:
        batcher = Batcher(double, max_batch_size=8, on_batch=reported.append)
        return await asyncio.gather(*(batcher(item) for item in range(5)), return_exceptions=True)

    results = asyncio.run(run())
    assert results[:3] == [0, 2, 4] and isinstance(results[3], ValueError) and results[4] == 8
    assert [len(waits) for waits in reported] == [1, 4]  # the first caller runs alone, the rest queued meanwhile
    assert reported[0][0] < 0.01 and all(0.04 < wait < 1 for wait in reported[1])


# --- the served app, scraped ---------------------------------------------------------------------------------------


def scrape(url: str) -> list:
    """The `ray_mtl_*` samples of one scrape."""
    families = text_string_to_metric_families(requests.get(url, timeout=10).text)
    return [sample for family in families for sample in family.samples if sample.name.startswith("ray_mtl_")]


def total(samples: list, name: str, **labels: str) -> float:
    """Summed over every series (replica, deployment, ...) of `name` whose labels include `labels` (a bucket's `le`
    compared as a number)."""

    def same(key: str, got: str | None, want: str) -> bool:
        return got is not None and (float(got) == float(want) if key == "le" else got == want)

    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(same(key, sample.labels.get(key), value) for key, value in labels.items())
    )


@pytest.fixture(scope="module")
def served(tiny_export):
    import ray

    from serve_app.local import SERVE_ENV, LocalServe

    with pytest.MonkeyPatch.context() as patch:
        # Ray's processes read these when they start (the token: the ingress replicas' environment).
        for key, value in {**SERVE_ENV, "RAY_AUTH_MODE": "disabled", TOKEN_ENV: TOKEN}.items():
            patch.setenv(key, os.environ.get(key, value))
        assert not ray.is_initialized(), "another test left Ray running"
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}},
            _system_config={"metrics_report_interval_ms": REPORT_INTERVAL_MS},
        )
        try:
            # The node's metrics port, as an operator finds it (docs/serving.md "Metrics"): Ray chose a free one.
            (node,) = ray.nodes()
            harness = LocalServe(
                tiny_export, num_cpus=2, encoder_cpus=0.5, max_texts=4, max_body_bytes=4096, auth_token_env=TOKEN_ENV
            )
            yield harness, f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            harness.close()
        finally:
            ray.shutdown()  # a no-op after close(); not if the app failed to start


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_counters_and_histograms_move_by_exactly_the_traffic_sent(served):
    harness, metrics_url = served
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def post(path: str, body, headers=auth) -> int:
        return requests.post(f"{harness.url}{path}", json=body, headers=headers, timeout=60).status_code

    before = scrape(metrics_url)
    texts = iter(f"text number {n} , all different" for n in range(1000))  # no text repeats: nothing deduplicated
    # Sequential, so every request is its own ingress batch and every ingress batch its own encoder batch.
    assert [post("/v1/embed", {"texts": [next(texts) for _ in range(3)]}) for _ in range(5)] == [200] * 5
    assert [post("/v1/predict", {"texts": [next(texts) for _ in range(2)]}) for _ in range(4)] == [200] * 4
    assert [post("/v1/similarity", {"pairs": [[next(texts), next(texts)]]}) for _ in range(2)] == [200] * 2
    assert post("/v1/embed", {"texts": [next(texts) for _ in range(5)]}) == 413  # over max_texts
    assert post("/v1/embed", {"texts": ["x" * 5000]}) == 413  # over max_body_bytes
    assert post("/v1/embed", {"texts": []}) == 422
    assert post("/v1/predict", {"texts": [next(texts)]}, headers={}) == 401
    assert requests.get(f"{harness.url}/v1/nothing", headers=auth, timeout=10).status_code == 404
    batches = 5 + 4 + 2
    expected = {
        ("ray_mtl_requests_total", ("route", "/v1/embed"), ("status", "200")): 5,
        ("ray_mtl_requests_total", ("route", "/v1/predict"), ("status", "200")): 4,
        ("ray_mtl_requests_total", ("route", "/v1/similarity"), ("status", "200")): 2,
        ("ray_mtl_requests_total", ("route", "/v1/embed"), ("status", "413")): 2,
        ("ray_mtl_requests_total", ("route", "/v1/embed"), ("status", "422")): 1,
        ("ray_mtl_requests_total", ("route", "/v1/predict"), ("status", "401")): 1,
        ("ray_mtl_requests_total", ("route", "other"), ("status", "404")): 1,
        ("ray_mtl_request_seconds_count", ("route", "/v1/embed"), ("status", "200")): 5,
        ("ray_mtl_request_seconds_count", ("route", "/v1/predict"), ("status", "200")): 4,
        ("ray_mtl_request_seconds_count", ("route", "/v1/embed"), ("status", "413")): 2,
        ("ray_mtl_refused_requests_total",): 5,
        ("ray_mtl_refused_requests_total", ("reason", "too_many_texts")): 1,
        ("ray_mtl_refused_requests_total", ("reason", "body_too_large")): 1,
        ("ray_mtl_refused_requests_total", ("reason", "invalid_request")): 1,
        ("ray_mtl_refused_requests_total", ("reason", "unauthorized")): 1,
        ("ray_mtl_refused_requests_total", ("reason", "not_found")): 1,
        ("ray_mtl_task_requests_total", ("task", "sentiment")): 4,
        ("ray_mtl_task_requests_total", ("task", "topic")): 4,
        ("ray_mtl_task_inputs_total", ("task", "sentiment")): 8,
        ("ray_mtl_task_inputs_total", ("task", "topic")): 8,
        ("ray_mtl_ingress_batch_requests_count",): batches,
        ("ray_mtl_ingress_batch_requests_bucket", ("le", "1")): batches,  # one request each
        ("ray_mtl_ingress_queue_wait_seconds_count",): batches,
        ("ray_mtl_encoder_batch_calls_count",): batches,
        ("ray_mtl_encoder_queue_wait_seconds_count",): batches,
        ("ray_mtl_encoder_texts_total",): 5 * 3 + 4 * 2 + 2 * 2,
        ("ray_mtl_encoder_batch_texts_count",): batches,
        ("ray_mtl_encoder_batch_texts_bucket", ("le", "2")): 4 + 2,  # cumulative: batches of at most 2 texts
        ("ray_mtl_encoder_batch_texts_bucket", ("le", "4")): batches,
        ("ray_mtl_encoder_forward_seconds_count",): batches,
    }

    def moved(samples: list) -> dict:
        return {
            key: total(samples, key[0], **dict(key[1:])) - total(before, key[0], **dict(key[1:])) for key in expected
        }

    deadline = time.monotonic() + 60
    while (got := moved(scrape(metrics_url))) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert got == expected
    time.sleep(3 * REPORT_INTERVAL_MS / 1000)  # later reports add nothing: exactly the traffic, not at least
    assert moved(scrape(metrics_url)) == expected
