"""API keys (api/auth.py) over real HTTP: who may call, with which scope, and keys that rotate."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskengine.api import create_app
from riskengine.api.auth import Client, KeyRing, parse_entries
from riskengine.settings import Settings
from tests.conftest import OSLO_IP, T0, iso


def body(n: int | str, user: str = "alice") -> dict:
    return {"event_id": f"auth-{n}", "user_id": user, "action": "login", "ip": OSLO_IP, "timestamp": iso(T0)}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_entries_carry_tenant_and_scopes_with_defaults() -> None:
    entries = parse_entries("app:k1, ops:k2:acme:metrics , both:k3::score+feedback", "test", ",")
    clients = [client for client, _ in entries]
    assert clients[0] == Client("app", "default", frozenset({"score", "feedback", "erase", "metrics"}))
    assert clients[1] == Client("ops", "acme", frozenset({"metrics"}))
    assert clients[2] == Client("both", "default", frozenset({"score", "feedback"}))


@pytest.mark.parametrize("text", ["justaname", "app:", ":SECRETX", "app:SECRETX:t:score+admin",
                                  "app:SECRETX:t:score:extra", "app:SECRETX:t\x07:score"])
def test_malformed_entries_are_refused_without_showing_the_key(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_entries(text, "RISKENGINE_API_KEYS", ",")
    assert "entry 1" in str(refused.value)
    assert "SECRETX" not in str(refused.value)


def test_missing_wrong_and_malformed_keys_get_401_and_change_nothing(client) -> None:
    for headers in ({"Authorization": ""}, bearer("wrong"), {"Authorization": "Basic let-me-in"},
                    {"Authorization": "Bearer"}):
        for method, path, json in (("POST", "/score", body(1)), ("POST", "/feedback", None),
                                   ("DELETE", "/users/alice", None), ("GET", "/metrics", None),
                                   ("GET", "/v1/metrics", None), ("GET", "/nowhere", None)):
            response = client.request(method, path, json=json, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/feedback", json={"event_id": "auth-1", "outcome": "confirmed_legit"}).status_code == 404


def test_a_key_without_the_scope_gets_403_and_changes_nothing(settings: Settings) -> None:
    scoped = settings.model_copy(update={"api_keys": SecretStr(
        "scorer:s-key::score,labeller:l-key::feedback,eraser:e-key::erase,watcher:w-key::metrics")})
    with TestClient(create_app(scoped)) as client:
        assert client.post("/score", json=body(1), headers=bearer("s-key")).status_code == 200
        for key in ("l-key", "e-key", "w-key"):
            refused = client.post("/score", json=body(f"x-{key}"), headers=bearer(key))
            assert refused.status_code == 403 and "'score' scope" in refused.json()["detail"]
        feedback = {"event_id": "auth-1", "outcome": "step_up_passed"}
        assert client.post("/feedback", json=feedback, headers=bearer("s-key")).status_code == 403
        assert client.delete("/users/alice", headers=bearer("s-key")).status_code == 403
        assert client.get("/metrics", headers=bearer("s-key")).status_code == 403
        assert client.get("/v1/metrics", headers=bearer("w-key")).status_code == 200
        assert client.post("/feedback", json=feedback, headers=bearer("l-key")).status_code == 200
        assert client.delete("/users/alice", headers=bearer("e-key")).status_code == 204
        # the refused score left no event behind
        assert client.post("/feedback", json={"event_id": "auth-x-l-key", "outcome": "confirmed_legit"},
                           headers=bearer("l-key")).status_code == 404


def _write(path: Path, text: str, mtime_step: int) -> None:
    path.write_text(text)
    stat = path.stat()          # a distinct modification time even within the file system's granularity
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + mtime_step * 1_000_000_000))


def test_the_keys_file_rotates_keys_without_a_restart(settings: Settings, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    _write(keys_file, "# rotated by the secret store\nold:old-key\n", 1)
    rotating = settings.model_copy(update={"api_keys": SecretStr(""), "api_keys_file": keys_file})
    with TestClient(create_app(rotating)) as client:
        assert client.post("/score", json=body(1), headers=bearer("old-key")).status_code == 200
        assert client.post("/score", json=body(2), headers=bearer("new-key")).status_code == 401

        _write(keys_file, "new:new-key:default:score\n", 2)
        assert client.post("/score", json=body(3), headers=bearer("new-key")).status_code == 200
        assert client.post("/score", json=body(4), headers=bearer("old-key")).status_code == 401
        assert client.get("/metrics", headers=bearer("new-key")).status_code == 403

        _write(keys_file, "broken entry without a key\n", 3)      # refused: the keys before it stay
        assert client.post("/score", json=body(5), headers=bearer("new-key")).status_code == 200


def test_an_unreadable_keys_file_stops_the_start(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RISKENGINE_API_KEYS_FILE"):
        KeyRing("", tmp_path / "absent")


def test_keys_never_reach_the_log(settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    _write(keys_file, "filed:filed-secret-key\n", 1)
    quiet = settings.model_copy(update={"api_keys_file": keys_file})
    with caplog.at_level(logging.DEBUG), TestClient(create_app(quiet)) as client:
        client.post("/score", json=body(1), headers=bearer("filed-secret-key"))
        client.post("/score", json=body(2), headers=bearer("guessed-secret-key"))
        _write(keys_file, "filed:filed-secret-key\nbad entry with secret-key-in-it\n", 2)
        client.post("/score", json=body(3), headers=bearer("filed-secret-key"))
        time.sleep(0)
    assert "secret-key" not in caplog.text and "let-me-in" not in caplog.text
