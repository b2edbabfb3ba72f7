"""The Serve app against Infinity (`infinity-emb`, what a user would serve embeddings with instead), same export,
same texts, one server at a time, in one invocation: `python -m jobs.bench.serve --anchor infinity`.

Per server: `/v1/embeddings` (Infinity: `/embeddings`), one text per request, `requests` at concurrency 32 then a
tenth (at least 200) at concurrency 1, after a warm-up; ours also `/v1/predict` (every head from one encoder pass,
which Infinity would need one model per task for). Accuracy is part of speed: every server's vectors for the first
`COSINE_TEXTS` texts are compared row by row with Infinity fp32's (the sentence-transformers reference).
Infinity runs from the anchors' environment (`jobs.bench.anchors`), built on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import numpy as np
import requests

from jobs.bench.anchors import anchor_env, anchor_versions

COSINE_TEXTS = 512
INFINITY_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def embeddings_of(url: str, texts: list[str], step: int = 64) -> np.ndarray:
    """Vectors of `texts` from an OpenAI-style embeddings route, in input order (by each item's `index`)."""
    rows = []
    for start in range(0, len(texts), step):
        response = requests.post(url, json={"input": texts[start : start + step], "model": "bench"}, timeout=120)
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        rows += [item["embedding"] for item in data]
    vectors = np.asarray(rows, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_levels(url: str, texts: list[str], total: int, body) -> dict[str, dict]:
    from jobs.bench.serve import closed_loop

    asyncio.run(closed_loop(url, texts, 4, 64, body))  # warm-up
    levels = {}
    for concurrency, count in ((32, total), (1, max(200, total // 10))):
        result = asyncio.run(closed_loop(url, texts, concurrency, count, body))
        print(f"    c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  p50 {result['p50_ms']:6.1f} ms  "
              f"p99 {result['p99_ms']:6.1f} ms  errors {result['errors'] or 0}", flush=True)  # fmt: skip
        levels[f"c{concurrency}"] = result
    return levels


@contextlib.contextmanager
def infinity_server(model: Path, dtype: str, port: int, timeout: float = 300):
    """`infinity_emb v2` serving `model` on the CPU with its torch engine; yields its base URL."""
    binary = anchor_env() / "bin" / "infinity_emb"
    command = [str(binary), "v2", "--model-id", str(model.resolve()), "--served-model-name", "bench",
               "--engine", "torch", "--device", "cpu", "--dtype", INFINITY_DTYPES[dtype], "--port", str(port),
               "--no-model-warmup"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"infinity_emb exited {server.returncode}:\n{server.stderr.read()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"infinity_emb not healthy after {timeout} s")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def compare(model: Path, texts: list[str], total: int, ours: list[str], theirs: list[str]) -> dict:
    """Ours at each precision in `ours`, then Infinity at each in `theirs`; vectors compared with Infinity fp32's."""
    from jobs.bench.serve import embeddings_body, predict_body
    from serve_app.local import LocalServe, free_port

    result: dict = {"model": str(model), "requests": total, "infinity_version": anchor_versions().get("infinity_emb"),
                    "ours": {}, "infinity": {}}  # fmt: skip
    vectors: dict[str, np.ndarray] = {}
    sample = texts[:COSINE_TEXTS]
    for precision in ours:
        print(f"\nServe app (shipped serve_config.yaml, precision {precision}):", flush=True)
        served = LocalServe(model, precision=precision)
        try:
            print("  /v1/embeddings", flush=True)
            embeddings = load_levels(f"{served.url}/v1/embeddings", texts, total, embeddings_body)
            print("  /v1/predict (every head)", flush=True)
            predict = load_levels(f"{served.url}/v1/predict", texts, total, predict_body)
            vectors[f"ours_{precision}"] = embeddings_of(f"{served.url}/v1/embeddings", sample)
        finally:
            served.close()
        result["ours"][precision] = {"embeddings": embeddings, "predict": predict}
    for dtype in theirs:
        print(f"\nInfinity {result['infinity_version']} (torch engine, --dtype {INFINITY_DTYPES[dtype]}):", flush=True)
        with infinity_server(model, dtype, free_port()) as url:
            print("  /embeddings", flush=True)
            result["infinity"][dtype] = {"embeddings": load_levels(f"{url}/embeddings", texts, total, embeddings_body)}
            vectors[f"infinity_{dtype}"] = embeddings_of(f"{url}/embeddings", sample)
    reference = vectors.get("infinity_fp32")
    if reference is not None:
        for name, rows in vectors.items():
            cosine = (rows * reference).sum(axis=1)
            side, precision = name.split("_")
            result[side][precision]["min_cosine_to_infinity_fp32"] = float(cosine.min())
    print_table(result)
    return result


def print_table(result: dict) -> None:
    rows = [(f"ours {p} /v1/embeddings", r["embeddings"], r.get("min_cosine_to_infinity_fp32"))
            for p, r in result["ours"].items()]  # fmt: skip
    rows += [(f"ours {p} /v1/predict (all heads)", r["predict"], None) for p, r in result["ours"].items()]
    rows += [(f"Infinity {p} /embeddings", r["embeddings"], r.get("min_cosine_to_infinity_fp32"))
             for p, r in result["infinity"].items()]  # fmt: skip
    anchor = result["infinity"].get("fp32", {}).get("embeddings")
    print(f"\n{'server, route':<36} {'c=32 req/s':>10} {'x Inf fp32':>10} {'c=1 p50':>8} {'- Inf fp32':>10} "
          f"{'min cos':>8}")  # fmt: skip
    for name, levels, cosine in rows:
        ratio = f"{levels['c32']['throughput_rps'] / anchor['c32']['throughput_rps']:.2f}x" if anchor else "-"
        delta = f"{levels['c1']['p50_ms'] - anchor['c1']['p50_ms']:+.1f} ms" if anchor else "-"
        print(f"{name:<36} {levels['c32']['throughput_rps']:>10.1f} {ratio:>10} {levels['c1']['p50_ms']:>6.1f}ms "
              f"{delta:>10} {cosine if cosine is None else round(cosine, 5)!s:>8}")  # fmt: skip
    if anchor:
        print(
            "targets: /v1/embeddings c=32 >= 1.00x Infinity fp32; c=1 p50 <= Infinity fp32's + 2 ms; min cosine >= 0.99"
        )
