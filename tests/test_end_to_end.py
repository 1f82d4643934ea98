"""The whole product as a user runs it: real processes, real files, over real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from riskengine.scoring.model import RiskModel
from riskengine.scoring.registry import ModelRegistry
from tests.conftest import CHROME_WIN, OSLO_IP

KEY = "e2e-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def riskengine(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "riskengine", *args], cwd=home, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RISKENGINE_HOME": str(home), **env})


class Service:
    """``riskengine serve`` in its own process, stopped when the test ends."""

    def __init__(self, home: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(home / "serve.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "riskengine", "serve", "--port", str(self.port)], cwd=home,
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "RISKENGINE_HOME": str(home), "RISKENGINE_API_KEYS": f"e2e:{KEY}", **env})
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)

    def wait(self, seconds: float = 180) -> dict:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()
            try:
                return self.client.get("/health").json()
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"service did not start in {seconds} s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)
        self.client.close()
        self.log.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


def test_fresh_home_serve_trains_a_first_model_then_scores_and_audits(home):
    service = Service(home, RISKENGINE_BOOTSTRAP_USERS="120", RISKENGINE_BOOTSTRAP_DAYS="14")
    try:
        health = service.wait()
        assert health["status"] == "ok" and health["model_version"] != "freeman-statistical@1"
        log = Path(service.log.name).read_text()
        assert "no trained model" in log and "promoted" in log
        answer = service.client.post("/score", json={"user_id": "carol", "action": "login", "ip": OSLO_IP,
                                                     "user_agent": CHROME_WIN, "device_id": "d1"}).json()
        assert answer["model_version"] == health["model_version"] and answer["decision"] in ("allow", "step_up")
        fb = service.client.post("/feedback", json={"event_id": answer["event_id"], "outcome": "confirmed_legit"})
        assert fb.status_code == 200
        assert service.client.delete("/users/carol").status_code == 204
        log = Path(service.log.name).read_text()
        assert KEY not in log and OSLO_IP not in log and "carol" not in log      # nothing personal in logs
    finally:
        service.stop()
    verify = riskengine(home, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listed = riskengine(home, "models", "list")
    assert listed.returncode == 0 and listed.stdout.startswith("* ")


def test_generate_train_promote_and_hot_reload_under_load(home):
    data = home / "events.parquet"
    assert riskengine(home, "generate", "--out", str(data), "--users", "120", "--days", "14").returncode == 0
    trained = riskengine(home, "train", "--data", str(data), "--promote")
    assert trained.returncode == 0, trained.stderr
    assert "freeman" in trained.stdout and "promoted" in trained.stdout
    registry = ModelRegistry(home / "models")
    first = registry.champion_version()
    service = Service(home, RISKENGINE_BOOTSTRAP_MODEL="false")
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
            n = 0
            while not stop.is_set() and n < 5000:
                n += 1
                r = c.post("/score", json={"user_id": f"u{n % 7}", "action": "login", "ip": OSLO_IP,
                                           "user_agent": CHROME_WIN, "event_id": f"{threading.get_ident()}-{n}"})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    try:
        assert service.wait()["model_version"] == first
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        import numpy as np
        from riskengine.features import FEATURE_NAMES
        rng = np.random.default_rng(0)
        X = rng.normal(size=(400, len(FEATURE_NAMES)))
        second = registry.register(RiskModel(max_iter=5).fit(X, (X[:, 0] > 1).astype(int)), promote=True).version
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not versions or versions[-1] != second):
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        service.stop()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert first in versions and versions[-1] == second
    assert versions.index(second) > versions.index(first)
