"""``riskengine serve --workers 2`` and ``riskengine init`` as real processes.

Under load, SIGTERM: the service stops accepting, finishes what it holds, flushes its commit
groups and exits 0; every event answered 200 is in the store afterwards and the audit trail
verifies. The keys file is re-read by every worker; the JSON log has no key, address or user id.
On Redis, serve refuses to start until ``riskengine init`` made the shared keys.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from riskengine.home import open_for_audit
from riskengine.settings import Settings
from tests.conftest import CHROME_WIN, OSLO_IP, REDIS_URL

RISKENGINE = str(Path(sys.executable).with_name("riskengine"))
USER_MARK = "srv-user-c0ffee"                 # distinctive: grepped for in the log
IP = "192.0.2.44"                             # TEST-NET-1: distinctive too
FIRST_KEY, SECOND_KEY = "first-key-5e1f9a", "second-key-77ab0c"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKENGINE_")}
    # the machine's Redis keeps nothing on disk: accepted knowingly (test_redis_durability.py checks the refusal)
    return {**env, "RISKENGINE_HOME": str(home), "RISKENGINE_BOOTSTRAP_MODEL": "false",
            "RISKENGINE_SQLITE_SYNCHRONOUS": "NORMAL", "RISKENGINE_LOG_FORMAT": "json",
            "RISKENGINE_REDIS_DURABILITY": "none", **extra}


def _start(home: Path, port: int, env: dict[str, str], workers: int = 2) -> tuple[subprocess.Popen, Path]:
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([RISKENGINE, "serve", "--port", str(port), "--workers", str(workers)],
                                   env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Ready when both workers answer: each request on a new connection lands on either."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if log.read_text().count("Application startup complete") >= 2:
            return
        time.sleep(0.3)
    pytest.fail(f"serve not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _write_keys(path: Path, text: str, step: int) -> None:
    path.write_text(text)
    stat = path.stat()          # a distinct modification time even within the file system's granularity
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + step * 1_000_000_000))


def _body(n: str) -> dict:
    return {"event_id": n, "user_id": f"{USER_MARK}-{int(n.rsplit('-', 1)[1]) % 50}", "action": "login",
            "ip": IP if n.endswith(("0", "5")) else OSLO_IP, "user_agent": CHROME_WIN, "device_id": "laptop-1"}


def _load(url: str, key: str, stop: threading.Event, answered: dict[str, int], prefix: str) -> None:
    """Post /score until the service stops answering; remember each event id's status."""
    n = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while not stop.is_set():
            event_id = f"{prefix}-{n}"
            n += 1
            try:
                answered[event_id] = client.post("/score", json=_body(event_id)).status_code
            except httpx.TransportError:
                if stop.is_set():
                    return
                time.sleep(0.05)          # between the listener closing and the process leaving


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_workers_drain_on_sigterm_and_every_200_is_durable(tmp_path: Path, store: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    keys_file = tmp_path / "api-keys"
    _write_keys(keys_file, f"first:{FIRST_KEY}\n", 1)
    extra = {"RISKENGINE_API_KEYS_FILE": str(keys_file)}
    if store == "redis":
        extra |= {"RISKENGINE_STORE": REDIS_URL, "RISKENGINE_REDIS_PREFIX": f"serve-{uuid.uuid4().hex[:10]}:"}
        made = subprocess.run([RISKENGINE, "init"], env=_env(home, **extra), capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    env = _env(home, **extra)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process, log = _start(home, port, env)
    try:
        _wait_ready(url, process, log)
        # the keys file, re-read by every worker: each request below opens a new connection
        for _ in range(6):
            assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {FIRST_KEY}"}).status_code == 200
        _write_keys(keys_file, f"second:{SECOND_KEY}\n", 2)
        for _ in range(6):
            assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {SECOND_KEY}"}).status_code == 200
            assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {FIRST_KEY}"}).status_code == 401

        stop, answered = threading.Event(), [dict() for _ in range(6)]
        threads = [threading.Thread(target=_load, args=(url, SECOND_KEY, stop, answered[i], f"ev{i}"))
                   for i in range(6)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(len(a) for a in answered) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)                 # mid-load
        signalled_at = sum(len(a) for a in answered)
        assert process.wait(timeout=90) == 0, log.read_text()[-3000:]
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    statuses = {k: v for a in answered for k, v in a.items()}
    ok = [event_id for event_id, status in statuses.items() if status == 200]
    assert signalled_at >= 60 and len(ok) >= 60, statuses
    assert set(statuses.values()) <= {200}, {s for s in statuses.values()}    # nothing half-served (503s...)
    settings = Settings(home=home, store=env.get("RISKENGINE_STORE", "sqlite"),
                        redis_prefix=env.get("RISKENGINE_REDIS_PREFIX", "re:"))
    with open_for_audit(settings) as engine:
        try:
            missing = [event_id for event_id in ok if engine.store.find_event(event_id) is None]
            assert missing == [], f"{len(missing)} of {len(ok)} answered 200 but not recorded"
            records, chains, problems = engine.verify_audit()
            assert problems == [] and records >= len(ok)
        finally:
            if store == "redis":
                engine.store.clear()

    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["message"] == "Application shutdown complete." for line in lines)
    for secret in (USER_MARK, IP, FIRST_KEY, SECOND_KEY):
        assert secret not in text, f"{secret!r} reached the log"


def test_serve_on_redis_refuses_to_start_without_the_shared_keys(tmp_path: Path) -> None:
    env = _env(tmp_path, RISKENGINE_STORE=REDIS_URL, RISKENGINE_API_KEYS="t:k")
    started = time.monotonic()
    refused = subprocess.run([RISKENGINE, "serve", "--port", str(_free_port())], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert f"audit key: {tmp_path / 'var' / 'audit.key'} does not exist" in refused.stderr
    assert f"pseudonym key: {tmp_path / 'var' / 'pseudonym.key'} does not exist" in refused.stderr
    assert "riskengine init" in refused.stderr and "redis://" not in refused.stderr
    assert not (tmp_path / "var" / "audit.key").exists() and time.monotonic() - started < 60

    (tmp_path / "var").mkdir(exist_ok=True)
    (tmp_path / "var" / "audit.key").write_bytes(os.urandom(32))
    refused = subprocess.run([RISKENGINE, "serve", "--port", str(_free_port())], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "pseudonym key" in refused.stderr and "audit key" not in refused.stderr


def test_init_creates_the_keys_once_and_never_overwrites(tmp_path: Path) -> None:
    moved = tmp_path / "secrets" / "audit.key"
    env = _env(tmp_path, RISKENGINE_AUDIT_KEY_FILE=str(moved))
    first = subprocess.run([RISKENGINE, "init"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    paths = [moved, tmp_path / "var" / "pseudonym.key", tmp_path / "var" / "registry.key"]
    for path in paths:
        assert str(path) in first.stdout and "created" in first.stdout
        assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_bytes()) == 32
    before = [path.read_bytes() for path in paths]

    again = subprocess.run([RISKENGINE, "init"], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "nothing was overwritten" in again.stderr
    assert [path.read_bytes() for path in paths] == before

    paths[1].unlink()                                   # one lost: only it is made again
    partly = subprocess.run([RISKENGINE, "init"], env=env, capture_output=True, text=True)
    assert partly.returncode == 0 and partly.stdout.count("exists, left untouched") == 2
    assert paths[0].read_bytes() == before[0] and paths[2].read_bytes() == before[2]
