"""``GET /metrics`` speaks the Prometheus text format and carries what operators alert on.

Parsed with prometheus_client's own parser, as a scraper would: the request latency histogram,
decisions by outcome and action, the model and policy serving, store errors and rate-limited
requests. The registry is shared by every app in this process, so counts are compared as deltas.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from riskengine.api import create_app
from riskengine.home import open_engine
from riskengine.settings import Settings
from riskengine.stores import StoreUnavailable
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, SYDNEY_IP, T0, iso

Samples = dict[tuple[str, frozenset], float]


def scrape(client: TestClient) -> tuple[dict[str, str], Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")   # the text exposition format
    types, samples = {}, {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def body(n: int, action: str = "login", ip: str = OSLO_IP, **extra) -> dict:
    return {"event_id": f"m-{n}", "user_id": "metrics-user", "action": action, "ip": ip, "user_agent": CHROME_WIN,
            "device_id": "laptop-1", "timestamp": iso(T0), **extra}


def post(client: TestClient, n: int, action: str = "login", ip: str = OSLO_IP, **extra) -> int:
    return client.post("/score", json=body(n, action, ip, **extra)).status_code


def test_metrics_in_prometheus_format(settings: Settings) -> None:
    engine = open_engine(settings)
    with TestClient(create_app(settings, engine=engine)) as client:
        assert client.get("/metrics").status_code == 401          # metrics need an API key like the rest
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        _, before = scrape(client)

        assert post(client, 1) == 200
        assert post(client, 2, action="payment", amount=25.0, currency="EUR") == 200
        assert post(client, 3, action="make_coffee") == 200               # unknown action: label "other"
        assert post(client, 4, ip=SYDNEY_IP) == 200
        decisions = [client.post("/score", json=body(n, ip=ip)).json()["decision"]
                     for n, ip in ((1, OSLO_IP), (4, SYDNEY_IP))]          # idempotent replays count again
        original = engine.store.find_event
        engine.store.find_event = lambda event_id: (_ for _ in ()).throw(StoreUnavailable("down"))
        try:                                                               # the store fails: 503, counted
            assert client.post("/feedback", json={"event_id": "m-1", "outcome": "confirmed_legit"}).status_code == 503
        finally:
            engine.store.find_event = original
        types, after = scrape(client)

    assert types["riskengine_request_seconds"] == "histogram"
    assert types["riskengine_decisions"] == "counter"
    assert types["riskengine_store_errors"] == "counter"
    assert types["riskengine_model_info"] == "gauge"

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "/score", "method": "POST", "status": "200"}
    assert delta("riskengine_request_seconds_count", **ok) == 6
    assert delta("riskengine_request_seconds_bucket", le="+Inf", **ok) == 6
    assert delta("riskengine_request_seconds_sum", **ok) > 0
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                     if name == "riskengine_request_seconds_bucket" and set(ok.items()) <= labels)
    assert len(buckets) >= 10 and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))   # cumulative
    assert delta("riskengine_request_seconds_count", route="/feedback", method="POST", status="503") == 1

    by_action: dict[str, float] = {}
    for (name, labels), v in after.items():
        if name == "riskengine_decisions_total":
            got = dict(labels)
            assert got["decision"] in ("allow", "step_up", "deny")
            by_action[got["action"]] = by_action.get(got["action"], 0) + v - value(before, name, **got)
    assert by_action.get("payment") == 1 and by_action.get("other") == 1
    assert by_action.get("login") == 2 + len(decisions)
    assert not any(action == "make_coffee" for action in by_action)

    assert delta("riskengine_store_errors_total") == 1
    model = [dict(labels) for (name, labels), v in after.items() if name == "riskengine_model_info" and v == 1]
    assert model == [{"model_version": engine.scorer.version, "policy_version": engine.policy.version}]


def test_a_decision_made_again_after_another_writer_is_counted(settings: Settings) -> None:
    """Two workers on one store: the one whose cached profile the other moved decides again, and
    ``riskengine_conflicts_total`` counts it; every event is still recorded once."""
    engine = open_engine(settings)
    other = open_engine(settings)                                      # a second worker on the same SQLite file
    with TestClient(create_app(settings, engine=engine)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        _, before = scrape(client)
        assert post(client, 1) == 200                                  # cached here at version 1
        with TestClient(create_app(settings, engine=other)) as elsewhere:
            elsewhere.headers["Authorization"] = f"Bearer {API_KEY}"
            assert post(elsewhere, 2) == 200                           # moved to version 2 there
        assert post(client, 3) == 200                                  # stale here: refused, decided again
        assert post(client, 4) == 200
        _, after = scrape(client)
    assert value(after, "riskengine_conflicts_total") - value(before, "riskengine_conflicts_total") == 1
    assert engine.store.inner.backend.get("metrics-user").version == 4      # every event recorded once
