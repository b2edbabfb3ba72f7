"""`Ingress` deployment: the FastAPI app. One encoder pass per text, then the requested heads concurrently."""

import asyncio
import hmac
import os
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from mtl.inference import label_entries, normalize_rows, pair_cosine, select_tasks
from serve_app.schemas import (
    EmbedRequest,
    EmbedResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    SimilarityRequest,
    SimilarityResponse,
)

api = FastAPI(
    title="mtl multi-task sentence model",
    version="1",
    description="Embeddings, per-task predictions and similarity from one shared encoder.",
)


bearer = HTTPBearer(auto_error=False, description="required when the token variable (`auth_token_env`) is set")


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


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, encoder: DeploymentHandle, heads: dict[str, DeploymentHandle], info: dict, limits: dict):
        self.encoder = encoder
        self.heads = heads
        self.info = info  # tasks -> labels, pooling, dim, max_seq_length, provenance, metrics
        self.limits = limits  # max_texts, max_chars
        api.state.auth_token_env = limits.get("auth_token_env")

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
        """Await a handle call; overload or a lost replica is 503 (retryable), never 500."""
        try:
            return await response
        except BackPressureError as error:
            raise HTTPException(status_code=503, detail=f"overloaded, retry later: {error}") from error
        except RayActorError as error:
            raise HTTPException(status_code=503, detail="a model replica is restarting, retry later") from error

    async def _pooled(self, texts: list[str]) -> np.ndarray:
        unique = list(dict.fromkeys(texts))  # one encoder pass per distinct text
        vectors = await self._call(self.encoder.encode.remote(unique))
        index = {text: row for row, text in enumerate(unique)}
        return vectors[[index[text] for text in texts]]

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/model", response_model=ModelInfo, dependencies=[Depends(check_token)])
    async def model(self) -> dict:
        identities = await asyncio.gather(*(self._call(head.identity.remote()) for head in self.heads.values()))
        heads = dict(zip(self.heads, identities, strict=True))
        limits = {key: self.limits[key] for key in ("max_texts", "max_chars")}
        return {**self.info, "heads": heads, "limits": limits}

    @api.post("/v1/embed", response_model=EmbedResponse, dependencies=[Depends(check_token)])
    async def embed(self, body: EmbedRequest) -> dict:
        self._check_limits(body.texts, "texts")
        vectors = await self._pooled(body.texts)
        if body.normalize:
            vectors = normalize_rows(vectors)
        return {"embeddings": vectors.tolist(), "dim": int(vectors.shape[1])}

    @api.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(check_token)])
    async def predict(self, body: PredictRequest) -> dict:
        self._check_limits(body.texts, "texts")
        try:
            tasks = select_tasks(list(self.heads), body.tasks)
        except ValueError as error:
            raise HTTPException(status_code=422, detail=f"tasks: {error}") from error
        pooled = await self._pooled(body.texts)
        outputs = await asyncio.gather(*(self._call(self.heads[task].remote(pooled)) for task in tasks))
        entries = {
            task: label_entries(self.info["tasks"][task], probabilities)
            for task, probabilities in zip(tasks, outputs, strict=True)
        }
        predictions = [{task: entries[task][row] for task in tasks} for row in range(len(body.texts))]
        return {"predictions": predictions}

    @api.post("/v1/similarity", response_model=SimilarityResponse, dependencies=[Depends(check_token)])
    async def similarity(self, body: SimilarityRequest) -> dict:
        texts = [text for pair in body.pairs for text in pair]
        self._check_limits(texts, "pairs")
        vectors = await self._pooled(texts)
        scores = pair_cosine(vectors[0::2], vectors[1::2])
        return {"scores": [float(score) for score in scores]}
