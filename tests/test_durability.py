"""A 200 means durably recorded: ``kill -9`` the real service under load, restart it, lose nothing.

API.md: "A 200 means the event is durably recorded (profile update and audit record survive a
crash right after the response)". Threads post distinct events (some users shared between
threads, so per-user retries happen too); the service is killed with SIGKILL while requests are
in flight; after a restart every acknowledged event is in the ``events`` table and in the audit
trail, and ``riskengine audit verify`` passes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx

from riskengine.home import open_engine
from riskengine.scoring.model import StatisticalScorer
from riskengine.settings import Settings
from tests.conftest import CHROME_WIN, OSLO_IP, SAFARI_IPHONE, US_IP
from tests.test_end_to_end import KEY, Service

THREADS = 4
USERS = 12
MAX_PER_THREAD = 3000          # bounds the load even if the kill never came
ENV = {"RISKENGINE_BOOTSTRAP_MODEL": "false", "RISKENGINE_SQLITE_SYNCHRONOUS": "FULL"}


class Load(threading.Thread):
    """Posts events until the service goes away; remembers which ones got a 200."""

    def __init__(self, url: str, worker: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.worker, self.stop = url, worker, stop
        self.acknowledged: list[str] = []
        self.bodies: dict[str, dict] = {}
        self.failures = 0
        self.unexpected: list[int] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5) as client:
            for n in range(MAX_PER_THREAD):
                if self.stop.is_set():
                    return
                event_id = f"dur-{self.worker}-{n}"
                body = {"event_id": event_id, "user_id": f"user-{(n * THREADS + self.worker) % USERS}",
                        "action": "login" if n % 3 else "payment", "ip": OSLO_IP if n % 5 else US_IP,
                        "user_agent": CHROME_WIN if n % 2 else SAFARI_IPHONE, "device_id": f"dev-{n % 4}",
                        "timestamp": f"2026-03-02T08:{(n // 60) % 60:02d}:{n % 60:02d}Z"}
                if n % 3 == 0:
                    body["amount"], body["currency"] = 20.0 + n % 50, "EUR"
                try:
                    response = client.post("/score", json=body)
                except httpx.TransportError:
                    self.failures += 1
                    if self.failures > 3:
                        return                                   # the service is gone
                    continue
                if response.status_code == 200:
                    self.acknowledged.append(event_id)
                    self.bodies[event_id] = body
                else:
                    self.unexpected.append(response.status_code)


def stored_ids(home: Path) -> tuple[set[str], set[str]]:
    """Event ids in the ``events`` table, and those the audit trail's score records stand for."""
    with closing(sqlite3.connect(home / "var" / "profiles.db")) as db:
        events = {row[0] for row in db.execute("SELECT event_id FROM events")}
        bodies = [json.loads(body) for (body,) in db.execute("SELECT body FROM audit")]
    scored = [b for b in bodies if b.get("kind") == "score"]
    audited = {b["event_id"] for b in scored if "event_id" in b}
    refs = {b["event_ref"] for b in scored if "event_ref" in b}
    if refs:                          # the trail names events by a keyed ref: map back as auditors do
        with open_engine(Settings(home=home, sqlite_synchronous="FULL"), scorer=StatisticalScorer()) as engine:
            audited |= {event_id for ref, event_id in engine.event_ids().items() if ref in refs}
    return events, audited


def test_every_acknowledged_event_survives_kill_9(tmp_path: Path) -> None:
    first = Service(tmp_path, **ENV)
    first.wait(60)
    stop = threading.Event()
    loads = [Load(first.url, k, stop) for k in range(THREADS)]
    for load in loads:
        load.start()
    deadline = time.monotonic() + 60
    while sum(len(load.acknowledged) for load in loads) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.process.pid, signal.SIGKILL)                   # mid-run: requests are in flight
    first.process.wait(timeout=20)
    stop.set()
    for load in loads:
        load.join(timeout=30)
    first.client.close()
    first.log.close()
    acknowledged = {event_id for load in loads for event_id in load.acknowledged}
    assert len(acknowledged) >= 150, "the load did not get going before the kill"
    assert not any(load.unexpected for load in loads), [load.unexpected for load in loads]
    assert first.process.returncode == -signal.SIGKILL

    second = Service(tmp_path, **ENV)                            # restart on the same home
    try:
        second.wait(60)
        bodies = {event_id: body for load in loads for event_id, body in load.bodies.items()}
        for event_id in sorted(acknowledged)[:20]:               # retries after the crash: the stored answer
            replay = second.client.post("/score", json=bodies[event_id])
            assert replay.status_code == 200 and replay.json()["event_id"] == event_id
            taken = second.client.post("/score", json={**bodies[event_id], "user_id": "someone-else"})
            assert taken.status_code == 409 and taken.json()["detail"][0]["field"] == "event_id"   # recorded
        after = second.client.post("/score", json={"event_id": "after-restart", "user_id": "user-1",
                                                   "action": "login", "ip": OSLO_IP, "user_agent": CHROME_WIN})
        assert after.status_code == 200
    finally:
        second.stop()

    events, audited = stored_ids(tmp_path)
    assert acknowledged <= events, f"{len(acknowledged - events)} acknowledged events lost from the store"
    assert acknowledged <= audited, f"{len(acknowledged - audited)} acknowledged events lost from the audit trail"
    assert "after-restart" in events and "after-restart" in audited
    verify = subprocess.run([sys.executable, "-m", "riskengine", "audit", "verify"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RISKENGINE_HOME": str(tmp_path), **ENV})
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK" in verify.stdout
