"""Several real ``riskengine serve`` processes scoring through a Redis Cluster or Sentinel while a
primary is killed (SIGKILL) mid-load: requests answer 200 or 503 (never 500), a client retrying a
503 with the same event id gets its 200 once the replica has taken over, and no 200 was wrong:
every answered event is stored with the decision that was answered, answers the same on a retry,
and counts once in the profiles, the per-IP entries, the population counts and the audit trail.
With replicas the services WAIT for one (RISKENGINE_REDIS_WAIT_REPLICAS=1): replication is
asynchronous, and without it a Sentinel run lost a 200 the killed primary had not yet sent on. With
one replica a primary, the promoted one has none until the killed server is back, so every test
restarts it (3 s later, as a supervisor would): until then, writes answer 503.

Each test starts its own servers (free ports, temp directories); the machine's Redis is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from riskengine.audit.chain import verify
from riskengine.stores import open_store
from tests.conftest import CHROME_WIN, T0, iso
from tests.redis_servers import Cluster, SentinelSet, free_ports, within
from tests.test_multiprocess import _wait_healthy

PROCESSES = 3
USERS = [f"user-{n}" for n in range(24)]
EVENTS_PER_USER = 12            # a minute apart: all inside one per-IP window
IPS = ["129.240.2.3", "81.167.144.58", "1.1.1.1"]
HEADERS = {"Authorization": "Bearer k"}
DEADLINE_S = 90.0


class Services:
    """``PROCESSES`` service processes on one store URL, sharing their key files (as replicas must)."""

    def __init__(self, tmp_path: Path, url: str, wait_replicas: int = 0) -> None:
        self.url, self.prefix = url, f"fo-{uuid.uuid4().hex[:10]}:"
        shared = tmp_path / "shared"
        shared.mkdir()
        self.audit_key = os.urandom(32)
        for name, key in (("audit.key", self.audit_key), ("pseudonym.key", os.urandom(32))):
            (shared / name).write_bytes(key)
            (shared / name).chmod(0o600)
        riskengine = Path(sys.executable).with_name("riskengine")
        self.processes: list[subprocess.Popen] = []
        self.urls: list[str] = []
        env = {**os.environ, "RISKENGINE_STORE": url, "RISKENGINE_REDIS_PREFIX": self.prefix,
               "RISKENGINE_API_KEYS": "tests:k", "RISKENGINE_BOOTSTRAP_MODEL": "false",
               "RISKENGINE_AUDIT_KEY_FILE": str(shared / "audit.key"),
               "RISKENGINE_PSEUDONYM_KEY_FILE": str(shared / "pseudonym.key"),
               "RISKENGINE_REDIS_WAIT_REPLICAS": str(wait_replicas)}
        env.pop("RISKENGINE_REDIS_DURABILITY", None)   # these servers persist (AOF): the default check passes
        for port in free_ports(PROCESSES):
            home = tmp_path / f"home-{port}"
            home.mkdir()
            log = home / "serve.log"
            with log.open("wb") as out:
                self.processes.append(subprocess.Popen(
                    [str(riskengine), "serve", "--port", str(port)], env={**env, "RISKENGINE_HOME": str(home)},
                    cwd=home, stdout=out, stderr=subprocess.STDOUT))
            self.urls.append(f"http://127.0.0.1:{port}")
        for url, process, port in zip(self.urls, self.processes, [u.rsplit(":", 1)[1] for u in self.urls]):
            _wait_healthy(url, process, tmp_path / f"home-{port}" / "serve.log", timeout=120)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _body(user: str, n: int) -> dict:
    return {"event_id": f"fo-{user}-{n}", "user_id": user, "action": "login", "ip": IPS[hash(user) % len(IPS)],
            "user_agent": CHROME_WIN, "device_id": f"{user}-laptop", "timestamp": iso(T0 + timedelta(minutes=n))}


def _load(services: Services, kill, after: int) -> tuple[dict[tuple[str, int], dict], Counter]:
    """Every (user, n) posted, each retried on 503 with its event id until 200; ``kill()`` once ``after``
    answers are in. Returns each event's 200 body and every status seen."""
    jobs = [(user, n) for n in range(EVENTS_PER_USER) for user in USERS]
    statuses: Counter = Counter()
    answered: dict[tuple[str, int], dict] = {}
    lock, killed = threading.Lock(), threading.Event()
    clients = [httpx.Client(base_url=url, headers=HEADERS, timeout=30.0) for url in services.urls]
    deadline = time.monotonic() + DEADLINE_S

    def post(job: tuple[int, tuple[str, int]]) -> None:
        i, (user, n) = job
        attempt = 0
        while time.monotonic() < deadline:
            response = clients[(i + attempt) % len(clients)].post("/score", json=_body(user, n))  # any process
            with lock:
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    answered[(user, n)] = response.json()
                    if len(answered) == after and not killed.is_set():
                        killed.set()
                        kill()
                    return
            assert response.status_code == 503, response.text       # never a 500, never a guess
            attempt += 1
            time.sleep(0.2)

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            list(pool.map(post, enumerate(jobs)))
    finally:
        for client in clients:
            client.close()
    assert killed.is_set()
    assert len(answered) == len(jobs), f"{len(jobs) - len(answered)} events never answered 200: {statuses}"
    return answered, statuses


def _kill_and_restart(server, after_s: float = 3.0):
    """SIGKILL now, started again (same port, directory and AOF) ``after_s`` later, as a supervisor would;
    a restarted primary that was failed over rejoins as a replica of the one promoted."""
    def kill() -> None:
        server.kill()
        threading.Timer(after_s, server.start).start()
    return kill


def _check_no_wrong_200(services: Services, answered: dict[tuple[str, int], dict]) -> None:
    """Each 200 is what the store keeps, answers the same again, and counts exactly once everywhere."""
    with httpx.Client(base_url=services.urls[0], headers=HEADERS, timeout=30.0) as client:
        for (user, n), body in list(answered.items())[:60]:        # a retry gets the stored answer
            again = client.post("/score", json=_body(user, n))
            assert again.status_code == 200 and again.json() == body
    store = open_store(services.url, prefix=services.prefix, audit_key=services.audit_key)
    try:
        for (user, n), body in answered.items():
            stored = store.find_event(f"fo-{user}-{n}")
            assert stored is not None, f"a 200 for fo-{user}-{n} was not kept"
            assert (stored.decision["decision"], stored.decision["risk_score"]) == (body["decision"],
                                                                                   body["risk_score"])
        learned = {user: sum(1 for (u, _), body in answered.items() if u == user and body["risk_level"] == "low"
                             and body["decision"] != "deny") for user in USERS}
        profiles = {user: store.get(user).events for user in USERS}
        assert profiles == learned                                     # every learned 200 once, none lost
        assert sum(store.global_counts({"ip": ip})["ip"].count for ip in IPS) == sum(learned.values())
        backend = store.backend
        for ip in IPS:                                                 # one per-IP entry per event
            users = [u for u in USERS if IPS[hash(u) % len(IPS)] == ip]
            assert backend._redis.zcard(backend._key("ip", store.keyed(ip))) == len(users) * EVENTS_PER_USER
        rows = list(store.audit_rows())
        assert sum('"kind":"score"' in row.body for row in rows) == len(answered)   # one record per event, no repeat
        assert verify(rows, services.audit_key, store.audit_anchors()) == []
    finally:
        store.clear()
        store.close()


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", replicas=1, node_timeout_ms=1000)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_a_cluster_primary_killed_mid_load_fails_over_and_no_200_was_wrong(cluster_with_replicas: Cluster,
                                                                          tmp_path: Path) -> None:
    cluster = cluster_with_replicas
    services = Services(tmp_path, cluster.url, wait_replicas=1)     # a 200 waits for the replica (WAIT)
    victim = cluster.primaries()[0]
    victim_port = victim.port
    try:
        answered, statuses = _load(services, _kill_and_restart(victim), after=len(USERS) * EVENTS_PER_USER // 3)
        print(f"cluster failover: statuses {dict(statuses)}")
        assert victim_port not in [s.port for s in cluster.primaries()]           # its replica took over
        within(30, cluster.healthy, "the cluster healthy again")
        _check_no_wrong_200(services, answered)
    finally:
        services.stop()


def test_a_cluster_without_replicas_answers_503_while_a_primary_is_down_and_recovers(tmp_path: Path) -> None:
    """No replica to take over: while a primary is down, requests get 503 (the cluster is down), none a
    wrong 200; with ``appendfsync always`` the restarted primary has every 200 and the load completes."""
    cluster = Cluster(tmp_path / "cluster", replicas=0, node_timeout_ms=1000)
    for server in cluster.servers:
        server.args = (*server.args, "--appendfsync", "always")
    cluster.start()
    services = Services(tmp_path, cluster.url)
    victim = cluster.primaries()[0]

    try:
        answered, statuses = _load(services, _kill_and_restart(victim), after=len(USERS) * EVENTS_PER_USER // 3)
        print(f"cluster without replicas: statuses {dict(statuses)}")
        assert statuses[503] > 0                            # the outage was seen, as 503s
        _check_no_wrong_200(services, answered)
    finally:
        services.stop()
        cluster.stop()


def test_a_sentinel_primary_killed_mid_load_fails_over_and_no_200_was_wrong(tmp_path: Path) -> None:
    sentinels = SentinelSet(tmp_path / "sentinel", sentinels=3, down_after_ms=1000).start()
    services = Services(tmp_path, sentinels.url, wait_replicas=1)  # without WAIT a run lost one 200 here
    old = sentinels.primary.port
    try:
        answered, statuses = _load(services, _kill_and_restart(sentinels.primary),
                                   after=len(USERS) * EVENTS_PER_USER // 3)
        print(f"sentinel failover: statuses {dict(statuses)}")
        assert sentinels.primary_port() == sentinels.replica.port != old      # the replica was promoted
        _check_no_wrong_200(services, answered)
    finally:
        services.stop()
        sentinels.stop()


def test_wait_answers_503_when_no_replica_acknowledges(redis_sentinel) -> None:
    """With WAIT 1, a write the replica does not acknowledge in time is not a success: the replica
    paused (SIGSTOP), a commit gets StoreUnavailable (503); resumed, commits succeed again."""
    from riskengine.stores import StoreUnavailable
    from tests.test_stores import AUDIT_KEY, change

    store = open_store(redis_sentinel.url, prefix=f"wait-{uuid.uuid4().hex[:8]}:", audit_key=AUDIT_KEY,
                       wait_replicas=1, wait_timeout_ms=300)
    replica = redis_sentinel.replica.process
    try:
        store.commit(change("w1"))
        assert store.backend.durability().as_dict()["wait_replicas"] == "1"
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match="replicas acknowledged"):
                store.commit(change("w2", version=1))
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        within(10, lambda: redis_sentinel.primary.client().info("replication")["connected_slaves"] == 1, "replica back")
        store.commit(change("w3", version=2))
    finally:
        store.clear()
        store.close()
