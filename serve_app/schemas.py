"""Request and response bodies of the HTTP API (v1); FastAPI turns them into /openapi.json."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator


def _not_empty(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"text at index {index} is empty")
    return texts


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, examples=[["a gripping , beautiful film", "who wrote hamlet ?"]])
    normalize: StrictBool = True

    _check = field_validator("texts")(_not_empty)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, examples=[["a gripping , beautiful film"]])
    tasks: list[StrictStr] | None = Field(None, min_length=1, description="task names; omitted = all tasks")

    _check = field_validator("texts")(_not_empty)


class TaskPrediction(BaseModel):
    label: str
    label_id: int
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[dict[str, TaskPrediction]]


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[tuple[StrictStr, StrictStr]] = Field(min_length=1, examples=[[["a cat sits", "a cat is sitting"]]])

    @field_validator("pairs")
    @classmethod
    def _pairs_not_empty(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for index, (left, right) in enumerate(pairs):
            if not left.strip() or not right.strip():
                raise ValueError(f"pair at index {index} has an empty text")
        return pairs


class SimilarityResponse(BaseModel):
    scores: list[float]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body; `dimensions` and `user` are accepted as the API defines them."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr | list[StrictStr] = Field(examples=["a gripping , beautiful film"])
    model: StrictStr = Field("mtl", description="echoed back; this app serves one model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's dimension when given")
    user: StrictStr | None = None

    @field_validator("input")
    @classmethod
    def _input_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("input is an empty string")
            return value
        if not value:
            raise ValueError("input is an empty list")
        return _not_empty(value)


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ModelInfo(BaseModel):
    tasks: dict[str, list[str]]
    pooling: str
    dim: int
    max_seq_length: int
    provenance: dict
    metrics: dict
    heads: dict[str, dict]
    limits: dict[str, int]
