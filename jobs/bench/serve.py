"""Benchmark: the Serve app vs a hand-written single-process FastAPI server, same export, same load.

    python -m jobs.bench.serve [--model EXPORT] [--requests 2000] [--bf16] [--kill]

A closed-loop async load generator (aiohttp) posts one text per request to /v1/predict at concurrency
1, 8 and 32: throughput, p50/p99 latency and error counts. The baseline is what a user would write first:
one uvicorn + FastAPI process, transformers forward per request, no batching. Also measured in-process:
the model's own forward time for one text (tokenise -> encode -> pool -> heads), to show the serving overhead.
Default model: runs/production/export when present, else the untouched default backbone (random heads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from jobs.bench.embed import default_export, load_texts
from mtl.export_format import is_export

LEVELS = (1, 8, 32)


def predict_body(text: str) -> dict:
    return {"texts": [text]}


def embeddings_body(text: str) -> dict:
    return {"input": text, "model": "bench"}


async def closed_loop(url: str, texts: list[str], concurrency: int, total: int, body=predict_body) -> dict:
    """`total` requests of one text each (`body(text)` as JSON) from `concurrency` clients, each sending its next
    request when the last one is answered."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0

    async def worker(session):
        nonlocal issued
        while issued < total:
            text = texts[issued % len(texts)]
            issued += 1
            started = time.perf_counter()
            try:
                async with session.post(url, json=body(text)) as response:
                    await response.read()
                    if response.status != 200:
                        errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                        continue
            except aiohttp.ClientError as error:
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
    }


async def kill_under_load(
    url: str,
    texts: list[str],
    kill,
    concurrency: int = 16,
    duration_s: float = 20.0,
    kill_at_s: float = 4.0,
    timeout_s: float = 30.0,
) -> dict:
    """Closed-loop load on `url` for `duration_s`; `kill()` (e.g. SIGKILL of the encoder replica) runs at `kill_at_s`.

    Returns requests sent, ok, failed (non-200 or connection error), hung (no answer within `timeout_s`) and
    recover_s: from the kill to the end of the last request that failed or took over 1 s (0: nothing noticed)."""
    import aiohttp

    outcomes: list[tuple[float, float, str]] = []  # (start, end, "ok" | "failed" | "hung")
    started = time.perf_counter()
    killed_at: list[float] = []

    async def worker(session):
        index = 0
        while time.perf_counter() - started < duration_s:
            begin = time.perf_counter()
            try:
                async with session.post(url, json={"texts": [texts[index % len(texts)]]}) as response:
                    await response.read()
                    outcome = "ok" if response.status == 200 else "failed"
            except TimeoutError:
                outcome = "hung"
            except aiohttp.ClientError:
                outcome = "failed"
            outcomes.append((begin, time.perf_counter(), outcome))
            index += 1

    async def killer():
        await asyncio.sleep(kill_at_s)
        killed_at.append(time.perf_counter())
        await asyncio.to_thread(kill)

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(killer(), *(worker(session) for _ in range(concurrency)))
    kill_time = killed_at[0]
    disturbed = [end for begin, end, outcome in outcomes if end > kill_time and (outcome != "ok" or end - begin > 1.0)]
    return {
        "concurrency": concurrency,
        "requests": len(outcomes),
        "ok": sum(outcome == "ok" for *_, outcome in outcomes),
        "failed": sum(outcome == "failed" for *_, outcome in outcomes),
        "hung": sum(outcome == "hung" for *_, outcome in outcomes),
        "recover_s": max(disturbed) - kill_time if disturbed else 0.0,
        "ok_after_recovery": sum(
            outcome == "ok" and begin > (max(disturbed) if disturbed else kill_time) for begin, _, outcome in outcomes
        ),
    }


def load(url: str, texts: list[str], total: int) -> list[dict]:
    asyncio.run(closed_loop(url, texts, 4, 40))  # warm-up
    results = []
    for concurrency in LEVELS:
        count = total if concurrency == LEVELS[-1] else max(100, total // 5)
        result = asyncio.run(closed_loop(url, texts, concurrency, count))
        print(
            f"  c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
            f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors'] or 0}  ({count} requests)",
            flush=True,
        )
        results.append(result)
    return results


def hops_ms(served, text: str, count: int = 200) -> dict:
    """p50 of each leg at concurrency 1: HTTP to the ingress and back (GET /healthz), a handle call to the encoder
    (one text) and to one head (one vector) from this process, and the two routes end to end."""
    session = requests.Session()

    def p50(call) -> float:
        for _ in range(20):
            call()
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            call()
            timings.append(time.perf_counter() - started)
        return round(float(np.median(timings)) * 1000, 2)

    async def handle_legs() -> dict:
        encoder = served.handle("Encoder")
        head = served.handle(f"head_{read_tasks(served)[0]}")
        vector = await encoder.encode.remote([text])

        async def ap50(call) -> float:
            for _ in range(20):
                await call()
            timings = []
            for _ in range(count):
                started = time.perf_counter()
                await call()
                timings.append(time.perf_counter() - started)
            return round(float(np.median(timings)) * 1000, 2)

        return {"encoder_call": await ap50(lambda: encoder.encode.remote([text])),
                "head_call": await ap50(lambda: head.remote(vector))}  # fmt: skip

    legs = {"http_ingress_only": p50(lambda: session.get(f"{served.url}/healthz"))}
    legs.update(asyncio.run(handle_legs()))
    legs["embed_route"] = p50(lambda: session.post(f"{served.url}/v1/embed", json={"texts": [text]}))
    legs["predict_route"] = p50(lambda: session.post(f"{served.url}/v1/predict", json={"texts": [text]}))
    return legs


def read_tasks(served) -> list[str]:
    return list(requests.get(f"{served.url}/v1/model", timeout=30).json()["tasks"])


def forward_ms(model_dir: Path, texts: list[str]) -> float:
    """p50 of the model's own single-text predict (in this process, no HTTP, no Ray)."""
    from mtl.inference.exported_model import ExportedModel

    model = ExportedModel.load(model_dir)
    for text in texts[:10]:
        model.predict([text])
    timings = []
    for text in texts[:200]:
        started = time.perf_counter()
        model.predict([text])
        timings.append(time.perf_counter() - started)
    return float(np.median(timings) * 1000)


def wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.5)
    raise TimeoutError(url)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export directory")
    parser.add_argument("--data", help="Parquet glob with a `text` column (default: shared SST-2 or the sample)")
    parser.add_argument("--requests", type=int, default=2000, help="requests at the highest concurrency")
    parser.add_argument("--bf16", action="store_true", help="also load-test the Serve app with precision: bf16")
    parser.add_argument(
        "--kill", action="store_true", help="also SIGKILL the encoder replica under load: failed, hung, s to recover"
    )
    parser.add_argument("--anchor", choices=["infinity"], help="instead: the app against Infinity (serve_anchor.py)")
    parser.add_argument("--precisions", default="fp32,bf16", help="with --anchor: our precisions to serve")
    parser.add_argument("--anchor-precisions", default="fp32,bf16", help="with --anchor: Infinity's --dtype")
    args = parser.parse_args(argv)
    production = Path("runs/production/export")
    model = Path(args.model) if args.model else production if is_export(production) else default_export()
    texts, source = load_texts(args.data, 2000)
    print(f"model {model}; texts from {source}; cores {os.cpu_count()}")
    if args.anchor:
        from jobs.bench.serve_anchor import compare

        result = compare(model, texts, args.requests, args.precisions.split(","), args.anchor_precisions.split(","))
        print(json.dumps(result))
        return result
    result: dict = {"model": str(model), "forward_p50_ms": forward_ms(model, texts)}
    print(f"model forward, one text, in-process: p50 {result['forward_p50_ms']:.1f} ms")

    from serve_app.local import LocalServe

    served = LocalServe(model)
    print("Ray Serve app (shipped serve_config.yaml, fp32):")
    result["serve"] = load(f"{served.url}/v1/predict", texts, args.requests)
    result["hops_ms"] = hops_ms(served, texts[0])
    print("  per leg at c=1, p50 ms:", json.dumps(result["hops_ms"]), flush=True)
    if args.kill:
        pid = served.call("Encoder", "identity")["pid"]
        result["kill"] = asyncio.run(kill_under_load(f"{served.url}/v1/predict", texts,
                                                     lambda: os.kill(pid, signal.SIGKILL)))  # fmt: skip
        print("  encoder replica SIGKILLed under load (c=16, 20 s):", json.dumps(result["kill"]), flush=True)
    if args.bf16:
        config = served.config
        config["applications"][0]["args"]["precision"] = "bf16"
        served.deploy(config)
        print("Ray Serve app, precision: bf16:")
        result["serve_bf16"] = load(f"{served.url}/v1/predict", texts, args.requests)
    served.close()

    from serve_app.local import free_port

    port = free_port()
    baseline = subprocess.Popen(
        [sys.executable, "-m", "jobs.bench.baseline_server", "--model", str(model), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz")
        print("hand-written baseline (uvicorn + FastAPI, one process, no batching):")
        result["baseline"] = load(f"http://127.0.0.1:{port}/v1/predict", texts, args.requests)
    finally:
        baseline.terminate()
        baseline.wait(timeout=30)

    for key in [k for k in ("serve", "serve_bf16") if k in result]:
        print(f"\n{key:>11} {'serve req/s':>12} {'baseline req/s':>15} {'ratio':>6} {'serve p50':>10} {'base p50':>9}")
        for ours, theirs in zip(result[key], result["baseline"], strict=True):
            ratio = ours["throughput_rps"] / theirs["throughput_rps"]
            level = f"c={ours['concurrency']}"
            print(
                f"{level:>11} {ours['throughput_rps']:>12.1f} {theirs['throughput_rps']:>15.1f} "
                f"{ratio:>5.2f}x {ours['p50_ms']:>8.1f}ms {theirs['p50_ms']:>7.1f}ms"
            )
    overhead = result["serve"][0]["p50_ms"] - result["forward_p50_ms"]
    print(f"serving overhead at c=1: p50 {result['serve'][0]['p50_ms']:.1f} ms - forward {result['forward_p50_ms']:.1f}"
          f" ms = {overhead:.1f} ms")  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
