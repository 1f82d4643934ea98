"""Erasure (GDPR Art. 17): after DELETE /users/{id} the audit trail still verifies, but no record
reveals the user and their pseudonym can no longer be recomputed: the per-user secret is gone."""

from __future__ import annotations

import hmac
import json
import sqlite3
import uuid
from contextlib import closing
from datetime import timedelta
from urllib.parse import quote

import pytest

from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.audit.chain import pseudonym
from riskengine.cli import main
from riskengine.audit.records import event_ref
from riskengine.engine import Engine
from riskengine.stores.redis import connect
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, iso, redis_url

USERS = ("alice.smith@example.org", "bob.jones@example.org")


def _bodies(settings) -> list[str]:
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        return [body for (body,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]


def test_erasure_keeps_the_trail_verifiable_and_unlinks_the_user(settings, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(settings.home))
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        for n in range(3):
            for user in USERS:
                response = client.post("/score", json={   # event ids that embed the user id, as some apps do
                    "event_id": f"{user}/login/{n}", "user_id": user, "action": "payment", "amount": 12.5,
                    "currency": "EUR", "ip": OSLO_IP, "user_agent": CHROME_WIN, "device_id": "laptop-1",
                    "payee_id": f"payee-of-{user}", "timestamp": iso(T0 + timedelta(minutes=n))})
                assert response.status_code == 200
        assert client.post("/feedback", json={"event_id": f"{USERS[0]}/login/0",
                                              "outcome": "step_up_passed"}).status_code == 200
        engine: Engine = client.app_state["engine"]
        alice, bob = USERS
        secret = engine.store.user_secret(alice, engine.user_key(alice), create=False)
        subject = pseudonym(secret, alice)
        alice_records = [json.loads(b) for b in _bodies(settings) if json.loads(b).get("subject") == subject]
        assert [r["kind"] for r in alice_records] == ["score"] * 3 + ["feedback"]
        assert alice_records[-1]["event_ref"] == alice_records[0]["event_ref"] == event_ref(secret, f"{alice}/login/0")
        before = _bodies(settings)

        assert client.delete(f"/users/{alice}").status_code == 204

        after = _bodies(settings)
        assert after[:-1] == before                          # nothing rewritten: the chain stays as it was
        erasure = json.loads(after[-1])
        assert erasure["kind"] == "erasure" and erasure["subject"] == subject
        # no record names alice, her event ids or anything derived from them in the clear
        assert not [b for b in after if alice in b or "alice" in b]
        # her secret is gone, so her pseudonym (and event refs) can no longer be recomputed
        assert engine.store.user_secret(alice, engine.user_key(alice), create=False) is None
        with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
            assert db.execute("SELECT COUNT(*) FROM user_secrets WHERE user_key=?",
                              (engine.user_key(alice),)).fetchone() == (0,)
        assert engine.pseudonyms.subject(alice) != subject              # a returning alice gets a new, unlinked pseudonym
        # bob is untouched and still resolvable
        bob_secret = engine.store.user_secret(bob, engine.user_key(bob), create=False)
        assert sum(json.loads(b).get("subject") == pseudonym(bob_secret, bob) for b in after) == 3

    assert main(["audit", "verify"]) == 0
    assert "audit trail OK" in capsys.readouterr().out
    assert main(["audit", "export", "--format", "jsonl"]) == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores = [r for r in exported if r["kind"] == "score"]
    assert sorted(r["event_id"] for r in scores if r["event_id"]) == [f"{bob}/login/{n}" for n in range(3)]
    assert sum(r["event_id"] is None for r in scores) == 3      # alice's records stay, anonymous
    assert not [r for r in exported if alice in json.dumps(r)]


ALICE = "alice/ö\U0001f600@example.org"          # a '/' in the id: erased through a percent-encoded path
ALICE_IP, ALICE_UA = "198.51.100.77", "ErasureTestAgent/9.1 (unique-ua-7f3e)"
ALICE_DEVICE, ALICE_PAYEE = "device-7f3e-kept-nowhere", "payee-7f3e-kept-nowhere"
BOB_DEVICE = "device-of-bob-0c41"


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def any_store_settings(request: pytest.FixtureRequest, settings):
    if request.param != "sqlite":
        settings = settings.model_copy(update={"store": redis_url(request, request.param),
                                               "redis_prefix": f"erasure-{uuid.uuid4().hex[:12]}:"})
    yield settings
    if request.param != "sqlite":
        client = connect(settings.store)
        for key in list(client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)):
            client.unlink(key)
        client.close()


def _kept_bytes(settings) -> bytes:
    """Every byte the service keeps: each file under its home (SQLite's main file, -wal and -shm
    included), and with Redis every key and value under its prefix."""
    kept = b"".join(path.read_bytes() for path in sorted(settings.home.rglob("*")) if path.is_file())
    if settings.store.startswith("redis"):
        client = connect(settings.store)                   # the one primary, or every Cluster node
        for key in client.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            kind = client.type(key)
            value = {b"string": lambda: client.get(key), b"hash": lambda: client.hgetall(key),
                     b"list": lambda: client.lrange(key, 0, -1), b"set": lambda: client.smembers(key),
                     b"zset": lambda: client.zrange(key, 0, -1)}[kind]()
            kept += key + repr(value).encode() + b"".join(
                v if isinstance(v, bytes) else b"" for v in (value.values() if isinstance(value, dict) else
                                                             value if isinstance(value, (list, set)) else [value]))
        client.close()
    return kept


def test_after_the_204_nothing_kept_holds_the_user_or_relinks_their_records(any_store_settings) -> None:
    settings = any_store_settings
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        for n in range(4):
            for user, ip, ua, device in ((ALICE, ALICE_IP, ALICE_UA, ALICE_DEVICE),
                                         ("bob", OSLO_IP, CHROME_WIN, BOB_DEVICE)):
                response = client.post("/score", json={
                    "event_id": f"{user}/pay/{n}", "user_id": user, "action": "payment", "amount": 20,
                    "currency": "EUR", "ip": ip, "user_agent": ua, "device_id": device,
                    "payee_id": ALICE_PAYEE if user == ALICE else "payee-of-bob",
                    "timestamp": iso(T0 + timedelta(minutes=n))})
                assert response.status_code == 200
        assert client.post("/feedback", json={"event_id": f"{ALICE}/pay/0",
                                              "outcome": "step_up_passed"}).status_code == 200
        engine: Engine = client.app_state["engine"]
        user_key = engine.user_key(ALICE)
        secret = engine.store.user_secret(ALICE, user_key, create=False)
        assert secret is not None and ALICE_DEVICE.encode() in _kept_bytes(settings)     # the grep sees data

        assert client.delete(f"/users/{quote(ALICE, safe='')}").status_code == 204

        kept = _kept_bytes(settings)
        for needle in (ALICE, "alice/", ALICE_IP, ALICE_UA, ALICE_DEVICE, ALICE_PAYEE, user_key):
            assert needle.encode() not in kept, f"{needle!r} outlived the erasure"
        assert secret not in kept                     # with the pseudonym key it would re-link her records
        assert BOB_DEVICE.encode() in kept and client.post("/score", json={
            "user_id": "bob", "action": "login", "ip": OSLO_IP, "timestamp": iso(T0)}).status_code == 200
        # the key file left behind re-links nothing: her user key finds no secret, anywhere
        pseudonym_key = (settings.var / "pseudonym.key").read_bytes()
        assert hmac.digest(pseudonym_key, ALICE.encode(), "sha256").hex()[:32] == user_key
        assert engine.store.user_secret(ALICE, user_key, create=False) is None
