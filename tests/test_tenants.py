"""Tenants (API.md): users, events, labels, erasure, per-IP and population statistics belong to the
API key's tenant. Real app over HTTP, on a real SQLite file and on the real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskengine.api import create_app
from riskengine.engine import Engine
from riskengine.home import open_engine
from riskengine.events import tenant_key
from riskengine.settings import Settings
from tests.conftest import CHROME_WIN, OSLO_IP, REDIS_URL, T0, US_IP, iso

KEYS = "acme-app:acme-key:acme,beta-app:beta-key:beta,plain-app:plain-key"
ACME, BETA, PLAIN = ({"Authorization": f"Bearer {k}"} for k in ("acme-key", "beta-key", "plain-key"))


@pytest.fixture(params=["sqlite", "redis"])
def service(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[TestClient, Engine]]:
    store = {"sqlite": "sqlite", "redis": REDIS_URL}[request.param]
    tenanted = settings.model_copy(update={"api_keys": SecretStr(KEYS), "store": store,
                                           "redis_prefix": f"test-tenants-{uuid.uuid4().hex[:12]}:"})
    engine = open_engine(tenanted)
    try:
        with TestClient(create_app(tenanted, engine=engine)) as client:
            yield client, engine
    finally:
        if request.param == "redis":
            engine.store.clear()


def login(client: TestClient, headers: dict, event_id: str, user: str = "alice", days: float = 0,
          ip: str = OSLO_IP, **extra) -> dict:
    response = client.post("/score", headers=headers, json={
        "event_id": event_id, "user_id": user, "action": "login", "ip": ip, "user_agent": CHROME_WIN,
        "device_id": "laptop-1", "timestamp": iso(T0 + timedelta(days=days)), **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_same_user_id_in_two_tenants_is_two_users(service) -> None:
    client, engine = service
    for day in range(6):
        login(client, ACME, f"a-{day}", days=day)
    login(client, BETA, "b-0", days=6)
    assert engine.store.get(tenant_key("acme", "alice")).version > engine.store.get(tenant_key("beta", "alice")).version
    assert engine.store.get("alice").version == 0              # the default tenant never saw alice
    login(client, PLAIN, "p-0", days=6)
    assert engine.store.get("alice").version == 1              # default tenant: plain ids, as before tenants


def test_an_event_id_reused_by_another_tenant_is_its_own_event(service) -> None:
    client, _ = service
    acme = login(client, ACME, "shared-id", success=False)
    beta = login(client, BETA, "shared-id", user="bob")
    assert acme["event_id"] == beta["event_id"] == "shared-id"
    assert acme["decision"] == "deny" and beta["decision"] != "deny"     # not acme's stored answer
    assert login(client, ACME, "shared-id", success=False) == acme         # acme's own retry: its own answer
    other = client.post("/score", headers=ACME, json={"event_id": "shared-id", "user_id": "bob", "action": "login",
                                                      "ip": OSLO_IP, "timestamp": iso(T0)})
    assert other.status_code == 409 and other.json()["detail"][0]["field"] == "event_id"   # not a retry: refused


def test_feedback_on_another_tenants_event_is_404_and_changes_nothing(service) -> None:
    client, engine = service
    login(client, ACME, "acme-away", ip=US_IP)
    label = {"event_id": "acme-away", "outcome": "step_up_passed"}
    before = engine.store.get(tenant_key("acme", "alice")).version
    refused = client.post("/feedback", json=label, headers=BETA)
    assert refused.status_code == 404 and refused.json()["detail"][0]["field"] == "event_id"
    assert client.post("/v1/feedback", json=label, headers=PLAIN).status_code == 404
    assert engine.store.get(tenant_key("acme", "alice")).version == before
    assert engine.store.find_event(tenant_key("acme", "acme-away")).outcome is None
    assert client.post("/feedback", json=label, headers=ACME).status_code == 200
    assert engine.store.find_event(tenant_key("acme", "acme-away")).outcome == "step_up_passed"
    assert engine.store.get(tenant_key("acme", "alice")).version > before     # the label was acme's to give


def test_erasing_another_tenants_user_is_404_and_erases_nothing(service) -> None:
    client, engine = service
    login(client, ACME, "carol-1", user="carol")
    login(client, BETA, "dave-1", user="dave")
    refused = client.delete("/users/carol", headers=BETA)
    assert refused.status_code == 404 and refused.json()["detail"][0]["field"] == "user_id"
    assert client.delete("/v1/users/carol", headers=PLAIN).status_code == 404
    assert engine.store.get(tenant_key("acme", "carol")).version == 1
    assert client.delete("/users/carol", headers=ACME).status_code == 204
    assert engine.store.get(tenant_key("acme", "carol")).version == 0
    assert engine.store.find_event(tenant_key("acme", "carol-1")) is None
    assert engine.store.get(tenant_key("beta", "dave")).version == 1
    assert client.delete("/users/carol", headers=ACME).status_code == 404     # already gone


def test_per_ip_and_population_statistics_are_the_tenants_own(service) -> None:
    client, engine = service
    for n in range(4):
        login(client, ACME, f"spray-{n}", user=f"victim-{n}", ip=US_IP, success=False)
    at = (T0 + timedelta(minutes=5)).timestamp()
    assert engine.store.ip_activity(tenant_key("acme", US_IP), at).distinct_users == 4
    assert engine.store.ip_activity(tenant_key("beta", US_IP), at).distinct_users == 0
    assert engine.store.ip_activity(US_IP, at).distinct_users == 0
    login(client, ACME, "pop-1", user="erin")
    acme_ip = engine.store.global_counts({"ip": tenant_key("acme", OSLO_IP)})["ip"]
    beta_ip = engine.store.global_counts({"ip": tenant_key("beta", OSLO_IP)})["ip"]
    assert acme_ip.count >= 1 and beta_ip.count == 0


def test_shared_ip_statistics_when_the_deployment_opts_in(settings: Settings) -> None:
    shared = settings.model_copy(update={"api_keys": SecretStr(KEYS), "share_ip_stats": True})
    engine = open_engine(shared)
    with TestClient(create_app(shared, engine=engine)) as client:
        login(client, ACME, "s-1", user="u1", ip=US_IP, success=False)
        login(client, BETA, "s-2", user="u2", ip=US_IP, success=False)
        assert engine.store.ip_activity(US_IP, (T0 + timedelta(minutes=1)).timestamp()).distinct_users == 2


def test_audit_records_carry_the_tenant(service) -> None:
    client, engine = service
    login(client, ACME, "audited-1")
    login(client, PLAIN, "audited-2")
    bodies = [json.loads(row.body) for row in engine.store.audit_rows()]
    scores = [body for body in bodies if body["kind"] == "score"]
    assert [(r["client"], r.get("tenant")) for r in scores] == [("acme-app", "acme"), ("plain-app", None)]
    assert not any("alice" in str(r) or "audited" in str(r) for r in scores)


def test_an_id_holding_the_tenant_separator_is_refused(service) -> None:
    client, engine = service
    login(client, ACME, "acme-1", user="alice")
    forged = {"event_id": "f-1", "user_id": "acme\x1falice", "action": "login", "ip": OSLO_IP}
    refused = client.post("/score", json=forged, headers=PLAIN)
    assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "user_id"
    label = client.post("/feedback", json={"event_id": "acme\x1facme-1", "outcome": "confirmed_fraud"}, headers=PLAIN)
    assert label.status_code == 422 and label.json()["detail"][0]["field"] == "event_id"
    assert client.delete("/users/acme%1Falice", headers=PLAIN).status_code == 422
    assert engine.store.get(tenant_key("acme", "alice")).version == 1
    assert engine.store.find_event(tenant_key("acme", "acme-1")).outcome is None
