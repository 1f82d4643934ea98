"""Erasure (GDPR Art. 17): after DELETE /users/{id} the audit trail still verifies, but no record
reveals the user and their pseudonym can no longer be recomputed: the per-user secret is gone."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.audit.chain import pseudonym
from riskengine.cli import main
from riskengine.engine import Engine, event_ref
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, iso

USERS = ("alice.smith@example.org", "bob.jones@example.org")


def _bodies(settings) -> list[str]:
    db = sqlite3.connect(settings.var / "profiles.db")
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
        assert sqlite3.connect(settings.var / "profiles.db").execute(
            "SELECT COUNT(*) FROM user_secrets WHERE user_key=?", (engine.user_key(alice),)).fetchone() == (0,)
        assert engine.subject(alice) != subject              # a returning alice gets a new, unlinked pseudonym
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
