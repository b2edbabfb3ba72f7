"""The ingress's bearer-token dependency (FastAPI's HTTPBearer), without starting Ray."""

from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from serve_app.ingress import check_token


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
