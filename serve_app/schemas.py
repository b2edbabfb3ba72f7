"""Request and response bodies of the HTTP API (v1); FastAPI turns them into /openapi.json."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator

# Characters a text may not hold, refused here (422) so they never reach a batch shared with other requests.
# A lone surrogate (U+D800-U+DFFF) is a valid JSON escape but has no UTF-8 form: the tokenizer raises on it, and
# that once failed every request batched with it. NUL the tokenizer drops silently (the text encoded would not be
# the one sent). Noncharacters (U+FFFE, U+FDD0, ...) are valid code points with a UTF-8 form: the tokenizer reads
# them as [UNK], so they are served.
UNENCODABLE = re.compile("[\x00\ud800-\udfff]")
TEXT_RULES = "each text non-empty, without NUL or lone surrogates (U+D800-U+DFFF)"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per /v1/embeddings request; LangChain's default chunk_size (1,000) fits


def _unencodable(text: str) -> str | None:
    """Why `text` cannot be encoded (its first offending character), or None."""
    found = UNENCODABLE.search(text)
    if found is None:
        return None
    code = ord(found.group())
    kind = "NUL" if code == 0 else "a lone surrogate"
    return f"U+{code:04X} ({kind}) at character {found.start()}, which cannot be encoded"


def _check_texts(texts: list[str] | None) -> list[str] | None:
    for index, text in enumerate(texts or ()):
        if not text.strip():
            raise ValueError(f"text at index {index} is empty")
        if problem := _unencodable(text):
            raise ValueError(f"text at index {index} holds {problem}")
    return texts


def _check_pairs(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    for index, pair in enumerate(pairs or ()):
        for side, text in enumerate(pair):
            if not text.strip():
                raise ValueError(f"pair at index {index} has an empty text")
            if problem := _unencodable(text):
                raise ValueError(f"pair at index {index}, text {side} holds {problem}")
    return pairs


Pair = tuple[StrictStr, StrictStr]


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
    model: str = Field(description="the served export's version id (GET /v1/models), the space these vectors are in")
    encoder_fingerprint: str | None = Field(description="the encoder weights' fingerprint (the export's mtl.json)")


class PredictRequest(BaseModel):
    """Exactly one of `texts` (scored by the single-text tasks: classification, multilabel) or `pairs` (scored by the
    pair tasks: pair_classification, similarity)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(
        None, min_length=1, description=f"single texts; {TEXT_RULES}", examples=[["a gripping , beautiful film"]]
    )
    pairs: list[Pair] | None = Field(
        None,
        min_length=1,
        description=f"[text, text_pair] pairs for pair tasks; {TEXT_RULES}",
        examples=[[["a man is playing a guitar", "someone plays an instrument"]]],
    )
    tasks: list[StrictStr] | None = Field(
        None,
        min_length=1,
        description="task names; omitted = every task of the input's kind (single-text tasks for texts, pair tasks "
        "for pairs); a task of the other kind is a 422",
    )

    _check = field_validator("texts")(_check_texts)
    _check_both = field_validator("pairs")(_check_pairs)

    @model_validator(mode="after")
    def _one_input(self) -> PredictRequest:
        if (self.texts is None) == (self.pairs is None):
            given = "both" if self.texts is not None else "neither"
            raise ValueError(f"texts or pairs: give exactly one of them (texts for single-text tasks, pairs for pair "
                             f"tasks), {given} given")  # fmt: skip
        return self


class TaskPrediction(BaseModel):
    """classification and pair_classification: the most probable label."""

    label: str = Field(description="the most probable label's name")
    label_id: int = Field(description="its id (position in the task's labels)")
    probabilities: dict[str, float] = Field(description="every label's probability (softmax, sums to 1)")


class MultilabelPrediction(BaseModel):
    """multilabel: every label whose probability reaches its threshold."""

    labels: list[str] = Field(description="the chosen labels' names, in label order (may be empty)")
    label_ids: list[int] = Field(description="their ids")
    probabilities: dict[str, float] = Field(description="every label's own probability (sigmoid; no sum)")
    thresholds: dict[str, float] = Field(description="each label's threshold, chosen on validation data")


class SimilarityPrediction(BaseModel):
    """similarity: the pair's cosine, and the same on the task's score scale."""

    score: float = Field(description="lo + clamp(cosine, 0, 1) * (hi - lo), [lo, hi] the task's score_range")
    cosine: float = Field(description="cosine of the two texts' embeddings")


class PredictResponse(BaseModel):
    predictions: list[dict[str, TaskPrediction | MultilabelPrediction | SimilarityPrediction]] = Field(
        description="one object per text or pair, in request order: task name -> that task type's prediction"
    )


class SimilarityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(min_length=1, description=TEXT_RULES, examples=[[["a cat sits", "a cat is sitting"]]])

    _check = field_validator("pairs")(_check_pairs)


class SimilarityResponse(BaseModel):
    scores: list[float]


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body, plus `truncate` (as Hugging Face's TEI names it)."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr | list[StrictStr] = Field(
        description=f"a text or up to {MAX_EMBEDDING_INPUTS} texts; {TEXT_RULES}; text only (token ids of another "
        "tokenizer are refused)",
        examples=["a gripping , beautiful film"],
    )
    model: StrictStr = Field("mtl", description="any name: this app serves one model, and answers with its id")
    encoding_format: Literal["float", "base64"] | None = Field("float", description="null (LiteLLM sends it): float")
    dimensions: int | None = Field(
        None, ge=1, description="the model's dimension, or one its export declares (matryoshka_dims); else a 400"
    )
    user: StrictStr | None = None
    truncate: StrictBool | None = Field(
        None,
        description="a text over the model's max_seq_length tokens: cut to it (true) or a 400 (false); omitted: the "
        "server's `truncate` setting (GET /v1/model, embeddings.truncate)",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _refuse_token_ids(cls, value: object) -> object:
        """OpenAI also takes token ids; ours would be another tokenizer's (tiktoken's, from LangChain's default)."""
        if isinstance(value, list) and value and isinstance(value[0], int | list) and not isinstance(value[0], bool):
            raise ValueError(
                "input holds token ids; this server takes text and tokenizes it with its own model's tokenizer "
                "(LangChain's OpenAIEmbeddings: pass check_embedding_ctx_length=False)"
            )
        return value

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
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"input holds {len(value)} texts, at most {MAX_EMBEDDING_INPUTS} per request (OpenAI's "
                             "limit): send them in several requests (LangChain: chunk_size)")  # fmt: skip
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
    model: str = Field(description="the served export's version id (GET /v1/models), whatever the request named")
    usage: OpenAIUsage = Field(description="tokens embedded (the model's tokenizer, special tokens included, after "
                               "any truncation)")  # fmt: skip
    encoder_fingerprint: str | None = Field(description="the encoder weights' fingerprint (not in OpenAI's API)")


class OpenAIModel(BaseModel):
    id: str = Field(description="the export's version id: its directory's name under versions/")
    object: Literal["model"] = "model"
    created: int = Field(description="when the export was written (its mtl.json), Unix seconds")
    owned_by: str


class OpenAIModelList(BaseModel):
    """OpenAI's `GET /v1/models`: the one export this app serves."""

    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class TaskInfo(BaseModel):
    """One task of the served export."""

    type: Literal["classification", "pair_classification", "similarity", "multilabel"] = Field(
        description="classification and multilabel score `texts`, pair_classification and similarity `pairs`"
    )
    labels: list[str] = Field(description="label names in id order (none for similarity)")
    thresholds: list[float] | None = Field(None, description="multilabel: each label's threshold")
    score_range: tuple[float, float] | None = Field(None, description="similarity: [lo, hi] of the served score")
    validation: dict[str, float] = Field(
        description="the export's validation metrics for this task (accuracy/macro_f1; similarity: spearman/pearson; "
        "multilabel: micro_f1/macro_f1)"
    )


class EmbeddingsInfo(BaseModel):
    """What `POST /v1/embeddings` takes."""

    max_inputs: int = Field(description="texts per request")
    truncate: bool = Field(description="the default for a request that does not send `truncate`")
    dimensions: list[int] = Field(
        description="the values `dimensions` may take: the model's own and any its export declares (matryoshka_dims)"
    )


class ModelInfo(BaseModel):
    model: str = Field(description="the export's version id (GET /v1/models; `model` in embedding responses)")
    encoder_fingerprint: str | None
    embeddings: EmbeddingsInfo
    tasks: dict[str, list[str]]
    task_info: dict[str, TaskInfo]
    pooling: str
    dim: int
    max_seq_length: int
    provenance: dict
    metrics: dict
    heads: dict[str, dict]
    encoder: dict = Field(description="the encoder replica that answered: pid, replica id, precision it computes in")
    limits: dict[str, int]
