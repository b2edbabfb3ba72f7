"""What a request must pass before a route runs: the bearer token, the body size; and the deploy-time refusal to
serve a non-loopback address without a token."""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve_app.metrics import ingress_metrics

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
    ingress_metrics().refusal("body_too_large")
    body = JSONResponse({"detail": f"request body over {limit} bytes (args.max_body_bytes)"}, status_code=413)
    await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
    await send({"type": "http.response.body", "body": body.body})
