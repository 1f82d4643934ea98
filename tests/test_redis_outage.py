"""The service over a Redis that dies and comes back: never a 500, never an allow it could not
compute, /health says so, and it recovers by itself once Redis answers again.

A private ``redis-server`` on a spare port is killed here; the shared one on 6379 is never touched.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskengine.api import create_app
from riskengine.audit.chain import verify
from riskengine.settings import Settings
from riskengine.stores import Batched, Commit
from riskengine.stores.redis import RedisStore
from tests.conftest import CHROME_WIN, OSLO_IP, T0, iso

DEFAULT_POLICY = Path(__file__).parents[1] / "riskengine" / "policy" / "presets" / "default.yaml"


class PrivateRedis:
    """A throwaway redis-server this test may kill: no persistence, its own directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        _within(10.0, lambda: _answers(client), "private redis-server did not start")
        client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed or said goodbye to."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def _within(seconds: float, ready: Callable[[], bool], message: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    pytest.fail(f"{message} within {seconds:.0f} s")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _login(n: int) -> dict:
    return {"event_id": f"outage-{n}", "user_id": "alice", "action": "login", "ip": OSLO_IP,
            "user_agent": CHROME_WIN, "device_id": "laptop-1", "timestamp": iso(T0)}


@pytest.mark.parametrize("login_on_failure", ["unavailable", "default"])
def test_a_redis_outage_answers_without_guessing_and_recovers(private_redis: PrivateRedis, tmp_path: Path,
                                                             login_on_failure: str) -> None:
    policy = None
    if login_on_failure == "unavailable":                    # this policy wants a 503 for logins
        policy = tmp_path / "policy.yaml"
        text = DEFAULT_POLICY.read_text()
        assert "  login: {requires: aal1}" in text
        policy.write_text(text.replace("  login: {requires: aal1}",
                                       "  login: {requires: aal1, on_failure: unavailable}"))
    settings = Settings(home=tmp_path / "home", store=f"redis://127.0.0.1:{private_redis.port}/0",
                        api_keys=SecretStr("tests:k"), policy=policy)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = "Bearer k"
        first = client.post("/score", json=_login(0))
        assert first.status_code == 200 and first.json()["failure"] is None

        private_redis.kill()

        during = client.post("/score", json=_login(1))
        assert during.status_code != 500
        assert during.json().get("decision") != "allow"
        if login_on_failure == "unavailable":
            assert during.status_code == 503 and "decision" not in during.json()
            assert during.headers["Retry-After"]
        else:                                                # the default policy: fail closed, say why
            assert during.status_code == 503                 # not recorded, so not a 200
            assert (during.json()["decision"], during.json()["failure"]) == ("step_up", "store_unavailable")
        assert client.post("/feedback", json={"event_id": "outage-0", "outcome": "confirmed_legit"}
                           ).status_code == 503
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"

        private_redis.start()                                # same port, empty: it kept nothing

        _within(10.0, lambda: client.get("/health").status_code == 200, "/health did not recover")
        after = client.post("/score", json=_login(2))
        assert after.status_code == 200 and after.json()["failure"] is None
        assert client.post("/score", json=_login(2)).json() == after.json()     # recorded again
        assert client.get("/health").json()["status"] == "ok"

    # Redis came back empty: the process's chain starts again at 1 and still verifies.
    audit_key = (settings.var / "audit.key").read_bytes()
    store = RedisStore(settings.store, audit_key=audit_key)
    try:
        rows = list(store.audit_rows())
        assert [r.seq for r in rows][:1] == [1] and any('"kind":"score"' in r.body for r in rows)
        assert verify(rows, audit_key, store.audit_anchors()) == []
    finally:
        store.close()


def test_a_hanging_redis_never_holds_the_event_loop_up(private_redis: PrivateRedis) -> None:
    """Store work never runs on the event loop: a Redis that stops answering (SIGSTOP: connections
    open, no replies) leaves the store's threads waiting while the loop goes on turning; a read and
    a commit (and a profile read) made meanwhile are answered once it wakes up, and not before."""
    import asyncio
    import os

    store = Batched(RedisStore(f"redis://127.0.0.1:{private_redis.port}/0", audit_key=b"k", socket_timeout=5.0),
                    b"k")
    assert private_redis.process is not None
    try:
        at = T0.timestamp()
        assert store.context(OSLO_IP, at, {"ip": OSLO_IP})[0].distinct_users == 0

        async def main() -> tuple[float, object]:
            await store.context_async(OSLO_IP, at, {"ip": OSLO_IP})
            os.kill(private_redis.process.pid, signal.SIGSTOP)
            read = store.context_async(OSLO_IP, at, {"ip": OSLO_IP})
            committed = store.submit_async(Commit("u1", 0, None, OSLO_IP, "key-u1", at, True))
            profile = store.get_async("u1")
            longest, last, started = 0.0, time.monotonic(), time.monotonic()
            while time.monotonic() - started < 1.5:
                await asyncio.sleep(0.01)
                longest, last = max(longest, time.monotonic() - last), time.monotonic()
            assert not read.done() and not committed.done() and not profile.done()   # on the store's threads
            os.kill(private_redis.process.pid, signal.SIGCONT)
            await asyncio.wait_for(committed, 10)
            assert (await asyncio.wait_for(profile, 10)).version == 0
            return longest, await asyncio.wait_for(read, 10)

        longest, (activity, counts) = asyncio.run(main())
        assert longest < 0.1                                          # never stuck, not even once
        assert activity.distinct_users in (0, 1) and counts["ip"].count == 0   # answered once it woke up
        # (the read and the commit waited side by side: either may have reached Redis first)
        assert store.context(OSLO_IP, at + 1, {})[0].distinct_users == 1      # and the commit landed
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
        store.close()
