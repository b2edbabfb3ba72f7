"""`Ingress` deployment: the FastAPI app. Concurrent requests are batched here, before any hop.

Each request's texts wait (`serve_app.batching.Batcher`, no fixed delay by default) for the requests that arrive
while the previous batch is in flight; the batch makes one encoder call and one call per head it needs, and each
request gets its rows back. Hops per request fall from 1 + heads to (1 + heads) / batch. Responses skip FastAPI's
re-validation (the routes build them from typed values) but keep their schemas in /openapi.json.

Failures stay with their request: a text the model cannot encode is a 422 at the schema (schemas.py), a batch that
still fails is retried in halves (batching.py), and a 5xx body is a short message and a request id, never the error
text (a RayTaskError's holds the remote traceback); the replica log has the full error under that id.
"""

import asyncio
import base64
import hmac
import ipaddress
import logging
import math
import os
import re
import uuid
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.context import _get_serve_request_context
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtl.inference import label_entries, normalize_rows, pair_cosine, select_tasks
from serve_app.batching import Batcher
from serve_app.schemas import (
    EmbedRequest,
    EmbedResponse,
    ModelInfo,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    PredictRequest,
    PredictResponse,
    SimilarityRequest,
    SimilarityResponse,
)

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = "1"
SURROGATE = re.compile("[\ud800-\udfff]")

api = FastAPI(
    title="mtl multi-task sentence model",
    version="1",
    description="Embeddings, per-task predictions and similarity from one shared encoder.",
)
bearer = HTTPBearer(auto_error=False, description="required when the token variable (`auth_token_env`) is set")


def check_exposure(host: str, token_env: str, allow_unauthenticated: bool) -> None:
    """Refuse to serve a non-loopback address with no token unless `allow_unauthenticated` says so."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or allow_unauthenticated or os.environ.get(token_env):
        return
    raise ValueError(
        f"http_options.host={host!r} is reachable from other machines and ${token_env} (args.auth_token_env) is not "
        "set: set the token (e.g. from a Kubernetes Secret) or args.allow_unauthenticated: true"
    )


async def check_token(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
    """Bearer token from the environment variable named by `auth_token_env`; no variable, no check."""
    expected = os.environ.get(request.app.state.auth_token_env or "")
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=401,
            detail="missing or wrong bearer token (header Authorization)",
            headers={"WWW-Authenticate": "Bearer"},
        )


class BodyLimit:
    """ASGI middleware: a request body over `max_body_bytes` is a 413 before anything parses it.

    A declared Content-Length over the limit is refused unread; otherwise (chunked bodies included) the body is read
    here up to the limit and handed on, so an oversize one never reaches FastAPI's parser."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # The app's own state (Serve runs a frozen copy of `api`; the Ingress constructor sets the copy's state).
        limit = getattr(scope["app"].state, "max_body_bytes", None)
        if not limit:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large(send, limit)
        chunks, size, message = [], 0, {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await too_large(send, limit)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def too_large(send, limit: int) -> None:
    body = JSONResponse({"detail": f"request body over {limit} bytes (args.max_body_bytes)"}, status_code=413)
    await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})


api.add_middleware(BodyLimit)


def request_id(request: Request) -> str:
    """Serve's id of this request (the client's `x-request-id` when it sent one; Serve's own replica log lines carry
    it), else that header, else a new one (outside Serve)."""
    return _get_serve_request_context().request_id or request.headers.get("x-request-id") or uuid.uuid4().hex


def _server_error(status: int, message: str, rid: str, headers: dict | None = None) -> JSONResponse:
    """`{"detail", "request_id"}` (Serve itself puts the id in the `X-Request-ID` header of every answer)."""
    return JSONResponse({"detail": f"{message} (request id {rid})", "request_id": rid}, status, headers)


@api.exception_handler(Exception)
async def _internal(request: Request, error: Exception) -> JSONResponse:
    """Anything unexpected inside the replica: a JSON 500 with the error's type and a request id, never a hang, an
    HTML page or the error's text (a RayTaskError's holds the remote traceback); logged in full under that id."""
    rid = request_id(request)
    logger.error("request %s: unhandled error on %s", rid, request.url.path, exc_info=error)
    return _server_error(500, f"internal error ({type(error).__name__}), details in the replica log", rid)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI's own answer below 500; a 5xx (the 503s of `Ingress._call`) also carries a request id, logged with
    its cause."""
    if error.status_code < 500:
        return await http_exception_handler(request, error)
    rid = request_id(request)
    logger.warning("request %s: %s on %s: %s (cause: %r)", rid, error.status_code, request.url.path, error.detail,
                   error.__cause__)  # fmt: skip
    return _server_error(error.status_code, error.detail, rid, error.headers)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, with the echoed input made encodable: otherwise encoding the 422 itself fails (a 500)."""
    return JSONResponse({"detail": _jsonable(jsonable_encoder(error.errors()))}, status_code=422)


def _jsonable(value):
    """A lone surrogate (a valid JSON escape, no UTF-8 form) as U+FFFD; NaN or infinity (Python's JSON parser takes
    them, JSON has none) as text."""
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def _retry_later(detail: str) -> HTTPException:
    return HTTPException(status_code=503, detail=detail, headers={"Retry-After": RETRY_AFTER_S})


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self, encoder: DeploymentHandle, heads: dict[str, DeploymentHandle], info: dict, limits: dict, model_dir: str
    ):
        check_exposure(limits["host"], limits["auth_token_env"], limits["allow_unauthenticated"])
        self.encoder = encoder
        self.heads = heads
        self.info = info  # tasks -> labels, pooling, dim, max_seq_length, provenance, metrics
        self.model_dir = model_dir  # its tokenizer counts /v1/embeddings usage
        self.limits = limits  # max_texts, max_chars, max_body_bytes, call_timeout_s, ...
        api.state.auth_token_env = limits["auth_token_env"]
        api.state.max_body_bytes = limits["max_body_bytes"]
        self._tokenizer = None
        # A 503 from `_call` (overload, a lost replica, a timeout) is the whole batch's: not retried in halves.
        self.batches = Batcher(self._infer, max_batch_size=64, batch_errors=(HTTPException,))

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (`user_config`): `max_batch_size` requests per batch, `batch_wait_timeout_s`."""
        self.batches.max_batch_size = int(user_config.get("max_batch_size", self.batches.max_batch_size))
        self.batches.wait_s = float(user_config.get("batch_wait_timeout_s", self.batches.wait_s))

    def _check_limits(self, texts: list[str], field: str) -> None:
        if len(texts) > self.limits["max_texts"]:
            raise HTTPException(
                status_code=413,
                detail=f"{field}: {len(texts)} texts, at most {self.limits['max_texts']} per request "
                "(use jobs.embed for bulk work)",
            )
        for index, text in enumerate(texts):
            if len(text) > self.limits["max_chars"]:
                raise HTTPException(
                    status_code=413,
                    detail=f"{field}[{index}]: {len(text)} characters, at most {self.limits['max_chars']}",
                )

    async def _call(self, response):
        """Await a handle call; overload, a lost replica or a stuck one is a 503 with Retry-After, never a hang."""
        try:
            return await asyncio.wait_for(response, timeout=self.limits["call_timeout_s"])
        except BackPressureError as error:
            raise _retry_later(f"overloaded, retry later: {error}") from error
        except RayActorError as error:
            raise _retry_later("a model replica is restarting, retry later") from error
        except TimeoutError as error:
            response.cancel()
            raise _retry_later(f"no model answer within {self.limits['call_timeout_s']} s, retry later") from error

    async def _infer(self, calls: list[tuple[list[str], tuple[str, ...]]]) -> list[tuple[np.ndarray, dict]]:
        """Concurrent requests -> one encoder call for their distinct texts and one call per head they need."""
        unique = list(dict.fromkeys(text for texts, _ in calls for text in texts))
        vectors = await self._call(self.encoder.encode.remote(unique))
        index = {text: row for row, text in enumerate(unique)}
        rows = [np.fromiter((index[text] for text in texts), dtype=np.int64, count=len(texts)) for texts, _ in calls]
        needed = list(dict.fromkeys(task for _, tasks in calls for task in tasks))
        wanted = {task: [i for i, (_, tasks) in enumerate(calls) if task in tasks] for task in needed}
        inputs = {task: np.unique(np.concatenate([rows[i] for i in wanted[task]])) for task in needed}
        outputs = await asyncio.gather(*(self._call(self.heads[task].remote(vectors[inputs[task]])) for task in needed))
        results = []
        for i, (_, tasks) in enumerate(calls):
            probabilities = {}
            for task, output in zip(needed, outputs, strict=True):
                if task in tasks:
                    probabilities[task] = output[np.searchsorted(inputs[task], rows[i])]
            results.append((vectors[rows[i]], probabilities))
        return results

    async def _pooled(self, texts: list[str], tasks: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
        return await self.batches((texts, tasks))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(check_token)])
    async def model(self) -> dict:
        identities = await asyncio.gather(*(self._call(head.identity.remote()) for head in self.heads.values()))
        heads = dict(zip(self.heads, identities, strict=True))
        limits = {key: self.limits[key] for key in ("max_texts", "max_chars", "max_body_bytes")}
        return {**self.info, "heads": heads, "limits": limits}

    @api.post("/v1/embed", response_model=EmbedResponse, dependencies=[Depends(check_token)])
    async def embed(self, body: EmbedRequest) -> JSONResponse:
        self._check_limits(body.texts, "texts")
        vectors, _ = await self._pooled(body.texts)
        if body.normalize:
            vectors = normalize_rows(vectors)
        return JSONResponse({"embeddings": vectors.tolist(), "dim": int(vectors.shape[1])})

    @api.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, dependencies=[Depends(check_token)])
    async def embeddings(self, body: OpenAIEmbeddingRequest) -> JSONResponse:
        """OpenAI's embeddings API (the `openai` client, LangChain, LlamaIndex): L2-normalised like /v1/embed."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        if body.dimensions not in (None, self.info["dim"]):
            detail = f"dimensions: {body.dimensions}; this model has {self.info['dim']}"
            raise HTTPException(status_code=422, detail=detail)
        self._check_limits(texts, "input")
        vectors, _ = await self._pooled(texts)
        vectors = normalize_rows(vectors).astype(np.float32)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(vector.tobytes()).decode() for vector in vectors]
        else:
            encoded = vectors.tolist()
        tokens = self._token_count(texts)
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    def _token_count(self, texts: list[str]) -> int:
        """Tokens the encoder reads (its tokenizer, special tokens included, truncated at max_seq_length)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        ids = self._tokenizer(texts, truncation=True, max_length=self.info["max_seq_length"])["input_ids"]
        return sum(len(row) for row in ids)

    @api.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(check_token)])
    async def predict(self, body: PredictRequest) -> JSONResponse:
        self._check_limits(body.texts, "texts")
        try:
            tasks = select_tasks(list(self.heads), body.tasks)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=f"tasks: {error}") from error
        _, outputs = await self._pooled(body.texts, tuple(tasks))
        entries = {task: label_entries(self.info["tasks"][task], outputs[task]) for task in tasks}
        predictions = [{task: entries[task][row] for task in tasks} for row in range(len(body.texts))]
        return JSONResponse({"predictions": predictions})

    @api.post("/v1/similarity", response_model=SimilarityResponse, dependencies=[Depends(check_token)])
    async def similarity(self, body: SimilarityRequest) -> JSONResponse:
        texts = [text for pair in body.pairs for text in pair]
        self._check_limits(texts, "pairs")
        vectors, _ = await self._pooled(texts)
        scores = pair_cosine(vectors[0::2], vectors[1::2])
        return JSONResponse({"scores": [float(score) for score in scores]})
