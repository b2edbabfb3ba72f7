"""`/v1/embeddings` and `/v1/models` through the real clients (dev dependencies): the `openai` client (float and
base64), LangChain's `OpenAIEmbeddings` (its switch for non-OpenAI servers, its default chunk size) and LiteLLM; every
answer names the served export; OpenAI's 2,048 inputs; a text over the model's window cut when asked, refused
otherwise; `dimensions` refused. One Serve app for the module; no client reaches past this machine."""

import base64
import ipaddress
import json
import socket
import time

import numpy as np
import pytest
import requests

from serve_app.local import LocalServe

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
TEXTS = ["a gripping , beautiful film", "who wrote hamlet ?", "dull and lifeless", "how far is the moon ?"]
LONG = "word " * 100  # 100 word pieces + [CLS] + [SEP]: over the tiny export's window of 32 tokens
API_KEY = "unused-without-a-token"


@pytest.fixture(scope="module")
def served(tiny_export):
    harness = LocalServe(tiny_export, num_cpus=2, encoder_cpus=0.5, precision="fp32")  # compared with fp32 offline
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def export_id(tiny_export) -> str:
    return tiny_export.resolve().name  # versions/export-step0-<time>-<id>: export_model publishes a version


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """A client that looks up a name or connects anywhere but this machine (a tiktoken vocabulary, LiteLLM's model
    cost map, LangSmith) fails the test instead of reaching out."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def is_loopback(host) -> bool:
        try:
            return host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            raise AssertionError(f"a client tried to connect to {address}")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback(host if isinstance(host, str) else host.decode()):
            raise AssertionError(f"a client tried to look up {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


def openai_client(served):
    from openai import OpenAI

    return OpenAI(base_url=f"{served.url}/v1", api_key=API_KEY, max_retries=0)


def v1_embed(served, texts: list[str]) -> np.ndarray:
    """/v1/embed's normalised vectors, 256 texts (its max_texts) a request."""
    pieces = [
        requests.post(f"{served.url}/v1/embed", json={"texts": texts[start : start + 256]}, timeout=60).json()
        for start in range(0, len(texts), 256)
    ]
    return np.concatenate([np.asarray(piece["embeddings"]) for piece in pieces])


def test_models_lists_the_export_and_every_answer_names_it(served, tiny_export, export_id):
    fingerprint = json.loads((tiny_export / "mtl.json").read_text())["encoder_fingerprint"]
    assert export_id.startswith("export-step0-")
    client = openai_client(served)
    models = client.models.list().data
    assert [(model.id, model.object, model.owned_by) for model in models] == [(export_id, "model", "mtl")]
    assert models[0].created > 0
    assert client.models.retrieve(export_id).id == export_id
    unknown = requests.get(f"{served.url}/v1/models/text-embedding-3-small", timeout=10)
    assert unknown.status_code == 404 and export_id in unknown.text

    result = client.embeddings.create(input=TEXTS, model="any-name")
    assert result.model == export_id
    assert result.model_extra["encoder_fingerprint"] == fingerprint  # an extra field: the client keeps it, unchecked
    embedded = requests.post(f"{served.url}/v1/embed", json={"texts": TEXTS}, timeout=60).json()
    assert (embedded["model"], embedded["encoder_fingerprint"]) == (export_id, fingerprint)
    info = requests.get(f"{served.url}/v1/model", timeout=10).json()
    assert (info["model"], info["encoder_fingerprint"]) == (export_id, fingerprint)
    assert info["embeddings"] == {"max_inputs": 2048, "truncate": False, "dimensions": [32]}


def test_openai_client_float_and_base64_give_the_vectors_of_v1_embed(served):
    client = openai_client(served)
    ours = v1_embed(served, TEXTS)
    floats = client.embeddings.create(input=TEXTS, model="mtl", encoding_format="float")
    raw = client.embeddings.create(input=TEXTS, model="mtl", encoding_format="base64")
    decoded = client.embeddings.create(input=TEXTS, model="mtl")  # the client asks for base64 and decodes it itself
    assert [item.index for item in floats.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose([item.embedding for item in floats.data], ours, atol=1e-6)
    from_base64 = [np.frombuffer(base64.b64decode(item.embedding), dtype=np.float32) for item in raw.data]
    np.testing.assert_array_equal(from_base64, np.asarray([item.embedding for item in floats.data], dtype=np.float32))
    np.testing.assert_allclose([item.embedding for item in decoded.data], ours, atol=1e-6)
    single = client.embeddings.create(input=TEXTS[0], model="mtl")
    np.testing.assert_allclose(single.data[0].embedding, ours[0], atol=1e-6)


def test_langchain_sends_1000_texts_in_one_request_without_tiktoken(served, monkeypatch):
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    def no_tiktoken(*args, **kwargs):
        raise AssertionError("LangChain tokenised with tiktoken: check_embedding_ctx_length=False is not in effect")

    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    embeddings = OpenAIEmbeddings(
        model="mtl", base_url=f"{served.url}/v1", api_key=API_KEY, check_embedding_ctx_length=False, max_retries=0
    )
    calls = []
    create = embeddings.client.create
    monkeypatch.setattr(embeddings.client, "create", lambda **kwargs: calls.append(kwargs) or create(**kwargs))
    texts = [f"document number {i} is about {['films', 'questions', 'the moon'][i % 3]}" for i in range(1000)]
    vectors = embeddings.embed_documents(texts)
    assert len(calls) == 1 and len(calls[0]["input"]) == 1000  # chunk_size 1,000 (its default): one request
    assert len(vectors) == 1000
    np.testing.assert_allclose(vectors, v1_embed(served, texts), atol=1e-6)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[1]), v1_embed(served, TEXTS[1:2])[0], atol=1e-6)

    cutting = OpenAIEmbeddings(model="mtl", base_url=f"{served.url}/v1", api_key=API_KEY,
                               check_embedding_ctx_length=False, max_retries=0,
                               model_kwargs={"extra_body": {"truncate": True}})  # fmt: skip
    np.testing.assert_allclose(cutting.embed_query(LONG), v1_embed(served, [LONG])[0], atol=1e-6)


def test_litellm_embeddings_equal_v1_embed(served, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its bundled copy, not a download at import
    import litellm

    where = {"api_base": f"{served.url}/v1", "api_key": API_KEY}
    result = litellm.embedding(model="openai/mtl", input=TEXTS, **where)  # it sends "encoding_format": null
    np.testing.assert_allclose([item["embedding"] for item in result.data], v1_embed(served, TEXTS), atol=1e-6)
    cut = litellm.embedding(model="openai/mtl", input=[LONG], extra_body={"truncate": True}, **where)
    assert cut.usage.prompt_tokens == 32
    np.testing.assert_allclose(cut.data[0]["embedding"], v1_embed(served, [LONG])[0], atol=1e-6)


def test_openais_2048_inputs_are_one_request_and_2049_are_refused(served):
    client = openai_client(served)
    texts = [f"short text {i}" for i in range(2048)]
    result = client.embeddings.create(input=texts, model="mtl", encoding_format="float")
    assert len(result.data) == 2048
    np.testing.assert_allclose([item.embedding for item in result.data], v1_embed(served, texts), atol=1e-6)
    refused = requests.post(f"{served.url}/v1/embeddings", json={"input": ["x"] * 2049}, timeout=30)
    assert refused.status_code == 422 and "at most 2048 per request" in refused.text


def test_a_text_over_the_window_is_cut_when_asked_and_refused_otherwise(served, tiny_export):
    from openai import BadRequestError
    from transformers import AutoTokenizer

    client = openai_client(served)
    short = len(AutoTokenizer.from_pretrained(tiny_export)(TEXTS[0])["input_ids"])
    cut = client.embeddings.create(input=[TEXTS[0], LONG], model="mtl", extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == cut.usage.total_tokens == short + 32  # the tokens embedded: 32 of LONG's 102
    np.testing.assert_allclose([item.embedding for item in cut.data], v1_embed(served, [TEXTS[0], LONG]), atol=1e-6)

    for options in ({}, {"extra_body": {"truncate": False}}):  # the server's default (truncate: false), and asked
        with pytest.raises(BadRequestError) as refused:
            client.embeddings.create(input=[TEXTS[0], LONG, LONG], model="mtl", **options)
        message = str(refused.value)  # the client's text: OpenAI's error.message, which the app adds on this route
        assert "input[1]: 102 tokens, over this model's window of 32 (max_seq_length)" in message
        assert "(and 1 more of the 3 inputs)" in message
        assert '"truncate": true' in message and "truncate: true in the serve config" in message


def test_dimensions_other_than_the_models_are_refused(served):
    from openai import BadRequestError

    client = openai_client(served)
    assert len(client.embeddings.create(input=TEXTS[0], model="mtl", dimensions=32).data[0].embedding) == 32
    with pytest.raises(BadRequestError) as refused:
        client.embeddings.create(input=TEXTS[0], model="mtl", dimensions=16)
    assert "dimensions: 16 is not served; this model's vectors have 32 dimensions" in str(refused.value)


def test_token_ids_are_refused_with_langchains_switch_named(served):
    response = requests.post(f"{served.url}/v1/embeddings", json={"input": [[101, 2054, 102]]}, timeout=30)
    assert response.status_code == 422 and "check_embedding_ctx_length=False" in response.text


def test_the_serve_configs_truncate_is_the_default(served):
    """`truncate: true` in the builder's args: a request that does not send `truncate` gets its long text cut."""
    original = served.config
    config = json.loads(json.dumps(original))
    config["applications"][0]["args"]["truncate"] = True
    try:
        served.deploy(config)
        deadline = time.monotonic() + 60
        while not requests.get(f"{served.url}/v1/model", timeout=10).json()["embeddings"]["truncate"]:
            assert time.monotonic() < deadline, "the ingress never took truncate: true from the serve config"
            time.sleep(0.5)
        answer = requests.post(f"{served.url}/v1/embeddings", json={"input": LONG}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["prompt_tokens"] == 32
    finally:
        served.deploy(original)
