"""Idle connections cannot starve real requests: a real ``riskengine serve`` on a free loopback port
and 1,200 TCP connections that never send a byte (no key, no request line) while normal requests
and the probes are answered. Every socket is opened on 127.0.0.1 only and closed at the end."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHROME_WIN, OSLO_IP, T0, iso
from tests.test_end_to_end import KEY, Service

IDLE = 1_200


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home: Path = tmp_path_factory.mktemp("idle-home")
    svc = Service(home, RISKENGINE_BOOTSTRAP_MODEL="false", RISKENGINE_SQLITE_SYNCHRONOUS="NORMAL")
    try:
        svc.wait(60)
        yield svc
    finally:
        svc.stop()


def _room_for(sockets: int) -> None:
    """This test process needs a descriptor per idle socket too (the service raises its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sockets + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise AssertionError(f"RLIMIT_NOFILE hard limit {hard} < {wanted}: raise it to run this test")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def test_a_thousand_idle_connections_do_not_starve_requests_or_probes(service: Service) -> None:
    _room_for(IDLE)
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", service.port), timeout=5))
        time.sleep(0.5)                               # the server has accepted them all by now
        with httpx.Client(base_url=service.url, timeout=5) as fresh:
            for path in ("/livez", "/readyz", "/health", "/v1/livez", "/v1/readyz"):
                probe = fresh.get(path)
                assert probe.status_code == 200, (path, probe.text)
            answers = [fresh.post("/score", headers={"Authorization": f"Bearer {KEY}"}, json={
                "event_id": f"idle-{n}", "user_id": f"user-{n}", "action": "login", "ip": OSLO_IP,
                "user_agent": CHROME_WIN, "timestamp": iso(T0)}) for n in range(20)]
        assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
        assert sum(s.fileno() >= 0 for s in idle) == IDLE       # and the idle ones are all still open
    finally:
        for sock in idle:
            sock.close()
    assert service.process.poll() is None
