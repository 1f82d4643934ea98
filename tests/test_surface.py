"""What answers without a key, the /v1 paths, the probes, the OpenAPI document, and no paths in
any answer. The real app over HTTP on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.api.routes import without_paths
from riskengine.home import open_engine
from riskengine.settings import Settings
from tests.conftest import OSLO_IP
from tests.test_redis_outage import PrivateRedis

PROBES = ("/health", "/livez", "/readyz")


def test_only_the_probes_answer_without_a_key(client: TestClient) -> None:
    bare = {"Authorization": ""}
    for path in PROBES:
        for prefix in ("", "/v1"):
            assert client.get(prefix + path, headers=bare).status_code == 200, prefix + path
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics", "/v1/docs", "/anything"):
        assert client.get(path, headers=bare).status_code == 401, path
    for path in ("/docs", "/redoc", "/openapi.json"):      # hidden even with a key unless RISKENGINE_DOCS
        assert client.get(path).status_code == 404, path


def test_every_path_is_also_under_v1(client: TestClient) -> None:
    body = {"event_id": "v1-1", "user_id": "vera", "action": "login", "ip": OSLO_IP}
    first = client.post("/v1/score", json=body)
    assert first.status_code == 200 and first.json()["event_id"] == "v1-1"
    assert client.post("/score", json=body).json() == first.json()      # the same event, the same store
    assert client.post("/v1/feedback", json={"event_id": "v1-1", "outcome": "confirmed_legit"}).status_code == 200
    assert client.get("/v1/metrics").status_code == 200
    assert client.get("/v1/health").json() == client.get("/health").json()
    assert client.delete("/v1/users/vera").status_code == 204
    assert client.post("/v1/score", json={**body, "ip": "nope"}).status_code == 422


def test_livez_and_readyz(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "not_ready": []}


def test_readyz_is_503_naming_the_store_when_it_does_not_answer_while_livez_stays_200(settings: Settings,
                                                                                    tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path)
    private.start()
    try:
        on_redis = settings.model_copy(update={"store": f"redis://127.0.0.1:{private.port}/0"})
        with TestClient(create_app(on_redis)) as client:
            assert client.get("/readyz").status_code == 200
            private.kill()                       # the store is gone: the process still serves
            ready = client.get("/v1/readyz")
            assert ready.status_code == 503 and ready.json() == {"status": "unavailable", "not_ready": ["store"]}
            assert ready.headers["retry-after"] == "1"
            assert client.get("/livez").status_code == 200
            assert str(settings.home) not in ready.text and str(private.port) not in ready.text
    finally:
        private.kill()


def test_health_errors_show_no_paths(settings: Settings, tmp_path: Path) -> None:
    engine = open_engine(settings)
    home = str(settings.home)
    engine.model_error = f"{home}/models/2026-x/model.pkl: sha256 differs from metadata.json"
    engine.policy_error = f"policy file '{home}/policy.yaml', field bands.high: must be a number"
    with TestClient(create_app(settings, engine=engine)) as client:
        health = client.get("/health").json()
    assert home not in str(health) and "/models/" not in str(health)
    assert health["model_error"] == "model.pkl: sha256 differs from metadata.json"
    assert health["policy_error"] == "policy file 'policy.yaml', field bands.high: must be a number"


@pytest.mark.parametrize("text,expected", [
    ("/srv/a/b.yaml: bad", "b.yaml: bad"), ("see C:\\data\\k.key now", "see k.key now"),
    ("relative/path stays", "relative/path stays"), ("no path", "no path"), ("at /x", "at /x"),
])
def test_without_paths(text: str, expected: str) -> None:
    assert without_paths(text) == expected


def test_the_openapi_document_declares_the_bearer_scheme_and_every_status(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"docs": True}))) as client:
        assert client.get("/docs", headers={"Authorization": ""}).status_code == 200
        document = client.get("/openapi.json", headers={"Authorization": ""}).json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "an API key from RISKENGINE_API_KEYS"}
    for prefix in ("", "/v1"):
        score = document["paths"][f"{prefix}/score"]["post"]
        assert score["security"] == [{"bearer": []}]
        assert {"200", "400", "401", "403", "408", "413", "422", "429", "503"} <= set(score["responses"])
        assert score["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ScoreRequest"}
        assert "404" in document["paths"][f"{prefix}/feedback"]["post"]["responses"]
        assert "404" in document["paths"][f"{prefix}/users/{{user_id}}"]["delete"]["responses"]
        assert "security" not in document["paths"][f"{prefix}/livez"]["get"]
        assert "503" in document["paths"][f"{prefix}/readyz"]["get"]["responses"]
    schemas = document["components"]["schemas"]
    assert {"ScoreRequest", "SessionIn", "FeedbackRequest", "ErrorResponse", "ScoreResponse"} <= set(schemas)
    assert "user_id" in schemas["ScoreRequest"]["required"]
