"""How the app answers a failure: a 5xx is a short message and a request id, never the error's text (a RayTaskError's
holds the remote traceback), logged in full under that id; a 422 echoes its input in a form JSON can carry."""

from __future__ import annotations

import logging
import math
import re
import uuid

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray.serve.context import _get_serve_request_context
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.metrics import ingress_metrics, is_refusal

logger = logging.getLogger("ray.serve")
SURROGATE = re.compile("[\ud800-\udfff]")
# The `reason` of a refusal that does not name its own (FastAPI's, Starlette's, a plain HTTPException's).
REASONS = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_request",
    503: "unavailable",
}


class Refusal(HTTPException):
    """An HTTPException that names why the request is refused: the `reason` tag of `mtl_refused_requests`."""

    def __init__(self, status_code: int, reason: str, detail: str, headers: dict | None = None):
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.reason = reason


def request_id(request: Request) -> str:
    """Serve's id of this request (the client's `x-request-id` when it sent one; Serve's own replica log lines carry
    it), else that header, else a new one (outside Serve)."""
    return _get_serve_request_context().request_id or request.headers.get("x-request-id") or uuid.uuid4().hex


def _server_error(status: int, message: str, rid: str, headers: dict | None = None) -> JSONResponse:
    """`{"detail", "request_id"}` (Serve itself puts the id in the `X-Request-ID` header of every answer)."""
    return JSONResponse({"detail": f"{message} (request id {rid})", "request_id": rid}, status, headers)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """Anything unexpected inside the replica: a JSON 500 with the error's type and a request id, never a hang, an
    HTML page or the error's text (a RayTaskError's holds the remote traceback); logged in full under that id."""
    rid = request_id(request)
    logger.error("request %s: unhandled error on %s", rid, request.url.path, exc_info=error)
    return _server_error(500, f"internal error ({type(error).__name__}), details in the replica log", rid)


async def http_error(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI's own answer below 500; a 5xx (the 503s of `Ingress._call`) also carries a request id, logged with
    its cause."""
    if is_refusal(error.status_code):
        reason = error.reason if isinstance(error, Refusal) else REASONS.get(error.status_code)
        ingress_metrics().refusal(reason or f"http_{error.status_code}")
    if error.status_code < 500:
        return await http_exception_handler(request, error)
    rid = request_id(request)
    logger.warning("request %s: %s on %s: %s (cause: %r)", rid, error.status_code, request.url.path, error.detail,
                   error.__cause__)  # fmt: skip
    return _server_error(error.status_code, error.detail, rid, error.headers)


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 body, with the echoed input made encodable: otherwise encoding the 422 itself fails (a 500)."""
    ingress_metrics().refusal("invalid_request")
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
