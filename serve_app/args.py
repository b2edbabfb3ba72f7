"""The builder's arguments (the `args:` block of `serve_config.yaml`), validated by pydantic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mtl.export_format import MANIFEST_FILE, is_export

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR_ENV = "MTL_MODEL_DIR"


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str = "runs/production/export"
    """Export directory; the environment variable MTL_MODEL_DIR overrides it; relative = from the project root."""
    max_batch_size: int = Field(32, ge=1, le=1024)
    """Texts per encoder forward pass (runtime: the Encoder's user_config `max_batch_size`)."""
    max_batch_requests: int = Field(64, ge=1, le=1024)
    """Concurrent requests the ingress merges into one encoder call and one call per head (runtime: the
    Ingress's user_config `max_batch_size`)."""
    batch_wait_timeout_s: float = Field(0.0, ge=0, le=1)
    """How long a batch waits for more requests once one is queued (ingress and encoder; runtime: each one's
    user_config). 0 = no fixed delay: a batch is whatever queued while the previous one ran."""
    max_texts: int = Field(256, ge=1)
    """Texts (or pairs x 2) per request of /v1/embed, /v1/predict, /v1/similarity; more is 413 (use jobs.embed for
    bulk work). /v1/embeddings takes OpenAI's 2,048 inputs and sends them to the batcher in pieces of this size."""
    max_chars: int = Field(2000, ge=1)
    """Characters per text (not /v1/embeddings, which counts tokens against the export's max_seq_length); longer is
    413."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Request body size; larger is 413 before the body is parsed. 4 MiB holds 2,048 /v1/embeddings inputs of
    ~2,000 characters each (a 64-token window is ~300)."""
    truncate: bool = False
    """/v1/embeddings: a text over the export's max_seq_length tokens is cut to it (true) or refused with a 400
    (false); a request's own `truncate` overrides this. /v1/embed and /v1/predict always cut."""
    call_timeout_s: float = Field(30.0, gt=0)
    """A call to the encoder or a head that takes longer is a 503 with Retry-After, never a hung request."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Encoder weights and compute: `auto` is bf16 where the hardware has it natively (AVX512-BF16/AMX CPUs, GPUs that
    support it), else fp32; each encoder replica decides on its own machine and reports it (`/v1/model` ->
    `encoder.precision`, and its log). bf16 served 1.9-2.2x fp32's requests at concurrency 32 on this 2-core AMX
    machine, vectors at cosine >= 0.9998 to fp32 (python -m jobs.bench.serve --anchor infinity)."""
    encoder_replicas: int = Field(1, ge=1)
    encoder_cpus: float = Field(1.0, gt=0)
    encoder_gpus: float = Field(0.0, ge=0)
    encoder_threads: int | None = Field(None, ge=1)
    """torch threads in each encoder replica (default: 1 when it computes bf16 on a CPU, else torch's choice)."""
    head_cpus: float = Field(0.1, gt=0)
    ingress_cpus: float = Field(0.25, gt=0)
    ingress_replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    """Requests in flight per ingress replica."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests waiting for an ingress replica; beyond that Serve answers 503 (-1 = unbounded)."""
    auth_token_env: str = "MTL_API_TOKEN"
    """If this environment variable is set on the ingress, /v1/* requires `Authorization: Bearer <token>`."""
    allow_unauthenticated: bool = False
    """Bound to a non-loopback address (http_options.host) with no token, the app refuses to start unless true."""

    def resolved_model_dir(self) -> Path:
        raw = os.environ.get(MODEL_DIR_ENV) or self.model_dir
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (Path.cwd() / path) if (Path.cwd() / path).is_dir() else PROJECT_ROOT / path
        if not is_export(path):
            source = f"${MODEL_DIR_ENV}" if os.environ.get(MODEL_DIR_ENV) else "args.model_dir"
            raise FileNotFoundError(f"{source}={raw!r}: {path} is not an export directory (no {MANIFEST_FILE})")
        return path.resolve()  # pins the published version: retraining moves the symlink, not these files
