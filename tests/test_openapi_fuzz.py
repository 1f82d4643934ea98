"""The OpenAPI document against the real service: schemathesis, every check, over real HTTP.

A real ``riskengine serve`` process (its own home, SQLite) serves the document it is fuzzed
against; each operation gets generated valid and invalid requests sent with a valid API key, and
every answer must be documented: its status, content type, headers and body, no 5xx, invalid input
refused, valid input accepted (tests/schemathesis_hooks.py: the one clock-dependent exception).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import tests.schemathesis_hooks  # noqa: F401  (registers filter_failure)
from pydantic import SecretStr
from riskengine.api import create_app
from riskengine.settings import Settings

RISKENGINE = str(Path(sys.executable).with_name("riskengine"))
KEY = "fuzz-key-4d1c"
#: per operation; the coverage phase adds its boundary cases on top. Enough to find each mismatch
#: fixed so far within a few runs, small enough that the module runs in about half a minute here.
EXAMPLES = 50


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``riskengine serve`` with the docs on and no rate limit (the fuzzer is one fast client)."""
    home = tmp_path_factory.mktemp("fuzz-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKENGINE_")}
    env |= {"RISKENGINE_HOME": str(home), "RISKENGINE_BOOTSTRAP_MODEL": "false", "RISKENGINE_DOCS": "true",
            "RISKENGINE_API_KEYS": f"fuzz:{KEY}", "RISKENGINE_SQLITE_SYNCHRONOUS": "NORMAL",
            "RISKENGINE_RATE_LIMIT_PER_SECOND": "0", "RISKENGINE_LOG_LEVEL": "WARNING"}
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([RISKENGINE, "serve", "--port", str(port)], env=env, cwd=home, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/livez", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve not ready in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)
    # no 500 went unnoticed: the service logs each unhandled exception
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


#: the document as the app builds it, loaded at collection so each operation is its own test; the
#: tests below check that the served process serves this very document, and that each ``/v1/``
#: operation (the same function, api/app.py) is documented as its twin, so fuzzing one of the two
#: is enough (schemathesis builds its boundary cases at collection: the twins would double that)
DOCUMENT = create_app(Settings(docs=True, api_keys=SecretStr(f"fuzz:{KEY}"))).openapi()
#: the examples and fuzzing phases, valid and invalid data (hypothesis' settings bound them). Not the
#: coverage phase: it builds every boundary case at collection (1024-character strings drawn through
#: the text pattern one character at a time), about 30 s of CPU here; the CLI run in README.md has it.
CONFIG = schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}}})
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).exclude(path_regex="^/v1/")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_answer_is_the_documented_one(case: schemathesis.Case, served: str) -> None:
    case.call_and_validate(base_url=served, headers={"Authorization": f"Bearer {KEY}"})


def test_the_fuzzed_document_is_the_served_one_and_lists_every_route(served: str) -> None:
    assert httpx.get(f"{served}/openapi.json").json() == DOCUMENT
    for path in ("/score", "/feedback", "/users/{user_id}", "/health", "/livez", "/readyz", "/metrics"):
        assert path in DOCUMENT["paths"] and f"/v1{path}" in DOCUMENT["paths"], path


def test_each_v1_operation_is_documented_as_its_unprefixed_twin() -> None:
    twins = [path for path in DOCUMENT["paths"] if path.startswith("/v1/")]
    assert len(twins) >= 7
    for path in twins:
        for method, operation in DOCUMENT["paths"][path].items():
            twin = DOCUMENT["paths"][path.removeprefix("/v1")][method]
            for part in ("parameters", "requestBody", "responses", "security"):
                assert _untitled(operation.get(part)) == _untitled(twin.get(part)), (method, path, part)


def _untitled(value: Any) -> Any:
    """``value`` without ``title`` keys: FastAPI names a union's schema after the operation."""
    if isinstance(value, dict):
        return {k: _untitled(v) for k, v in value.items() if k != "title"}
    if isinstance(value, list):
        return [_untitled(v) for v in value]
    return value
