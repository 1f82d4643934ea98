"""The drop-in integration (riskengine.integration) end to end: a real riskengine service and the
example app (examples/guarded_app.py) as two real processes on loopback, real HTTP between them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from riskengine.integration import RiskClient
from tests.test_multiprocess import _free_port, _wait_healthy

ROOT = Path(__file__).parents[1]
POLICY = """
name: guarded-test
version: 1
levels:
  - {name: aal1, acr: aal1}
  - {name: aal2, acr: aal2, max_age: 43200}
bands:
  medium: {from: 0.3, at_least: aal2, max_age: 300}
  high: {from: 0.7, at_least: aal2, max_age: 300}
deny_at: 0.97
default_action: {requires: aal2, max_age: 300}
actions:
  view_dashboard: {requires: aal1}
  payment: {requires: aal2, max_age: 300}
  delete_account: {requires: aal2, deny_at: 0.0}
"""


def _start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen]]:
    """(example app URL, engine URL, engine process): the engine on the statistical scorer."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    engine_port, app_port = _free_port(), _free_port()
    engine_env = {**os.environ, "RISKENGINE_HOME": str(tmp_path), "RISKENGINE_API_KEYS": "shop:shop-key",
                  "RISKENGINE_BOOTSTRAP_MODEL": "false", "RISKENGINE_POLICY": str(tmp_path / "policy.yaml")}
    engine_url, app_url = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{app_port}"
    processes = [_start([str(Path(sys.executable).with_name("riskengine")), "serve", "--port", str(engine_port)],
                        engine_env, tmp_path, tmp_path / "engine.log")]
    try:
        _wait_healthy(engine_url, processes[0], tmp_path / "engine.log")
        app_env = {**os.environ, "RISKENGINE_URL": engine_url, "RISKENGINE_API_KEY": "shop-key",
                   "PYTHONPATH": str(ROOT)}
        processes.append(_start([sys.executable, "-m", "uvicorn", "examples.guarded_app:app", "--port",
                                 str(app_port), "--no-access-log"], app_env, ROOT, tmp_path / "app.log"))
        _wait_until_up(app_url, processes[1], tmp_path / "app.log")
        yield app_url, engine_url, processes[0]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    for _ in range(150):
        if process.poll() is not None:
            pytest.fail(f"example app exited:\n{log.read_text()[-2000:]}")
        try:
            httpx.get(f"{url}/openapi.json", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("example app did not start")


def test_guard_allows_steps_up_and_denies_through_real_processes(stack) -> None:
    app_url, engine_url, _ = stack
    user = {"X-User": "alice", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            "X-Forwarded-For": "129.240.2.3", "X-Device": "laptop-1"}

    page = httpx.get(f"{app_url}/dashboard", headers=user)
    assert page.status_code == 200 and page.json()["page"] == "dashboard"      # allow: the handler ran

    pay = httpx.post(f"{app_url}/payments", headers=user, json={"amount": 40, "currency": "EUR"})
    assert pay.status_code == 401                                             # aal1 session, payment needs aal2
    challenge = pay.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="aal2"' in challenge and "max_age=300" in challenge
    assert pay.json()["acr_values"] == "aal2"

    # the same payment in a session that proved aal2 a minute ago reaches the handler, amount intact
    stepped = {**user, "X-Session-Acr": "aal2", "X-Session-Auth-Time": _iso_now(-60)}
    paid = httpx.post(f"{app_url}/payments", headers=stepped, json={"amount": 40, "currency": "EUR"})
    assert paid.status_code == 200 and paid.json()["paid"] == 40

    closed = httpx.post(f"{app_url}/account/close", headers=stepped)
    assert closed.status_code == 403 and closed.json()["error"] == "access_denied"

    assert httpx.get(f"{app_url}/dashboard").status_code == 401                # no user: never sent to /score

    # the engine recorded what the guard asked: the client reads the stored answer back by event id
    with RiskClient(engine_url, "shop-key") as client:
        assert client.feedback(pay.json()["event_id"], "step_up_passed") is True
        assert client.feedback("no-such-event", "confirmed_legit") is False


def test_guard_fails_closed_when_the_engine_is_gone(stack) -> None:
    app_url, _, engine = stack
    engine.terminate()
    engine.wait(timeout=20)
    response = httpx.get(f"{app_url}/dashboard", headers={"X-User": "alice"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def _iso_now(offset_s: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
