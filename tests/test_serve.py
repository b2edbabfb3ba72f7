"""The Serve application on a tiny export: endpoints, parity with the offline model, batching across requests,
the OpenAI embeddings API, bad input (unencodable texts fail alone), body limit, head rollout and refusal, any
export's tasks, a killed replica."""

import asyncio
import base64
import copy
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import torch
import yaml

from mtl.inference.exported_model import ExportedModel
from mtl.model.heads import save_head
from serve_app.local import SHIPPED_CONFIG, LocalServe
from tests.conftest import make_tiny_export

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
TEXTS = ["a gripping , beautiful film", "who wrote hamlet ?", "dull and lifeless", "how far is the moon ?"]


@pytest.fixture(scope="module")
def served(tiny_export):
    harness = LocalServe(tiny_export, num_cpus=2, encoder_cpus=0.5, precision="fp32")  # compared with fp32 offline
    yield harness
    harness.close()


def post(served, path, body, **kwargs):
    return requests.post(f"{served.url}{path}", json=body, timeout=60, **kwargs)


def test_health_model_and_openapi(served):
    assert requests.get(f"{served.url}/healthz", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{served.url}/v1/model", timeout=10).json()
    assert info["tasks"]["topic"] == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    assert info["pooling"] == "mean" and info["dim"] == 32 and info["max_seq_length"] == 32
    assert info["limits"] == {"max_texts": 256, "max_chars": 2000, "max_body_bytes": 4 * 1024 * 1024}
    assert set(info["heads"]) == {"sentiment", "topic"}
    assert info["encoder"]["precision"] == "fp32" and info["encoder"]["pid"] > 0  # as the fixture asked
    schema = requests.get(f"{served.url}/openapi.json", timeout=10).json()
    assert {"/v1/embed", "/v1/embeddings", "/v1/predict", "/v1/similarity", "/v1/model", "/healthz"} <= set(
        schema["paths"]
    )
    assert requests.get(f"{served.url}/docs", timeout=10).status_code == 200


def test_served_embeddings_and_predictions_equal_the_offline_model(served, tiny_export):
    offline = ExportedModel.load(tiny_export)
    embedded = post(served, "/v1/embed", {"texts": TEXTS}).json()
    assert embedded["dim"] == 32
    ours = np.asarray(embedded["embeddings"])
    cosine = (ours * offline.embed(TEXTS)).sum(axis=1)
    assert np.all(cosine >= 0.999), cosine
    raw = np.asarray(post(served, "/v1/embed", {"texts": TEXTS, "normalize": False}).json()["embeddings"])
    np.testing.assert_allclose(raw, offline.embed(TEXTS, normalized=False), rtol=1e-4, atol=1e-5)
    predictions = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    expected = offline.predict(TEXTS)
    for got, want in zip(predictions, expected, strict=True):
        assert set(got) == {"sentiment", "topic"}
        for task in got:
            assert got[task]["label"] == want[task]["label"] and got[task]["label_id"] == want[task]["label_id"]
            np.testing.assert_allclose(
                list(got[task]["probabilities"].values()), list(want[task]["probabilities"].values()), atol=1e-5
            )
    only = post(served, "/v1/predict", {"texts": TEXTS[:1], "tasks": ["topic"]}).json()["predictions"]
    assert list(only[0]) == ["topic"]
    scores = post(served, "/v1/similarity", {"pairs": [[TEXTS[0], TEXTS[0]], [TEXTS[0], TEXTS[1]]]}).json()["scores"]
    vectors = offline.embed(TEXTS[:2])
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)


def test_a_full_request_is_split_into_encoder_batches(served, tiny_export):
    texts = [f"sentence number {i} about something" for i in range(256)]
    ours = np.asarray(post(served, "/v1/embed", {"texts": texts}).json()["embeddings"])
    assert ours.shape == (256, 32)
    assert np.all((ours * ExportedModel.load(tiny_export).embed(texts)).sum(axis=1) >= 0.999)


BAD = [
    ("/v1/embed", {"texts": []}, 422, "texts"),
    ("/v1/embed", {"texts": ["fine", ""]}, 422, "index 1 is empty"),
    ("/v1/embed", {"texts": ["fine", 7]}, 422, "texts"),
    ("/v1/embed", {"texts": "not a list"}, 422, "texts"),
    ("/v1/embed", {"text": ["typo in the field name"]}, 422, "text"),
    ("/v1/embed", {"texts": ["x"] * 257}, 413, "at most 256"),
    ("/v1/embed", {"texts": ["x" * 2001]}, 413, "texts[0]: 2001 characters"),
    ("/v1/predict", {"texts": ["fine"], "tasks": ["nope"]}, 422, "unknown task(s) ['nope']"),
    ("/v1/predict", {"texts": ["fine"], "tasks": []}, 422, "tasks"),
    ("/v1/similarity", {"pairs": [["only one"]]}, 422, "pairs"),
    ("/v1/similarity", {"pairs": [["a", " "]]}, 422, "pair at index 0 has an empty text"),
    ("/v1/similarity", {"pairs": [["a", "b"]] * 129}, 413, "at most 256"),
    # requests sends a lone surrogate as the JSON escape "\ud800" (json.dumps, ensure_ascii), as a client would
    ("/v1/embed", {"texts": ["fine", "a\ud800"]}, 422, "text at index 1 holds U+D800 (a lone surrogate)"),
    ("/v1/embed", {"texts": ["nul\x00"]}, 422, "text at index 0 holds U+0000 (NUL) at character 3"),
    ("/v1/predict", {"texts": ["fine", "\udfff"]}, 422, "text at index 1 holds U+DFFF"),
    ("/v1/similarity", {"pairs": [["a", "b"], ["c", "\ud800"]]}, 422, "pair at index 1, text 1 holds U+D800"),
    ("/v1/embeddings", {"input": "\ud800"}, 422, "input holds U+D800"),
    ("/v1/embeddings", {"input": ["fine", "\ud800"]}, 422, "text at index 1 holds U+D800"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{p}-{s}-{m}" for p, _, s, m in BAD])
def test_bad_input_is_a_4xx_naming_the_field(served, path, body, status, message):
    response = post(served, path, body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_unencodable_texts_fail_alone_among_concurrent_requests(served, tiny_export):
    """16 concurrent requests, 2 of them holding a lone surrogate: those 2 are a 422 naming the index (before any
    batch), the 14 others answer with their own vectors (once, the tokenizer's error failed the whole batch)."""
    offline = ExportedModel.load(tiny_export)
    texts = [[f"request {i} says hello", f"another one {i}"] for i in range(16)]
    texts[3][1] = "\U0001f600 a valid pair in JSON"  # an escaped surrogate pair is one code point: served
    bodies = [json.dumps({"texts": pair}) for pair in texts]  # ASCII JSON: a lone surrogate is sent as its escape
    bodies[5] = '{"texts": ["fine", "bad \\ud800 here"]}'
    bodies[11] = '{"texts": ["\\udfff", "fine"]}'
    assert "\\ud83d\\ude00" in bodies[3] and "\\ud800" in bodies[5]

    def send(body):
        return requests.post(f"{served.url}/v1/embed", data=body, headers={"content-type": "application/json"},
                             timeout=60)  # fmt: skip

    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(send, bodies))
    assert responses[5].status_code == 422 and "text at index 1 holds U+D800" in responses[5].text
    assert responses[11].status_code == 422 and "text at index 0 holds U+DFFF" in responses[11].text
    for i, response in enumerate(responses):
        if i not in (5, 11):
            assert response.status_code == 200, (i, response.text)
            np.testing.assert_allclose(response.json()["embeddings"], offline.embed(texts[i]), atol=1e-5)


def test_a_failing_call_merged_at_the_encoder_fails_alone(served, tiny_export):
    """Past the schemas (a direct handle call), the encoder's batch of merged calls is retried in halves: only the
    call holding the text the tokenizer raises on fails."""
    offline = ExportedModel.load(tiny_export)
    calls = [[f"call {i} text"] * 8 for i in range(12)]
    calls[6] = ["fine", "bad \ud800"]

    async def encode_all():
        encoder = served.handle("Encoder")
        return await asyncio.gather(*(encoder.encode.remote(texts) for texts in calls), return_exceptions=True)

    results = asyncio.run(encode_all())
    assert isinstance(results[6], TypeError), results[6]
    for i, result in enumerate(results):
        if i != 6:
            np.testing.assert_allclose(result, offline.embed(calls[i], normalized=False), rtol=1e-4, atol=1e-5)


def test_malformed_json_is_422(served):
    response = requests.post(
        f"{served.url}/v1/embed", data="{not json", headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 422 and "json" in response.text.lower()


def head_deployment_config(served, task: str, head_file) -> dict:
    config = copy.deepcopy(served.config)
    config["applications"][0]["deployments"] = [{"name": f"head_{task}", "user_config": {"head_file": str(head_file)}}]
    return config


def random_head(path, task, labels, encoder, hidden=32, seed=7):
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, len(labels))
    with torch.no_grad():
        head.weight.copy_(torch.randn(len(labels), hidden, generator=generator))
        head.bias.copy_(torch.randn(len(labels), generator=generator))
    save_head(head, path, task, labels, encoder)
    return path


def test_rolling_out_one_head_leaves_the_encoder_and_other_heads_running(served, tiny_export, tmp_path):
    encoder_before = served.call("Encoder", "identity")
    topic_before = served.call("head_topic", "identity")
    predictions_before = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    fingerprint = json.loads((tiny_export / "mtl.json").read_text())["encoder_fingerprint"]
    new_head = random_head(tmp_path / "sentiment.safetensors", "sentiment", ["negative", "positive"], fingerprint)
    served.deploy(head_deployment_config(served, "sentiment", new_head))
    deadline = time.monotonic() + 60
    while served.call("head_sentiment", "identity")["head_file"] != str(new_head):
        assert time.monotonic() < deadline, "head_sentiment never picked up the new head file"
        time.sleep(0.5)

    assert served.call("Encoder", "identity") == encoder_before  # same replica, same process
    assert served.call("head_topic", "identity") == topic_before
    predictions_after = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    assert [p["topic"] for p in predictions_after] == [p["topic"] for p in predictions_before]
    assert [p["sentiment"] for p in predictions_after] != [p["sentiment"] for p in predictions_before]
    own = tiny_export / "heads" / "sentiment.safetensors"  # back to the export's head for the tests after this one
    served.deploy(head_deployment_config(served, "sentiment", own))
    while served.call("head_sentiment", "identity")["head_file"] != str(own):
        time.sleep(0.5)
    restored = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    assert [p["sentiment"]["label"] for p in restored] == [p["sentiment"]["label"] for p in predictions_before]


MISMATCHES = [
    ("task", dict(task="topic"), "it is the head of task 'topic', not 'sentiment'"),
    ("labels", dict(labels=["positive", "negative"]), "its labels are ['positive', 'negative']"),
    ("encoder", dict(encoder="0" * 32), "it was trained with encoder 00000000"),
]


@pytest.mark.parametrize(("what", "change", "message"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_a_mismatched_head_is_refused_and_the_old_head_keeps_serving(served, tiny_export, tmp_path, what, change,
                                                                       message):  # fmt: skip
    before = served.call("head_sentiment", "identity")
    predictions_before = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    fingerprint = json.loads((tiny_export / "mtl.json").read_text())["encoder_fingerprint"]
    spec = {"task": "sentiment", "labels": ["negative", "positive"], "encoder": fingerprint, **change}
    bad = random_head(tmp_path / f"bad-{what}.safetensors", spec["task"], spec["labels"], spec["encoder"], seed=11)
    served.deploy(head_deployment_config(served, "sentiment", bad))
    deadline = time.monotonic() + 60
    while not (refused := served.call("head_sentiment", "identity")["refused"]):
        assert time.monotonic() < deadline, "head_sentiment never answered the new head_file"
        time.sleep(0.5)
    assert refused["head_file"] == str(bad) and message in refused["error"], refused
    shown = requests.get(f"{served.url}/v1/model", timeout=10).json()["heads"]["sentiment"]["refused"]
    assert message in shown["error"]
    assert served.call("head_sentiment", "identity")["head_file"] == before["head_file"]
    assert post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"] == predictions_before
    served.deploy(head_deployment_config(served, "sentiment", before["head_file"]))  # back to a good config


def test_shipped_config_is_valid_and_binds_loopback():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    app = schema.applications[0]
    assert app.import_path == "serve_app.app:build_app"
    from serve_app.args import AppArgs

    args = AppArgs.model_validate(app.args)
    assert args.encoder_cpus + 2 * args.head_cpus + args.ingress_replicas * args.ingress_cpus <= 2  # fits 2 cores
    assert "deployments" not in app.model_fields_set  # no per-task entries: heads follow the export


def test_concurrent_requests_each_get_their_own_rows(served, tiny_export):
    """Requests batched together (embed, predict with different tasks, similarity) are split back correctly."""
    offline = ExportedModel.load(tiny_export)
    texts = [f"request {i} says something {'good' if i % 2 else 'odd'}" for i in range(24)]
    calls = []
    for i, text in enumerate(texts):
        if i % 3 == 0:
            calls.append(("/v1/embed", {"texts": [text, texts[-1]]}))
        elif i % 3 == 1:
            calls.append(("/v1/predict", {"texts": [text], "tasks": ["topic"] if i % 2 else None}))
        else:
            calls.append(("/v1/similarity", {"pairs": [[text, texts[0]]]}))
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: post(served, *call).json(), calls))
    for (path, body), answer in zip(calls, answers, strict=True):
        if path == "/v1/embed":
            np.testing.assert_allclose(answer["embeddings"], offline.embed(body["texts"]), atol=1e-5)
        elif path == "/v1/predict":
            want = offline.predict(body["texts"], body["tasks"])
            assert [{t: p["label"] for t, p in row.items()} for row in answer["predictions"]] == [
                {t: p["label"] for t, p in row.items()} for row in want
            ]
        else:
            vectors = offline.embed(body["pairs"][0])
            assert answer["scores"][0] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)


def test_openai_client_embeddings_equal_v1_embed(served, tiny_export):
    from openai import OpenAI
    from transformers import AutoTokenizer

    client = OpenAI(base_url=f"{served.url}/v1", api_key="unused-without-a-token", max_retries=0)
    ours = np.asarray(post(served, "/v1/embed", {"texts": TEXTS}).json()["embeddings"])
    for encoding_format in ("float", "base64", None):  # None: the client asks for base64 and decodes it itself
        options = {"encoding_format": encoding_format} if encoding_format else {}
        result = client.embeddings.create(input=TEXTS, model="mtl", **options)
        assert [item.index for item in result.data] == list(range(len(TEXTS)))
        vectors = [item.embedding for item in result.data]
        if encoding_format == "base64":
            vectors = [np.frombuffer(base64.b64decode(vector), dtype=np.float32) for vector in vectors]
        np.testing.assert_allclose(vectors, ours, atol=1e-6)
    single = client.embeddings.create(input=TEXTS[0], model="mtl")
    np.testing.assert_allclose(single.data[0].embedding, ours[0], atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    expected = sum(len(ids) for ids in tokenizer(TEXTS, truncation=True, max_length=32)["input_ids"])
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected
    assert result.model == tiny_export.resolve().name  # the served export's version id, whatever the request named
    bad = requests.post(f"{served.url}/v1/embeddings", json={"input": ["fine", ""]}, timeout=30)
    assert bad.status_code == 422 and "index 1 is empty" in bad.text
    too_many = requests.post(f"{served.url}/v1/embeddings", json={"input": ["x"] * 2049}, timeout=30)
    assert too_many.status_code == 422 and "at most 2048" in too_many.text


def test_a_body_over_the_limit_is_413_before_parsing(served):
    big = b'{"texts": ["' + b"x" * (4 * 1024 * 1024) + b'"]}'
    declared = requests.post(f"{served.url}/v1/embed", data=big, headers={"content-type": "application/json"},
                             timeout=30)  # fmt: skip
    assert declared.status_code == 413 and "max_body_bytes" in declared.json()["detail"]
    pieces = iter([big[start : start + 65536] for start in range(0, len(big), 65536)])  # chunked: no length header
    chunked = requests.post(f"{served.url}/v1/embed", data=pieces, headers={"content-type": "application/json"},
                            timeout=30)  # fmt: skip
    assert chunked.status_code == 413
    assert post(served, "/v1/embed", {"texts": TEXTS}).status_code == 200


def test_an_export_with_other_tasks_serves_with_the_shipped_config(served, tiny_backbone, tmp_path):
    tasks = {"intent": ["book", "cancel", "ask"], "toxicity": ["clean", "toxic"], "language": ["en", "de", "fr", "es"]}
    export = make_tiny_export(tmp_path / "export", tiny_backbone, tasks=tasks)
    original = served.config
    config = copy.deepcopy(original)
    config["applications"][0].pop("deployments", None)  # as shipped: no per-task entries (earlier tests add one)
    config["applications"][0]["args"]["model_dir"] = str(export)
    try:
        served.deploy(config)
        deadline = time.monotonic() + 90
        while set(requests.get(f"{served.url}/v1/model", timeout=10).json()["tasks"]) != set(tasks):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        predictions = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
        want = ExportedModel.load(export).predict(TEXTS)
        assert [{t: p["label"] for t, p in row.items()} for row in predictions] == [
            {t: p["label"] for t, p in row.items()} for row in want
        ]
    finally:
        served.deploy(original)


def test_an_export_with_every_task_type_serves_pairs_and_label_sets(served, tiny_backbone, tmp_path):
    """Under Serve: a head deployment per task that has one (none for similarity), pair requests through the pair
    head's two pooled batches, multilabel sets, each equal to the offline model."""
    tasks = {
        "sentiment": ["negative", "positive"],
        "nli": {"type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
        "sts": {"type": "similarity", "score_range": [0, 5]},
        "tags": {"type": "multilabel", "labels": ["a", "b", "c"]},
    }
    export = make_tiny_export(tmp_path / "export", tiny_backbone, tasks=tasks)
    original = served.config
    config = copy.deepcopy(original)
    config["applications"][0].pop("deployments", None)
    config["applications"][0]["args"]["model_dir"] = str(export)
    pairs = [["a man plays a guitar", "someone plays an instrument"], ["stocks fell", "stocks fell"]]
    try:
        served.deploy(config)
        deadline = time.monotonic() + 90
        while set((info := requests.get(f"{served.url}/v1/model", timeout=10).json())["tasks"]) != set(tasks):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert set(info["heads"]) == {"sentiment", "nli", "tags"}
        assert info["task_info"]["sts"]["type"] == "similarity"
        offline = ExportedModel.load(export)
        got = post(served, "/v1/predict", {"pairs": pairs}).json()["predictions"]
        for row, want in zip(got, offline.predict_pairs(pairs), strict=True):
            assert row["nli"]["label"] == want["nli"]["label"]
            assert row["nli"]["probabilities"] == pytest.approx(want["nli"]["probabilities"], abs=1e-5)
            assert row["sts"] == pytest.approx(want["sts"], abs=1e-5)
        got = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
        for row, want in zip(got, offline.predict(TEXTS), strict=True):
            assert row["tags"]["labels"] == want["tags"]["labels"]
            assert row["sentiment"]["label"] == want["sentiment"]["label"]
    finally:
        served.deploy(original)


def test_a_killed_encoder_replica_under_load_recovers_without_hangs(served):
    from jobs.bench.serve import kill_under_load

    pid = served.call("Encoder", "identity")["pid"]
    result = asyncio.run(kill_under_load(f"{served.url}/v1/predict", TEXTS, lambda: os.kill(pid, signal.SIGKILL),
                                         concurrency=8, duration_s=25, kill_at_s=3, timeout_s=30))  # fmt: skip
    assert result["hung"] == 0, result
    assert result["failed"] <= result["requests"] // 2, result
    assert result["recover_s"] < 20 and result["ok_after_recovery"] > 0, result
    assert served.call("Encoder", "identity")["pid"] != pid
