"""Shared fixtures: real SQLite files, the real FastAPI app over HTTP (TestClient runs the lifespan)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskengine.api import create_app
from riskengine.enrich import Enricher
from riskengine.events import Event, SessionInfo
from riskengine.settings import Settings

REDIS_URL = os.environ.get("RISKENGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The machine's Redis keeps nothing across a restart (--save "" --appendonly no): services the tests
# start on it are told to accept that (stores/durability.py); the durability tests say otherwise.
os.environ.setdefault("RISKENGINE_REDIS_DURABILITY", "none")
#: the Redis topologies the store contract runs on: the shared server, and this run's own Cluster and Sentinel
REDIS_TOPOLOGIES = ["redis", "redis-cluster", "redis-sentinel"]
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
OSLO_IP = "129.240.2.3"            # GeoLite2: Oslo, NO, accuracy 1 km
BOMLO_IP = "81.167.144.58"         # GeoLite2: Bomlo, NO
SYDNEY_IP = "1.1.1.1"              # GeoLite2: AU, accuracy 1000 km
US_IP = "8.8.8.8"
CHROME_WIN = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0.0.0 Safari/537.36")
SAFARI_IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1")
API_KEY = "let-me-in"


def event(n: int | str = 0, user: str = "alice", action: str = "login", at: datetime = T0,
          ip: str = OSLO_IP, ua: str = CHROME_WIN, device: str | None = "laptop-1", **extra) -> Event:
    session = extra.pop("session", SessionInfo())
    return Event(f"e-{user}-{n}", user, action, at, ip, ua, device, session=session, **extra)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real three-primary Redis Cluster of this run's own (free ports, AOF on), stopped at the end."""
    from tests.redis_servers import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory):
    """A real primary + replica watched by three Sentinels, of this run's own, stopped at the end."""
    from tests.redis_servers import SentinelSet

    sentinels = SentinelSet(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield sentinels.start()
    finally:
        sentinels.stop()


def redis_url(request: pytest.FixtureRequest, topology: str = "redis") -> str:
    """The URL of a topology of ``REDIS_TOPOLOGIES`` (Cluster and Sentinel started on first use)."""
    if topology == "redis-cluster":
        return request.getfixturevalue("redis_cluster").url
    if topology == "redis-sentinel":
        return request.getfixturevalue("redis_sentinel").url
    return REDIS_URL


@pytest.fixture(scope="session")
def enricher() -> Enricher:
    return Enricher()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, api_keys=SecretStr(f"tests:{API_KEY},other:second-key"),
                    sqlite_synchronous="NORMAL")


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client


def pytest_sessionstart(session: pytest.Session) -> None:
    """The store contract and multi-process tests use a real Redis: say plainly when none answers."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        raise pytest.UsageError(
            f"the tests need a Redis server at {REDIS_URL} ({type(exc).__name__}). Start one with\n"
            "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no\n"
            "or point RISKENGINE_TEST_REDIS_URL at one (a spare database: the tests delete only their own keys).")
