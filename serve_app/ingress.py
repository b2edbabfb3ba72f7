"""`Ingress` deployment: the FastAPI app. Concurrent requests are batched here, before any hop.

Each request's texts wait (`serve_app.batching.Batcher`, no fixed delay by default) for the requests that arrive
while the previous batch is in flight; the batch makes one encoder call for its distinct texts and one call per head
it needs, and each request gets its rows back. Hops per request fall from 1 + heads to (1 + heads) / batch. A pair
request's two texts are encoded like any others; a pair_classification head gets the two pooled batches, and a
similarity task (no head) is the cosine of the two vectors, computed here. Responses skip FastAPI's
re-validation (the routes build them from typed values) but keep their schemas in /openapi.json.

Failures stay with their request: a text the model cannot encode is a 422 at the schema (schemas.py), a batch that
still fails is retried in halves (batching.py), and a 5xx body is a short message and a request id, never the error
text (a RayTaskError's holds the remote traceback); the replica log has the full error under that id.
"""

import asyncio
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from mtl.export_format import export_id, manifest_path, read_manifest
from mtl.inference.exported_model import normalize_rows, pair_cosine, select_typed_tasks, task_entries, task_outputs
from serve_app.args import AppArgs
from serve_app.batching import Batcher
from serve_app.errors import Refusal, http_error, internal_error, invalid_request
from serve_app.guards import BodyLimit, check_exposure, check_token
from serve_app.metrics import RequestMetrics, ingress_metrics
from serve_app.schemas import (
    MAX_EMBEDDING_INPUTS,
    EmbedRequest,
    EmbedResponse,
    ModelInfo,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
    PredictRequest,
    PredictResponse,
    SimilarityRequest,
    SimilarityResponse,
)

logger = logging.getLogger("ray.serve")
RETRY_AFTER_S = "1"

api = FastAPI(
    title="mtl multi-task sentence model",
    version="1",
    description="Embeddings, per-task predictions and similarity from one shared encoder.",
)


OPENAI_ROUTES = ("/v1/embeddings", "/v1/models")


def openai_errors(handler):
    """`handler`, and on OpenAI's routes a 4xx body that also holds OpenAI's error object: OpenAI's client (and so
    LangChain's and LiteLLM's) puts only `error.message` in the exception's text, never this app's `detail`."""

    async def handle(request: Request, error: Exception) -> Response:
        response = await handler(request, error)
        if not (request.url.path.startswith(OPENAI_ROUTES) and 400 <= response.status_code < 500):
            return response
        body = json.loads(response.body)
        detail = body.get("detail")
        if isinstance(detail, list):  # a validation error's items
            detail = "; ".join(f"{'.'.join(map(str, item['loc'][1:])) or 'body'}: {item['msg']}" for item in detail)
        message = {"message": str(detail), "type": "invalid_request_error", "param": None,
                   "code": getattr(error, "reason", None)}  # fmt: skip
        headers = {key: value for key, value in response.headers.items() if not key.startswith("content-")}
        return JSONResponse({**body, "error": message}, response.status_code, headers)

    return handle


api.add_middleware(BodyLimit)
api.add_middleware(RequestMetrics)  # added last, so outermost: counts BodyLimit's 413s too
api.add_exception_handler(Exception, internal_error)
api.add_exception_handler(StarletteHTTPException, openai_errors(http_error))
api.add_exception_handler(RequestValidationError, openai_errors(invalid_request))


def _retry_later(reason: str, detail: str) -> Refusal:
    return Refusal(503, reason, detail, headers={"Retry-After": RETRY_AFTER_S})


def json_response(content: dict) -> Response:
    """A JSON body written by orjson, numpy arrays included (a vector of 384 floats: 6 µs instead of json's 230)."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def served_dimensions(manifest: dict, dim: int) -> list[int]:
    """The `dimensions` /v1/embeddings serves: the model's own, and any shorter ones its export declares it was trained
    for (`matryoshka_dims` in mtl.json; a vector is then cut to its first values and normalised again)."""
    declared = manifest.get("matryoshka_dims") or []
    if not all(isinstance(value, int) and 1 <= value <= dim for value in declared):
        raise ValueError(f"mtl.json: matryoshka_dims={declared!r}, each must be a whole number from 1 to {dim}")
    return sorted({dim, *declared})


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self, encoder: DeploymentHandle, heads: dict[str, DeploymentHandle], info: dict, limits: dict, model_dir: str
    ):
        check_exposure(limits["host"], limits["auth_token_env"], limits["allow_unauthenticated"])
        self.encoder = encoder
        self.heads = heads
        self.info = info  # model_info: tasks -> labels, task_info (types), pooling, dim, provenance, metrics, ...
        self.model_dir = model_dir  # its tokenizer counts /v1/embeddings usage
        self.limits = limits  # max_texts, max_chars, max_body_bytes, call_timeout_s, ...
        api.state.auth_token_env = limits["auth_token_env"]
        api.state.max_body_bytes = limits["max_body_bytes"]
        self._tokenizer = None
        self._tokenizing = ThreadPoolExecutor(1)  # off the event loop, one call at a time: a tokenizer is not shared
        # Every vector handed out names its export version and encoder (model_dir is the resolved version directory).
        manifest = read_manifest(model_dir)
        self.identity = {"model": export_id(model_dir), "encoder_fingerprint": manifest.get("encoder_fingerprint")}
        self.created = int(manifest_path(model_dir).stat().st_mtime)
        self.dimensions = served_dimensions(manifest, info["dim"])
        self.truncate = bool(limits.get("truncate", AppArgs.model_fields["truncate"].default))
        # A 503 from `_call` (overload, a lost replica, a timeout) is the whole batch's: not retried in halves.
        self.batches = Batcher(
            self._infer, max_batch_size=64, batch_errors=(HTTPException,), on_batch=ingress_metrics().batch
        )

    def reconfigure(self, user_config: dict) -> None:
        """Runtime knobs (`user_config`): `max_batch_size` requests per batch, `batch_wait_timeout_s`."""
        self.batches.max_batch_size = int(user_config.get("max_batch_size", self.batches.max_batch_size))
        self.batches.wait_s = float(user_config.get("batch_wait_timeout_s", self.batches.wait_s))

    def _check_limits(self, texts: list[str], field: str, pairs: bool = False) -> None:
        """At most `max_texts` texts (a pair is two) of at most `max_chars` characters each, else a 413 naming the
        field and the text's place."""
        if len(texts) > self.limits["max_texts"]:
            raise Refusal(
                413,
                "too_many_texts",
                detail=f"{field}: {len(texts)} texts, at most {self.limits['max_texts']} per request "
                "(use jobs.embed for bulk work)",
            )
        for index, text in enumerate(texts):
            if len(text) > self.limits["max_chars"]:
                where = f"{field}[{index // 2}][{index % 2}]" if pairs else f"{field}[{index}]"
                raise Refusal(
                    413,
                    "text_too_long",
                    detail=f"{where}: {len(text)} characters, at most {self.limits['max_chars']}",
                )

    async def _call(self, response):
        """Await a handle call; overload, a lost replica or a stuck one is a 503 with Retry-After, never a hang."""
        try:
            return await asyncio.wait_for(response, timeout=self.limits["call_timeout_s"])
        except BackPressureError as error:
            raise _retry_later("overloaded", f"overloaded, retry later: {error}") from error
        except RayActorError as error:
            raise _retry_later("replica_restarting", "a model replica is restarting, retry later") from error
        except TimeoutError as error:
            response.cancel()
            detail = f"no model answer within {self.limits['call_timeout_s']} s, retry later"
            raise _retry_later("model_timeout", detail) from error

    async def _infer(self, calls: list[tuple[list[str], tuple[str, ...], bool]]) -> list[tuple]:
        """Concurrent requests (texts, tasks, whether the texts are pairs [a0, b0, a1, b1, ...]) -> one encoder call
        for their distinct texts and one call per head they need, each distinct input (a row, or a pair of rows) once.
        Per request: its rows' vectors, task -> outputs (one per text, or per pair) and its texts' token counts."""
        unique = list(dict.fromkeys(text for texts, _, _ in calls for text in texts))
        vectors, counts = await self._call(self.encoder.encode_counted.remote(unique))
        index = {text: row for row, text in enumerate(unique)}
        rows = [np.fromiter((index[text] for text in texts), dtype=np.int64, count=len(texts)) for texts, _, _ in calls]
        inputs = [row.reshape(-1, 2) if pairs else row[:, None] for row, (_, _, pairs) in zip(rows, calls, strict=True)]
        needed = list(dict.fromkeys(task for _, tasks, _ in calls for task in tasks))
        distinct, where = {}, {}  # task -> its distinct inputs (n, 1 or 2); task -> request -> positions in them
        for task in needed:
            wanted = [i for i, (_, tasks, _) in enumerate(calls) if task in tasks]
            stacked = np.concatenate([inputs[i] for i in wanted])
            distinct[task], inverse = np.unique(stacked, axis=0, return_inverse=True)
            bounds = np.cumsum([0] + [len(inputs[i]) for i in wanted])
            where[task] = {i: inverse.reshape(-1)[bounds[k] : bounds[k + 1]] for k, i in enumerate(wanted)}
        outputs = await asyncio.gather(*(self._task_outputs(task, vectors, distinct[task]) for task in needed))
        results = []
        for i in range(len(calls)):
            mine = {task: out[where[task][i]] for task, out in zip(needed, outputs, strict=True) if i in where[task]}
            results.append((vectors[rows[i]], mine, counts[rows[i]]))
        return results

    async def _task_outputs(self, task: str, vectors: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """One task's outputs (`mtl.inference.exported_model.task_outputs`) for `inputs` `(n, 1)` rows or `(n, 2)`
        pairs of rows of `vectors`: from its head deployment, or for a similarity task the cosine, here."""
        columns = [vectors[inputs[:, side]] for side in range(inputs.shape[1])]  # (n, H) each
        if task not in self.heads:  # similarity: no head
            return task_outputs(self.info["task_info"][task]["type"], None, *columns)
        return await self._call(self.heads[task].remote(*columns))

    async def _pooled(self, texts: list[str], tasks: tuple[str, ...] = (), pairs: bool = False) -> tuple:
        """(vectors of `texts`, task -> outputs, token counts) through the request batcher; `pairs`: texts are
        [a0, b0, a1, ...]."""
        return await self.batches((texts, tasks, pairs))

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(check_token)])
    async def model(self) -> dict:
        identities = await asyncio.gather(*(self._call(head.identity.remote()) for head in self.heads.values()),
                                          self._call(self.encoder.identity.remote()))  # fmt: skip
        heads = dict(zip(self.heads, identities[:-1], strict=True))
        limits = {key: self.limits[key] for key in ("max_texts", "max_chars", "max_body_bytes")}
        embeddings = {"max_inputs": MAX_EMBEDDING_INPUTS, "truncate": self.truncate, "dimensions": self.dimensions}
        return {**self.info, **self.identity, "embeddings": embeddings, "heads": heads, "encoder": identities[-1],
                "limits": limits}  # fmt: skip

    def _model_entry(self) -> dict:
        return {"id": self.identity["model"], "object": "model", "created": self.created, "owned_by": "mtl"}

    @api.get("/v1/models", response_model=OpenAIModelList, dependencies=[Depends(check_token)])
    async def models(self) -> dict:
        """OpenAI's model list: the one export served, its id the export's version id."""
        return {"object": "list", "data": [self._model_entry()]}

    @api.get("/v1/models/{model_id}", response_model=OpenAIModel, dependencies=[Depends(check_token)])
    async def model_entry(self, model_id: str) -> dict:
        if model_id != self.identity["model"]:
            raise Refusal(404, "unknown_model", f"model {model_id!r}: this app serves {self.identity['model']!r}")
        return self._model_entry()

    @api.post("/v1/embed", response_model=EmbedResponse, dependencies=[Depends(check_token)])
    async def embed(self, body: EmbedRequest) -> JSONResponse:
        self._check_limits(body.texts, "texts")
        vectors, *_ = await self._pooled(body.texts)
        if body.normalize:
            vectors = normalize_rows(vectors)
        return json_response({"embeddings": vectors, "dim": int(vectors.shape[1]), **self.identity})

    @api.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse, dependencies=[Depends(check_token)])
    async def embeddings(self, body: OpenAIEmbeddingRequest) -> JSONResponse:
        """OpenAI's embeddings API (the `openai` client, LangChain, LiteLLM): up to 2,048 texts, L2-normalised like
        /v1/embed. A text over the model's window is cut to it when `truncate` (the request's, else the server's)
        says so, else refused: never cut silently. `model` is the served export's id, whatever the request named."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        dimensions = body.dimensions or self.info["dim"]
        if dimensions not in self.dimensions:
            served = (f"; dimensions may be one of {self.dimensions}" if len(self.dimensions) > 1 else
                      " and its export declares no shorter ones (matryoshka_dims): omit dimensions")  # fmt: skip
            detail = f"dimensions: {dimensions} is not served; this model's vectors have {self.info['dim']} dimensions"
            raise Refusal(400, "dimensions_unsupported", detail + served)
        vectors, counts = await self._pooled_in_pieces(texts)  # (n, dim), (n,)
        window = self.info["max_seq_length"]
        truncate = self.truncate if body.truncate is None else body.truncate
        if not truncate and (over := np.flatnonzero(counts > window).tolist()):
            raise Refusal(400, "context_too_long", await self._tokenized(self._too_long, body.input, texts, over))
        vectors = normalize_rows(vectors[:, :dimensions]).astype(np.float32)
        if body.encoding_format == "base64":
            encoded = [base64.b64encode(vector.tobytes()).decode() for vector in vectors]
        else:
            encoded = list(vectors)  # float32 rows, written by orjson
        tokens = int(np.minimum(counts, window).sum())  # what the encoder read
        return json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": self.identity["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "encoder_fingerprint": self.identity["encoder_fingerprint"],
        })  # fmt: skip

    async def _pooled_in_pieces(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and token counts of up to 2,048 texts, `max_texts` at a time through the batcher, one piece after
        the other: a piece costs what a full /v1/embed request does (memory, one encoder call within
        call_timeout_s), and other requests' batches run between pieces."""
        step = self.limits["max_texts"]
        pieces = [await self._pooled(texts[start : start + step]) for start in range(0, len(texts), step)]
        return np.concatenate([vectors for vectors, *_ in pieces]), np.concatenate([counts for *_, counts in pieces])

    async def _tokenized(self, func, *args):
        """`func(*args)` on the one tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, func, *args)

    def _tokenizer_loaded(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        return self._tokenizer

    def _too_long(self, given: str | list[str], texts: list[str], over: list[int]) -> str:
        """The 400 for texts over the window: the first one's place and length, and both ways to have them cut."""
        first, window = over[0], self.info["max_seq_length"]
        length = len(self._tokenizer_loaded()(texts[first], verbose=False)["input_ids"])  # one text, whole
        where = "input" if isinstance(given, str) else f"input[{first}]"
        others = f" (and {len(over) - 1} more of the {len(texts)} inputs)" if len(over) > 1 else ""
        return (f"{where}: {length} tokens, over this model's window of {window} (max_seq_length){others}; send "
                f'"truncate": true to embed the first {window} tokens of each, or set truncate: true in the serve '
                "config (args)")  # fmt: skip

    @api.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(check_token)])
    async def predict(self, body: PredictRequest) -> JSONResponse:
        """`texts` for the single-text tasks (classification, multilabel) or `pairs` for the pair tasks
        (pair_classification, similarity); one prediction object per text or pair."""
        pairs = body.pairs is not None
        field = "pairs" if pairs else "texts"
        texts = [text for pair in body.pairs for text in pair] if pairs else body.texts
        self._check_limits(texts, field, pairs)
        try:
            tasks = select_typed_tasks(self.info["task_info"], body.tasks, pairs)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=f"tasks: {error}") from error
        if not tasks:
            kind = "pair" if pairs else "single-text"
            types = {task: item["type"] for task, item in self.info["task_info"].items()}
            raise HTTPException(status_code=422, detail=f"{field}: this model has no {kind} task; its tasks: {types}")
        _, outputs, _ = await self._pooled(texts, tuple(tasks), pairs)
        entries = {task: task_entries(self.info["task_info"][task], outputs[task]) for task in tasks}
        count = len(texts) // 2 if pairs else len(texts)
        predictions = [{task: entries[task][row] for task in tasks} for row in range(count)]
        ingress_metrics().predicted(tasks, count)
        return JSONResponse({"predictions": predictions})

    @api.post("/v1/similarity", response_model=SimilarityResponse, dependencies=[Depends(check_token)])
    async def similarity(self, body: SimilarityRequest) -> JSONResponse:
        texts = [text for pair in body.pairs for text in pair]
        self._check_limits(texts, "pairs")
        vectors, *_ = await self._pooled(texts)
        scores = pair_cosine(vectors[0::2], vectors[1::2])
        return JSONResponse({"scores": [float(score) for score in scores]})
