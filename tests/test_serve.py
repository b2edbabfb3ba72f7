"""The Serve application on a tiny export: endpoints, parity with the offline model, bad input, head rollout."""

import copy
import time

import numpy as np
import pytest
import requests
import torch
import yaml
from safetensors.torch import save_file

from mtl.inference.exported_model import ExportedModel
from serve_app.local import SHIPPED_CONFIG, LocalServe

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
TEXTS = ["a gripping , beautiful film", "who wrote hamlet ?", "dull and lifeless", "how far is the moon ?"]


@pytest.fixture(scope="module")
def served(tiny_export):
    harness = LocalServe(tiny_export, num_cpus=2, encoder_cpus=0.5)
    yield harness
    harness.close()


def post(served, path, body, **kwargs):
    return requests.post(f"{served.url}{path}", json=body, timeout=60, **kwargs)


def test_health_model_and_openapi(served):
    assert requests.get(f"{served.url}/healthz", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{served.url}/v1/model", timeout=10).json()
    assert info["tasks"]["topic"] == ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    assert info["pooling"] == "mean" and info["dim"] == 32 and info["max_seq_length"] == 32
    assert info["limits"] == {"max_texts": 256, "max_chars": 2000}
    assert set(info["heads"]) == {"sentiment", "topic"}
    schema = requests.get(f"{served.url}/openapi.json", timeout=10).json()
    assert {"/v1/embed", "/v1/predict", "/v1/similarity", "/v1/model", "/healthz"} <= set(schema["paths"])
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
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[f"{p}-{s}-{m}" for p, _, s, m in BAD])
def test_bad_input_is_a_4xx_naming_the_field(served, path, body, status, message):
    response = post(served, path, body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_malformed_json_is_422(served):
    response = requests.post(
        f"{served.url}/v1/embed", data="{not json", headers={"content-type": "application/json"}, timeout=10
    )
    assert response.status_code == 422 and "json" in response.text.lower()


def test_rolling_out_one_head_leaves_the_encoder_and_other_heads_running(served, tmp_path):
    encoder_before = served.handle("Encoder").identity.remote().result()
    topic_before = served.handle("head_topic").identity.remote().result()
    predictions_before = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]

    seed = torch.Generator().manual_seed(7)
    new_head = tmp_path / "sentiment.safetensors"
    save_file({"weight": torch.randn(2, 32, generator=seed), "bias": torch.randn(2, generator=seed)}, new_head)
    config = copy.deepcopy(served.config)
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "head_sentiment":
            deployment["user_config"] = {"head_file": str(new_head)}
    served.deploy(config)
    deadline = time.monotonic() + 60
    while served.handle("head_sentiment").identity.remote().result()["head_file"] != str(new_head):
        assert time.monotonic() < deadline, "head_sentiment never picked up the new head file"
        time.sleep(0.5)

    assert served.handle("Encoder").identity.remote().result() == encoder_before  # same replica, same process
    assert served.handle("head_topic").identity.remote().result() == topic_before
    predictions_after = post(served, "/v1/predict", {"texts": TEXTS}).json()["predictions"]
    assert [p["topic"] for p in predictions_after] == [p["topic"] for p in predictions_before]
    assert [p["sentiment"] for p in predictions_after] != [p["sentiment"] for p in predictions_before]


def test_shipped_config_is_valid_and_binds_loopback():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    app = schema.applications[0]
    assert app.import_path == "serve_app.app:build_app"
    from serve_app.args import AppArgs

    args = AppArgs.model_validate(app.args)
    assert args.encoder_cpus + 2 * args.head_cpus + args.ingress_cpus <= 2  # fits this 2-core machine
