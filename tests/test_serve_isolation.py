"""Failure isolation in serving, without starting Ray: texts the tokenizer cannot encode are refused by the request
schemas, a failing item in a merged batch fails alone (`Batcher`), and a 5xx body is a short message and a request
id, never the error's text. The same against the running app: tests/test_serve.py."""

import asyncio
import logging
import traceback

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from transformers import AutoTokenizer

from mtl.model.backbone import bundled_default_dir
from serve_app.batching import Batcher
from serve_app.schemas import EmbedRequest, OpenAIEmbeddingRequest, PredictRequest, SimilarityRequest

SURROGATE = "(a lone surrogate)"
UNENCODABLE = [("\ud800", f"U+D800 {SURROGATE}"), ("\udfff", f"U+DFFF {SURROGATE}"), ("\x00", "U+0000 (NUL)")]


def test_the_tokenizer_raises_on_lone_surrogates_drops_nul_and_reads_noncharacters():
    """Why the schemas refuse what they do (README "Serving"): pinned, so a tokenizer upgrade that changes it shows."""
    tokenizer = AutoTokenizer.from_pretrained(bundled_default_dir(), local_files_only=True)
    with pytest.raises(TypeError):
        tokenizer(["fine", "a\ud800b"])
    assert tokenizer(["a\x00b"])["input_ids"] == tokenizer(["ab"])["input_ids"]
    unknown = tokenizer.unk_token_id
    assert tokenizer(["\ufffe", "\ufdd0", "\U0010ffff"])["input_ids"] == [[101, unknown, 102]] * 3


@pytest.mark.parametrize(("char", "named"), UNENCODABLE, ids=["high-surrogate", "low-surrogate", "nul"])
def test_unencodable_texts_are_refused_naming_field_and_index(char, named):
    cases = [
        (EmbedRequest, {"texts": ["fine", f"a{char}b"]}, "texts", f"text at index 1 holds {named} at character 1"),
        (PredictRequest, {"texts": [char, "fine"]}, "texts", f"text at index 0 holds {named} at character 0"),
        (SimilarityRequest, {"pairs": [["a", "b"], ["c", char]]}, "pairs", f"pair at index 1, text 1 holds {named}"),
        (OpenAIEmbeddingRequest, {"input": char}, "input", f"input holds {named}"),
        (OpenAIEmbeddingRequest, {"input": ["ok", "x", char]}, "input", f"text at index 2 holds {named}"),
    ]
    for model, body, field, message in cases:
        with pytest.raises(ValidationError) as caught:
            model.model_validate(body)
        (error,) = caught.value.errors()
        assert error["loc"] == (field,) and message in error["msg"], (model.__name__, error)


def test_valid_unicode_is_accepted():
    texts = ["\U0001f600 emoji (one code point, a surrogate pair in JSON)", "\ufffe noncharacter", "tab\there"]
    assert EmbedRequest.model_validate({"texts": texts}).texts == texts


def test_a_422_echoing_unencodable_input_is_still_a_422():
    """FastAPI's 422 echoes the input; a lone surrogate in it (or NaN, which Python's JSON parser takes) once made
    encoding the 422 fail, a 500."""
    from fastapi.exceptions import RequestValidationError

    from serve_app.errors import invalid_request as _invalid

    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.post("/embed")
    async def embed(body: EmbedRequest) -> dict:
        return {"texts": len(body.texts)}

    client = TestClient(app, raise_server_exceptions=False)
    cases = [('{"texts": ["ok", "\\ud800"]}', "text at index 1 holds U+D800"), ('{"texts": [NaN]}', "valid string")]
    for raw, message in cases:
        response = client.post("/embed", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422 and message in response.json()["detail"][0]["msg"], response.text
    assert response.json()["detail"][0]["input"] == "nan"


def batcher_run(func, items, **options) -> list:
    """`items` sent concurrently; the first runs alone, the rest queue meanwhile and form the next batch."""

    async def main():
        batcher = Batcher(func, max_batch_size=64, **options)
        return await asyncio.gather(*(batcher(item) for item in items), return_exceptions=True)

    return asyncio.run(main())


def test_an_item_that_fails_inside_a_batch_fails_alone():
    calls = []

    async def double(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        if any(item < 0 for item in items):
            raise ValueError(f"negative in {items}")
        return [2 * item for item in items]

    items = [1, 2, -3, 4, 5, 6, -7, 8, 9]
    results = batcher_run(double, items)
    assert calls[1] == items[1:]  # merged into one batch, which failed; then retried in halves
    for item, result in zip(items, results, strict=True):
        if item < 0:
            assert isinstance(result, ValueError) and str(result) == f"negative in [{item}]"
        else:
            assert result == 2 * item
    calls.clear()
    assert batcher_run(double, [1, 2, 3, 4]) == [2, 4, 6, 8]
    assert calls == [[1], [2, 3, 4]]  # nothing failed: one call per batch, as before


def test_a_batch_error_goes_to_every_caller_unretried():
    calls = []

    class Overloaded(Exception):
        pass

    async def overloaded(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        raise Overloaded("retry later")

    results = batcher_run(overloaded, [1, 2, 3, 4], batch_errors=(Overloaded,))
    assert all(isinstance(result, Overloaded) for result in results)
    assert calls == [[1], [2, 3, 4]]


def remote_error() -> RayTaskError:
    """What the ingress gets when the encoder raises: its text holds the remote traceback."""
    try:
        raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
    except TypeError as cause:
        return RayTaskError("Encoder.encode", traceback.format_exc(), cause).as_instanceof_cause()


def failing_app() -> TestClient:
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from serve_app.errors import http_error as _http_error
    from serve_app.errors import internal_error as _internal

    app = FastAPI()
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.get("/remote")
    async def remote() -> dict:
        raise remote_error()

    @app.get("/overloaded")
    async def overloaded() -> dict:
        raise HTTPException(status_code=503, detail="overloaded, retry later", headers={"Retry-After": "1"})

    @app.get("/missing")
    async def missing() -> dict:
        raise HTTPException(status_code=404, detail="no such thing")

    return TestClient(app, raise_server_exceptions=False)


def test_a_500_body_has_a_request_id_and_no_traceback_which_the_log_has(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("ray.serve"), "propagate", True)  # Ray's logger: into caplog too
    client = failing_app()
    response = client.get("/remote")
    assert response.status_code == 500
    body = response.json()
    rid = body["request_id"]
    assert set(body) == {"detail", "request_id"}
    assert body["detail"] == f"internal error (RayTaskError(TypeError)), details in the replica log (request id {rid})"
    for leaked in ("Traceback", "File ", "pid=", "TextEncodeInput", "Encoder.encode"):
        assert leaked not in response.text
    logged = [record for record in caplog.records if rid in record.getMessage()]
    assert logged and "TextEncodeInput" in caplog.text and "Traceback" in caplog.text
    given = client.get("/remote", headers={"x-request-id": "client-id-7"})
    assert given.json()["request_id"] == "client-id-7"


def test_a_503_keeps_retry_after_and_gets_a_request_id_and_a_4xx_is_unchanged():
    client = failing_app()
    response = client.get("/overloaded", headers={"x-request-id": "abc"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "overloaded, retry later (request id abc)", "request_id": "abc"}
    assert client.get("/missing").json() == {"detail": "no such thing"}
