"""``/metrics`` of ``riskengine serve --workers 2`` counts every worker's requests (real processes).

The workers run in prometheus_client's multiprocess mode: whichever worker answers a scrape, it
sums what both served; a second start in the same home does not add the first run's counts.
Which worker served a request is read from the access log's ``pid``, by the request's id.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CHROME_WIN, OSLO_IP
from tests.test_serve import _env, _free_port, _start, _wait_ready

KEY = "metrics-key-7c2e"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def _served_by(log: Path, request_id: str, timeout: float = 10.0) -> int:
    """The pid of the worker whose access log line names ``request_id`` (written once it answered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if f'"{request_id}"' in line and line.startswith("{"):
                entry = json.loads(line)
                if entry.get("logger") == "riskengine.access" and entry.get("request_id") == request_id:
                    return entry["pid"]
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")


def _score(url: str, n: int, prefix: str) -> str:
    """One /score on a new connection (so either worker may take it); its request id."""
    request_id = f"{prefix}-{n}"
    body = {"event_id": request_id, "user_id": f"mw-user-{n % 7}", "action": "login", "ip": OSLO_IP,
            "user_agent": CHROME_WIN}
    answer = httpx.post(f"{url}/score", json=body, headers={**HEADERS, "X-Request-ID": request_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    return request_id


def _scrape(url: str, request_id: str) -> dict[tuple[str, frozenset], float]:
    answer = httpx.get(f"{url}/metrics", headers={**HEADERS, "X-Request-ID": request_id}, timeout=30)
    assert answer.status_code == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def _total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0


def test_a_scrape_sums_every_worker_and_no_earlier_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(home, RISKENGINE_API_KEYS=f"metrics:{KEY}", RISKENGINE_ACCESS_LOG="true",
               RISKENGINE_RATE_LIMIT_PER_SECOND="0")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    process, log = _start(home, port, env)          # an earlier run: its counts must not come back
    try:
        _wait_ready(url, process, log)
        for n in range(25):
            _score(url, n, "earlier")
    finally:
        _stop(process)
    assert list((home / "var" / "prometheus").glob("*.db")), "the workers wrote no multiprocess files"

    process, log = _start(home, port, env)
    try:
        _wait_ready(url, process, log)
        served: dict[int, int] = {}
        sent = 0
        while len(served) < 2 and sent < 400:       # new connections until both workers served some
            pid = _served_by(log, _score(url, sent, "now"))
            served[pid] = served.get(pid, 0) + 1
            sent += 1
        assert len(served) == 2, f"one worker took all {sent} requests"
        for n in range(sent, sent + 10):            # a few more, spread however the kernel spreads them
            _score(url, n, "now")
        sent += 10

        scraped_by: set[int] = set()
        for attempt in range(60):                   # until each worker has answered a scrape
            samples = _scrape(url, f"scrape-{attempt}")
            scraped_by.add(_served_by(log, f"scrape-{attempt}"))
            assert _total(samples, "riskengine_request_seconds_count", route="/score", status="200") == sent
            assert _total(samples, "riskengine_decisions_total") == sent
            assert _total(samples, "riskengine_model_info") == 1       # the answering worker's, not one per worker
            assert ("python_info" in {name for name, _ in samples})
            assert not any(name.startswith(("process_", "python_gc_")) for name, _ in samples)
            if len(scraped_by) == 2:
                break
        assert len(scraped_by) == 2, "one worker answered every scrape"
    finally:
        _stop(process)
