"""Two real service processes sharing one Redis: the scale-out DESIGN.md promises.

Concurrent events for the same users go to both processes; afterwards no update is lost,
a retried event id gets the stored answer from either process, and every chain verifies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from riskengine.audit.chain import verify
from riskengine.stores.redis import RedisStore
from tests.conftest import BOMLO_IP, CHROME_WIN, OSLO_IP, REDIS_URL, SAFARI_IPHONE, T0, iso

USERS = {"alice": (OSLO_IP, CHROME_WIN), "bob": (BOMLO_IP, SAFARI_IPHONE), "carol": (OSLO_IP, SAFARI_IPHONE)}
EVENTS_PER_USER = 40
HEADERS = {"Authorization": "Bearer k"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"service exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"service not healthy within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[list[str], str, bytes]]:
    """Two ``riskengine serve`` processes, own homes, one Redis prefix, shared keys (as replicas must)."""
    prefix = f"mp-{uuid.uuid4().hex[:12]}:"
    shared = tmp_path / "shared"
    shared.mkdir()
    audit_key = os.urandom(32)
    for name, key in (("audit.key", audit_key), ("pseudonym.key", os.urandom(32))):
        (shared / name).write_bytes(key)
        (shared / name).chmod(0o600)
    riskengine = Path(sys.executable).with_name("riskengine")
    processes: list[subprocess.Popen] = []
    urls = []
    try:
        for name in ("a", "b"):
            home = tmp_path / name
            home.mkdir()
            port = _free_port()
            env = {**os.environ, "RISKENGINE_HOME": str(home), "RISKENGINE_STORE": REDIS_URL,
                   "RISKENGINE_REDIS_PREFIX": prefix, "RISKENGINE_API_KEYS": "tests:k",
                   "RISKENGINE_BOOTSTRAP_MODEL": "false",
                   "RISKENGINE_AUDIT_KEY_FILE": str(shared / "audit.key"),
                   "RISKENGINE_PSEUDONYM_KEY_FILE": str(shared / "pseudonym.key")}
            log = home / "serve.log"
            with log.open("wb") as out:
                processes.append(subprocess.Popen([str(riskengine), "serve", "--port", str(port)], env=env,
                                                  cwd=home, stdout=out, stderr=subprocess.STDOUT))
            urls.append(f"http://127.0.0.1:{port}")
            _wait_healthy(urls[-1], processes[-1], log)
        yield urls, prefix, audit_key
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        store = RedisStore(REDIS_URL, prefix=prefix)
        store.clear()
        store.close()


def _body(user: str, n: int) -> dict:
    ip, user_agent = USERS[user]
    return {"event_id": f"mp-{user}-{n}", "user_id": user, "action": "login", "ip": ip,
            "user_agent": user_agent, "device_id": f"{user}-laptop",
            "timestamp": iso(T0 + timedelta(minutes=n))}


def test_two_processes_share_one_redis_without_losing_updates(services) -> None:
    urls, prefix, audit_key = services
    jobs = [(user, n) for n in range(EVENTS_PER_USER) for user in USERS]
    clients = [httpx.Client(base_url=url, headers=HEADERS, timeout=30.0) for url in urls]
    try:
        def post(job: tuple[int, tuple[str, int]]) -> tuple[str, httpx.Response]:
            i, (user, n) = job
            return user, clients[i % 2].post("/score", json=_body(user, n))   # alternate the processes

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(post, enumerate(jobs)))

        assert [r.status_code for _, r in answers] == [200] * len(jobs)
        learned = {user: 0 for user in USERS}
        for user, response in answers:
            body = response.json()
            learned[user] += body["risk_level"] == "low" and body["decision"] != "deny"
        assert learned == {user: EVENTS_PER_USER for user in USERS}   # low-risk repeats: all learned

        store = RedisStore(REDIS_URL, prefix=prefix, audit_key=audit_key)
        try:
            assert {user: store.get(user).events for user in USERS} == learned
            first = answers[0][1]
            for client in clients:                     # the retry may land on either process
                retried = client.post("/score", json=_body(*jobs[0]))
                assert retried.status_code == 200 and retried.json() == first.json()
            assert {user: store.get(user).events for user in USERS} == learned   # the retries changed nothing
            rows = list(store.audit_rows())
            assert len({row.chain for row in rows}) == 2                 # one chain per process
            assert sum('"kind":"score"' in row.body for row in rows) == len(jobs)
            assert verify(rows, audit_key, store.audit_anchors()) == []
        finally:
            store.close()
    finally:
        for client in clients:
            client.close()
