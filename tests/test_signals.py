"""Signals out (riskengine/signals): webhooks and CAEP SETs from the real app to a real HTTP receiver
on loopback, which checks the HMAC and the SET signature against the JWKS the app publishes."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey

from riskengine.api import create_app
from riskengine.signals import caep, webhooks
from riskengine.signals.config import SignalsError, load_config
from tests.conftest import API_KEY, OSLO_IP, SAFARI_IPHONE, T0, US_IP, iso

SECRET = b"whsec-test-secret"


class Receiver:
    """A real HTTP receiver: records each delivery; can fail the first N or hang every request."""

    def __init__(self, fail_first: int = 0, hang_s: float = 0.0) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.attempts = 0
        self.fail_first, self.hang_s = fail_first, hang_s
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.attempts += 1
                if outer.hang_s:
                    time.sleep(outer.hang_s)
                if outer.attempts <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _config(tmp_path: Path, url: str, events: str = "[deny, step_up, confirmed_fraud]") -> Path:
    (tmp_path / "hook.secret").write_bytes(SECRET)
    path = tmp_path / "signals.yaml"
    path.write_text(f"""
webhooks:
  - url: {url}/hooks
    secret_file: {tmp_path / 'hook.secret'}
    events: {events}
caep:
  issuer: https://risk.example.test
  key_file: {tmp_path / 'var' / 'ssf.jwk'}
  receivers:
    - {{url: {url}/ssf, audience: https://idp.example.test, max_attempts: 3}}
""")
    return path


def _client(settings, signals: Path) -> TestClient:
    settings.signals = signals
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    return client


def _login(client: TestClient, n: object, days: float, **extra: object) -> dict:
    body = {"event_id": f"ev-{n}", "user_id": "alice", "action": "login", "ip": OSLO_IP,
            "timestamp": iso(T0 + timedelta(days=days)), "device_id": "laptop-1", **extra}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_webhooks_and_sets_reach_a_real_receiver_signed(settings, tmp_path, receiver) -> None:
    with _client(settings, _config(tmp_path, receiver.url)) as client:
        for day in range(10):
            assert _login(client, day, day)["decision"] == "allow"
        away = _login(client, "away", 10, ip=US_IP, user_agent=SAFARI_IPHONE, device_id="phone-1")
        assert away["decision"] == "step_up"
        assert client.post("/feedback", json={"event_id": "ev-away", "outcome": "confirmed_fraud"}).status_code == 200
        published = client.get("/jwks.json", headers={"Authorization": ""})        # discovery needs no key
        config = client.get("/.well-known/ssf-configuration", headers={"Authorization": ""})
        delivered = receiver.wait_for(3)

    assert published.status_code == 200 and config.status_code == 200
    assert config.json()["jwks_uri"] == "https://risk.example.test/jwks.json"
    assert config.json()["delivery_methods_supported"] == [caep.PUSH]
    hooks = [(h, b) for path, h, b in delivered if path == "/hooks"]
    sets = [(h, b) for path, h, b in delivered if path == "/ssf"]
    assert len(hooks) == 2 and len(sets) == 1

    now = int(time.time())
    for headers, body in hooks:
        assert webhooks.verify(SECRET, headers, body, now)
        assert not webhooks.verify(b"another secret", headers, body, now)
        assert b"alice" not in body                       # the subject is the audit pseudonym, not the user id
        assert json.loads(body)["event_id"] == "ev-away"  # the app's own event id, to act on
    bodies = [json.loads(b) for _, b in hooks]
    assert [(b["type"], b["decision"], b["outcome"]) for b in bodies] == [
        ("decision", "step_up", None), ("feedback", "step_up", "confirmed_fraud")]

    headers, token = sets[0]
    assert headers["content-type"] == "application/secevent+jwt"
    key = ECKey.import_key(published.json()["keys"][0])
    decoded = jwt.decode(token.decode(), key)
    assert decoded.header["typ"] == "secevent+jwt" and decoded.header["alg"] == "ES256"
    assert decoded.claims["iss"] == "https://risk.example.test" and decoded.claims["aud"] == "https://idp.example.test"
    change = decoded.claims["events"][caep.RISK_LEVEL_CHANGE]
    assert change["current_level"] == away["risk_level"].upper() and change["previous_level"] == "LOW"
    assert decoded.claims["sub_id"]["format"] == "opaque" and "alice" not in decoded.claims["sub_id"]["id"]
    assert decoded.claims["sub_id"]["id"] == bodies[0]["subject"]

    forged_key = ECKey.generate_key("P-256", private=True)
    forged = jwt.encode(decoded.header, decoded.claims, forged_key)
    with pytest.raises(Exception):
        jwt.decode(forged, key)                           # a receiver refuses a SET not signed by our key


def test_a_failing_receiver_gets_the_event_once_after_retries(settings, tmp_path) -> None:
    flaky = Receiver(fail_first=2)
    try:
        with _client(settings, _config(tmp_path, flaky.url, events="[deny]")) as client:
            _login(client, "typo", 0, success=False)      # a failed password: denied by every policy
            delivered = flaky.wait_for(1)
            time.sleep(0.5)                               # no late duplicate
        assert flaky.attempts == 3 and len(flaky.received) == 1
        assert json.loads(delivered[0][2])["decision"] == "deny"
    finally:
        flaky.close()


def test_a_hanging_receiver_never_slows_score(settings, tmp_path, caplog) -> None:
    stuck = Receiver(hang_s=5.0)
    try:
        with _client(settings, _config(tmp_path, stuck.url, events="[deny]")) as client:
            started = time.monotonic()
            for n in range(20):                           # 20 denials: 20 webhooks to a receiver taking 5 s each
                _login(client, f"typo-{n}", n / 100, success=False)
            elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"/score waited for the receiver: 20 events took {elapsed:.1f} s"
        assert not caplog.records or all("could not be built" not in r.getMessage() for r in caplog.records)
    finally:
        stuck.close()


def test_discovery_is_404_without_a_transmitter(client) -> None:
    assert client.get("/.well-known/ssf-configuration").status_code == 404
    assert client.get("/jwks.json").status_code == 404


def test_a_broken_signals_file_names_the_field(tmp_path) -> None:
    path = tmp_path / "signals.yaml"
    path.write_text("webhooks:\n  - url: not a url\n    secret_env: NOPE\n")
    with pytest.raises(SignalsError, match=r"signals.yaml webhooks.0.url"):
        load_config(path)
    path.write_text("webhooks:\n  - url: http://127.0.0.1:9/x\n    secret_env: RISKENGINE_TEST_UNSET_SECRET\n")
    with pytest.raises(SignalsError, match="RISKENGINE_TEST_UNSET_SECRET is not set"):
        load_config(path)
    path.write_text("webhooks:\n  - url: http://127.0.0.1:9/x\n    secret_env: X\n    events: [everything]\n")
    with pytest.raises(SignalsError, match=r"webhooks.0.events.0"):
        load_config(path)
