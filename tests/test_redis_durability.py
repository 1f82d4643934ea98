"""What a 200 carries on Redis: read from the server's persistence settings at start, said in the
log and /health, and a Redis keeping less than required refuses the start (stores/durability.py).

A private redis-server of this test module (its settings changed with CONFIG SET between tests);
the machine's Redis on 6379 is never touched."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.cli import main
from riskengine.stores.durability import LEVELS, Durability, NotDurable, level_of, require, weakest
from riskengine.stores.redis import RedisStore
from tests.conftest import API_KEY
from tests.redis_servers import Server, free_ports

PERSISTENCE = {  # CONFIG SET for each level
    "none": {"appendonly": "no", "save": ""},
    "snapshot": {"appendonly": "no", "save": "3600 1"},
    "aof-no": {"appendonly": "yes", "appendfsync": "no", "save": ""},
    "aof-everysec": {"appendonly": "yes", "appendfsync": "everysec", "save": ""},
    "aof-always": {"appendonly": "yes", "appendfsync": "always", "save": ""},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    (port,) = free_ports(1)
    private = Server(tmp_path_factory.mktemp("durability"), port).start()
    try:
        yield private
    finally:
        private.stop()


def persist(server: Server, level: str) -> str:
    client = server.client()
    for name, value in PERSISTENCE[level].items():
        client.config_set(name, value)
    client.close()
    return f"redis://127.0.0.1:{server.port}/0"


def test_each_setting_reads_as_its_level() -> None:
    assert level_of({"appendonly": "yes", "appendfsync": "always", "save": ""}) == "aof-always"
    assert level_of({"appendonly": "yes", "appendfsync": "everysec", "save": "3600 1"}) == "aof-everysec"
    assert level_of({"appendonly": "yes", "appendfsync": "no", "save": ""}) == "aof-no"
    assert level_of({"appendonly": "no", "appendfsync": "always", "save": "900 1"}) == "snapshot"
    assert level_of({"appendonly": "no", "appendfsync": "always", "save": ""}) == "none"
    assert weakest([Durability("aof-always", "a"), Durability("aof-no", "b")]).level == "aof-no"
    with pytest.raises(NotDurable, match="RISKENGINE_REDIS_DURABILITY=none"):
        require(Durability("none", ""), "snapshot")
    with pytest.raises(ValueError, match="not one of"):
        require(Durability("none", ""), "fsync")


@pytest.mark.parametrize("level", LEVELS)
def test_the_store_reads_the_real_servers_persistence(server: Server, level: str) -> None:
    store = RedisStore(persist(server, level))
    try:
        assert store.durability().level == level
    finally:
        store.close()


def _settings(settings, url: str, required: str | None):
    update = {"store": url, "redis_prefix": f"durability-{uuid.uuid4().hex[:12]}:"}
    if required is not None:
        update["redis_durability"] = required
    return settings.model_copy(update=update)


def test_a_redis_without_persistence_refuses_the_start_unless_told_none(server: Server, settings, caplog) -> None:
    url = persist(server, "none")
    assert type(settings).model_fields["redis_durability"].default == "snapshot"      # any persistence at all
    with pytest.raises(NotDurable, match="lost when Redis restarts"):
        with TestClient(create_app(_settings(settings, url, "snapshot"))):
            pass
    caplog.set_level(logging.INFO, logger="riskengine.store")
    with TestClient(create_app(_settings(settings, url, "none"))) as client:
        health = client.get("/health").json()
        assert health["durability"]["level"] == "none"
        assert health["durability"]["guarantee"] == "a 200 is lost when Redis restarts (no AOF, no RDB snapshots)"
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        assert client.post("/score", json={"user_id": "u", "action": "login", "ip": "192.0.2.1"}).status_code == 200
    assert any("Redis store durability: none" in r.getMessage() for r in caplog.records)


def test_fsync_always_is_said_in_health_and_the_log(server: Server, settings, caplog) -> None:
    caplog.set_level(logging.INFO, logger="riskengine.store")
    with TestClient(create_app(_settings(settings, persist(server, "aof-always"), None))) as client:
        durability = client.get("/health").json()["durability"]
    assert durability["level"] == "aof-always"
    assert "survives a crash or power loss" in durability["guarantee"]
    assert "appendfsync='always'" in durability["settings"]
    assert any("aof-always" in r.getMessage() for r in caplog.records)


def test_a_stricter_requirement_refuses_everysec(server: Server, settings) -> None:
    with pytest.raises(NotDurable, match="up to about 1 s"):
        with TestClient(create_app(_settings(settings, persist(server, "aof-everysec"), "aof-always"))):
            pass


def test_serve_says_why_and_exits_before_listening(server: Server, tmp_path: Path, monkeypatch, capsys) -> None:
    """`riskengine serve` on a Redis keeping nothing: one sentence naming the remedy, exit 1."""
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("RISKENGINE_STORE", persist(server, "none"))
    monkeypatch.delenv("RISKENGINE_REDIS_DURABILITY", raising=False)
    monkeypatch.setenv("RISKENGINE_BOOTSTRAP_MODEL", "false")
    assert main(["serve", "--port", "1"]) == 1
    error = capsys.readouterr().err
    assert "the store cannot be used" in error and "RISKENGINE_REDIS_DURABILITY=none" in error
    assert "appendonly" in error


def test_a_cluster_is_as_durable_as_its_weakest_primary(redis_cluster) -> None:
    store = RedisStore(redis_cluster.url)
    primary = redis_cluster.primaries()[1].client()
    try:
        assert store.durability().level == "aof-everysec"                      # as the tests start it
        primary.config_set("appendfsync", "no")
        found = store.durability()
        assert found.level == "aof-no" and "weakest of 3 primaries" in found.detail
    finally:
        primary.config_set("appendfsync", "everysec")
        store.close()
