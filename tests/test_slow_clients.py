"""Slow or oversized requests cannot starve others: a real ``riskengine serve`` and raw sockets.

Each slow client here trickles its body on a plain socket while normal requests are answered; the
service cuts the slow one off (408) after the read timeout, refuses oversized bodies (413), and
when ``max_in_flight`` requests are stalled it answers a quick 503 (the probes still 200) instead
of hanging, then recovers as soon as the stalled ones are cut off. Slow *headers* are the reverse
proxy's to cut off (README); idle connections are tests/test_connections.py's.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CHROME_WIN, OSLO_IP, T0, iso
from tests.test_end_to_end import KEY, Service

READ_TIMEOUT = 2.0
CONCURRENCY = 12


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home: Path = tmp_path_factory.mktemp("slow-home")
    svc = Service(home, RISKENGINE_BOOTSTRAP_MODEL="false", RISKENGINE_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
                  RISKENGINE_MAX_IN_FLIGHT=str(CONCURRENCY), RISKENGINE_SQLITE_SYNCHRONOUS="NORMAL")
    try:
        svc.wait(60)
        assert normal_request(svc, 0)[0] == 200          # the first /score warms the process up
        yield svc
    finally:
        svc.stop()


def score_body(n: int) -> bytes:
    return json.dumps({"event_id": f"slow-{n}-{time.monotonic_ns()}", "user_id": f"user-{n}", "action": "login",
                       "ip": OSLO_IP, "user_agent": CHROME_WIN, "timestamp": iso(T0)}).encode()


def head(port: int, length: int, extra: str = "") -> bytes:
    return (f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n").encode()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket's timeout)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


class Trickle(threading.Thread):
    """Sends ``data`` one byte every ``every`` seconds until done or the server stops it."""

    def __init__(self, sock: socket.socket, data: bytes, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.every = sock, data, every

    def run(self) -> None:
        for k in range(len(self.data)):
            try:
                self.sock.send(self.data[k:k + 1])
            except OSError:
                return
            time.sleep(self.every)


def normal_request(service: Service, n: int) -> tuple[int, float]:
    started = time.monotonic()
    response = service.client.post("/score", content=score_body(n), headers={"Content-Type": "application/json"})
    return response.status_code, time.monotonic() - started


def test_a_client_trickling_its_body_gets_408_while_others_are_served(service: Service) -> None:
    body = score_body(1)
    sock = connect(service.port)
    started = time.monotonic()
    sock.sendall(head(service.port, len(body)) + body[:10])
    trickle = Trickle(sock, body[10:])
    trickle.start()
    answered = [normal_request(service, n) for n in range(2, 7)]   # while the slow one is stuck
    assert all(status == 200 and took < 1.0 for status, took in answered), answered
    response = read_all(sock)
    elapsed = time.monotonic() - started
    sock.close()
    assert status_of(response) == 408, response[:300]
    assert b"not received in time" in response
    assert READ_TIMEOUT - 0.2 <= elapsed < READ_TIMEOUT + 3, elapsed


def test_oversized_bodies_are_refused(service: Service) -> None:
    too_big = b'{"user_id": "' + b"x" * 70_000 + b'"}'
    declared = service.client.post("/score", content=too_big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    streamed = service.client.post("/score", content=iter([too_big[:40_000], too_big[40_000:]]),
                                   headers={"Content-Type": "application/json"})   # chunked: no Content-Length
    assert streamed.status_code == 413, streamed.text
    assert normal_request(service, 9)[0] == 200


def test_stalled_requests_at_the_in_flight_cap_give_a_quick_503_then_recover(service: Service) -> None:
    body = score_body(10)
    stalled = [connect(service.port) for _ in range(CONCURRENCY)]
    for sock in stalled:
        sock.sendall(head(service.port, len(body)) + body[:5])    # in flight: a body that never completes
    try:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=5) as fresh:
            for _ in range(20):                                # until the server has read every stalled head
                started = time.monotonic()
                refused = fresh.post("/score", content=score_body(11), headers={"Content-Type": "application/json"})
                if refused.status_code == 503:
                    break
                time.sleep(0.1)
            assert refused.status_code == 503 and time.monotonic() - started < 1.0
            assert refused.headers["retry-after"] == "1"
            assert fresh.get("/livez").status_code == 200 and fresh.get("/readyz").status_code == 200
        for sock in stalled:                                   # each is cut off by the read timeout
            assert status_of(read_all(sock)) == 408
        assert normal_request(service, 12)[0] == 200
    finally:
        for sock in stalled:
            sock.close()
