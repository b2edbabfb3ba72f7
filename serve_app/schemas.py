"""Request and response bodies of the HTTP API (v1); FastAPI turns them into /openapi.json."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

# Characters a text may not hold, refused here (422) so they never reach a batch shared with other requests.
# A lone surrogate (U+D800-U+DFFF) is a valid JSON escape but has no UTF-8 form: the tokenizer raises on it, and
# that once failed every request batched with it. NUL the tokenizer drops silently (the text encoded would not be
# the one sent). Noncharacters (U+FFFE, U+FDD0, ...) are valid code points with a UTF-8 form: the tokenizer reads
# them as [UNK], so they are served.
UNENCODABLE = re.compile("[\x00\ud800-\udfff]")
TEXT_RULES = "each text non-empty, without NUL or lone surrogates (U+D800-U+DFFF)"


def _unencodable(text: str) -> str | None:
    """Why `text` cannot be encoded (its first offending character), or None."""
    found = UNENCODABLE.search(text)
    if found is None:
        return None
    code = ord(found.group())
    kind = "NUL" if code == 0 else "a lone surrogate"
    return f"U+{code:04X} ({kind}) at character {found.start()}, which cannot be encoded"


def _check_texts(texts: list[str]) -> list[str]:
    for index, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"text at index {index} is empty")
        if problem := _unencodable(text):
            raise ValueError(f"text at index {index} holds {problem}")
    return texts


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(
        min_length=1, description=TEXT_RULES, examples=[["a gripping , beautiful film", "who wrote hamlet ?"]]
    )
    normalize: StrictBool = True

    _check = field_validator("texts")(_check_texts)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] = Field(min_length=1, description=TEXT_RULES, examples=[["a gripping , beautiful film"]])
    tasks: list[StrictStr] | None = Field(None, min_length=1, description="task names; omitted = all tasks")

    _check = field_validator("texts")(_check_texts)


class TaskPrediction(BaseModel):
    label: str
    label_id: int
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[dict[str, TaskPrediction]]


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[tuple[StrictStr, StrictStr]] = Field(
        min_length=1, description=TEXT_RULES, examples=[[["a cat sits", "a cat is sitting"]]]
    )

    @field_validator("pairs")
    @classmethod
    def _check_pairs(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for index, pair in enumerate(pairs):
            for side, text in enumerate(pair):
                if not text.strip():
                    raise ValueError(f"pair at index {index} has an empty text")
                if problem := _unencodable(text):
                    raise ValueError(f"pair at index {index}, text {side} holds {problem}")
        return pairs


class SimilarityResponse(BaseModel):
    scores: list[float]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body; `dimensions` and `user` are accepted as the API defines them."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr | list[StrictStr] = Field(description=TEXT_RULES, examples=["a gripping , beautiful film"])
    model: StrictStr = Field("mtl", description="echoed back; this app serves one model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's dimension when given")
    user: StrictStr | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("input is an empty string")
            if problem := _unencodable(value):
                raise ValueError(f"input holds {problem}")
            return value
        if not value:
            raise ValueError("input is an empty list")
        return _check_texts(value)


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
