"""The ingress's bearer-token dependency (FastAPI's HTTPBearer) and the refusal to serve beyond loopback without a
token, without starting Ray."""

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from serve_app.guards import check_exposure, check_token


def client(monkeypatch, token: str | None) -> TestClient:
    app = FastAPI()
    app.state.auth_token_env = "MTL_TEST_TOKEN"
    if token is None:
        monkeypatch.delenv("MTL_TEST_TOKEN", raising=False)
    else:
        monkeypatch.setenv("MTL_TEST_TOKEN", token)

    @app.get("/private", dependencies=[Depends(check_token)])
    async def private() -> dict:
        return {"ok": True}

    return TestClient(app)


def test_token_required_when_configured(monkeypatch):
    api = client(monkeypatch, "s3cret")
    assert api.get("/private").status_code == 401
    wrong = api.get("/private", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert api.get("/private", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert api.get("/private", headers={"Authorization": "Bearer s3cret"}).json() == {"ok": True}
    schemes = api.get("/openapi.json").json()["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": schemes["HTTPBearer"]["description"]}
    }


def test_no_token_configured_means_open(monkeypatch):
    assert client(monkeypatch, None).get("/private").json() == {"ok": True}


def test_bound_beyond_loopback_without_a_token_the_app_refuses_to_start(monkeypatch, tiny_export):
    import serve_app.app as app_module

    args = {"model_dir": str(tiny_export), "auth_token_env": "MTL_TEST_TOKEN"}
    monkeypatch.delenv("MTL_TEST_TOKEN", raising=False)
    for host in ("127.0.0.1", "::1", "localhost"):
        monkeypatch.setattr(app_module, "http_host", lambda host=host: host)
        app_module.build_app(args)
    monkeypatch.setattr(app_module, "http_host", lambda: "0.0.0.0")
    with pytest.raises(ValueError, match=r"http_options.host='0.0.0.0' is reachable.*\$MTL_TEST_TOKEN.*not set"):
        app_module.build_app(args)
    app_module.build_app({**args, "allow_unauthenticated": True})
    monkeypatch.setenv("MTL_TEST_TOKEN", "s3cret")
    app_module.build_app(args)
    with pytest.raises(ValueError, match="reachable from other machines"):  # the replica checks its own environment
        check_exposure("10.0.0.5", "MTL_NOT_SET_ANYWHERE", False)


def test_a_model_call_past_its_timeout_is_a_503_with_retry_after_not_a_hang():
    import asyncio
    from types import SimpleNamespace

    from fastapi import HTTPException

    from serve_app.ingress import Ingress

    class Stuck:
        cancelled = False

        def __await__(self):
            return asyncio.sleep(3600).__await__()

        def cancel(self):
            Stuck.cancelled = True

    owner = SimpleNamespace(limits={"call_timeout_s": 0.05})
    with pytest.raises(HTTPException) as caught:
        asyncio.run(Ingress.func_or_class._call(owner, Stuck()))
    assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
    assert "no model answer within 0.05 s" in caught.value.detail and Stuck.cancelled
