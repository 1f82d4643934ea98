"""Request ids, JSON logs with nothing personal in them, the operator metrics and the optional
OpenTelemetry spans, all through the real FastAPI app over HTTP (TestClient runs the lifespan).
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from riskengine import tracing
from riskengine.api import create_app, logs
from riskengine.engine import Engine
from riskengine.home import open_engine
from riskengine.settings import Settings
from riskengine.stores import StoreUnavailable
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, SYDNEY_IP, T0, iso

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
DISTINCT_USER = "zq-user-7f3a91c2"
DISTINCT_IP = "203.0.113.77"
DISTINCT_KEY = "key-zz-91b7e4f0aa"


def score_body(n: int | str, user: str = "obs-user", ip: str = OSLO_IP, **extra) -> dict:
    return {"event_id": f"obs-{n}", "user_id": user, "action": "login", "ip": ip, "user_agent": CHROME_WIN,
            "device_id": "laptop-1", "timestamp": iso(T0), **extra}


# -- request ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sent, expected", [
    ({"X-Request-ID": "checkout-42.a:b"}, "checkout-42.a:b"),
    ({"X-Request-ID": "x" * 128}, "x" * 128),
    ({"traceparent": TRACEPARENT}, "4bf92f3577b34da6a3ce929d0e0e4736"),
    ({"X-Request-ID": "x" * 129, "traceparent": TRACEPARENT}, "4bf92f3577b34da6a3ce929d0e0e4736"),
    ({"X-Request-ID": "has space"}, None),
    ({"X-Request-ID": "<script>"}, None),
    ({"X-Request-ID": "-leading-dash"}, None),
    ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, None),
    ({"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, None),
    ({"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, None),
    ({}, None),
])
def test_the_request_id_is_the_clients_when_safe_else_the_traces_else_new(client: TestClient, sent: dict,
                                                                          expected: str | None) -> None:
    for response in (client.post("/score", json=score_body(1), headers=sent),
                     client.get("/livez", headers=sent),                                   # probes too
                     client.post("/score", json=score_body(2), headers={**sent, "Authorization": "Bearer nope"})):
        got = response.headers["x-request-id"]
        if expected is not None:
            assert got == expected
        else:
            assert re.fullmatch(r"[0-9a-f]{32}", got), got
            assert got not in str(sent)


def test_generated_request_ids_differ(client: TestClient) -> None:
    ids = {client.get("/livez").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


# -- logs -----------------------------------------------------------------------------------------------
@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's JSON formatter and request-id filter on the root logger, into a buffer, at DEBUG."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.formatter("json"))
    handler.addFilter(logs.RequestIdFilter())
    handler.addFilter(lambda record: not record.name.startswith(("httpx", "httpcore")))   # the test's client side
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_logs_never_hold_a_key_an_address_or_a_user_id(settings: Settings, json_log: io.StringIO,
                                                        tmp_path: Path) -> None:
    """Adversarial: every path that logs (access lines, 401, 422, 404, erasure, a store outage, a
    refused policy file) is driven with a distinctive user id, address and key; none reaches a line."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: obs\nversion: 1\n")
    loud = settings.model_copy(update={"access_log": True, "policy": policy, "policy_check_interval": 0.0})
    engine = open_engine(loud)
    with TestClient(create_app(loud, engine=engine)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        rid = {"X-Request-ID": "adversarial-1"}
        assert client.post("/score", json=score_body(1, DISTINCT_USER, DISTINCT_IP), headers=rid).status_code == 200
        assert client.post("/score", json=score_body(2, DISTINCT_USER, SYDNEY_IP)).status_code == 200
        assert client.post("/score", json=score_body(3, DISTINCT_USER, DISTINCT_IP),
                           headers={"Authorization": f"Bearer {DISTINCT_KEY}"}).status_code == 401
        assert client.post("/score", json=score_body(4, DISTINCT_USER + "\x00", DISTINCT_IP)).status_code == 422
        assert client.post("/score", json=score_body(5, DISTINCT_USER, DISTINCT_IP + "9")).status_code == 422
        assert client.post("/feedback", json={"event_id": f"{DISTINCT_USER}-ev", "outcome": "confirmed_fraud"}
                           ).status_code == 404
        original = engine.store.find_event
        engine.store.find_event = lambda event_id: (_ for _ in ()).throw(StoreUnavailable("down"))
        try:
            assert client.post("/feedback", json={"event_id": "obs-1", "outcome": "confirmed_legit"},
                               headers={"X-Request-ID": "outage-7"}).status_code == 503
        finally:
            engine.store.find_event = original
        policy.write_text("name: obs\nversion: 2\ndefault_action: {requires: aal9}\n")   # refused on reload
        assert client.post("/score", json=score_body(6, DISTINCT_USER, DISTINCT_IP)).status_code == 200
        assert client.delete(f"/users/{DISTINCT_USER}").status_code == 204
    text = json_log.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) >= 8
    for secret in (DISTINCT_USER, DISTINCT_IP, DISTINCT_KEY, API_KEY, "203.0.113"):
        assert secret not in text, f"{secret!r} reached the log"
    assert all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "riskengine.access"]
    assert {"POST /score 200", "POST unmatched 401", "POST /score 422", "POST /feedback 404",
            "DELETE /users/{user_id:path} 204"} <= {" ".join(line["message"].split()[:3]) for line in access}
    assert any(line["request_id"] == "adversarial-1" for line in access)
    outage = [line for line in lines if line["message"].startswith("store unavailable")]
    assert outage and outage[0]["request_id"] == "outage-7" and outage[0]["level"] == "ERROR"
    assert any("policy file refused" in line["message"] for line in lines)


def test_text_logs_and_a_bad_format_is_refused() -> None:
    record = logging.LogRecord("riskengine", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    logs.RequestIdFilter().filter(record)
    assert logs.formatter("text").format(record).endswith("INFO riskengine [-] hello there")
    with pytest.raises(ValueError, match="RISKENGINE_LOG_FORMAT must be one of json, text, got 'xml'"):
        logs.dict_config("xml")


# -- metrics --------------------------------------------------------------------------------------------
def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_operator_metrics_over_http(settings: Settings, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: ops\nversion: 7\nactions:\n  wire_transfer: {requires: aal2, max_age: 300}\n")
    engine = open_engine(settings.model_copy(update={"policy": policy, "policy_check_interval": 0.0}))
    with TestClient(create_app(settings, engine=engine)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        before = scrape(client)
        first = client.post("/score", json=score_body("m1")).json()
        second = client.post("/score", json=score_body("m2", ip=SYDNEY_IP)).json()       # far away: reasons
        client.post("/score", json=score_body("m3", action="wire_transfer", amount=10, currency="EUR"))
        client.post("/score", json=score_body("m4", action="brew_coffee"))
        assert client.post("/feedback", json={"event_id": "obs-m1", "outcome": "confirmed_legit"}).status_code == 200
        assert client.post("/feedback", json={"event_id": "nope", "outcome": "step_up_failed"}).status_code == 404
        policy.write_text("name: ops\nversion: 8\ndefault_action: {requires: aal9}\n")   # refused reload
        client.post("/score", json=score_body("m5"))
        after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert after[("process_cpu_seconds_total", frozenset())] > 0                 # process collector
    assert after[("process_resident_memory_bytes", frozenset())] > 0
    assert any(name == "python_gc_collections_total" for name, _ in after)     # GC collector
    assert delta("riskengine_risk_score_count", action="login") == 3
    assert delta("riskengine_risk_score_count", action="wire_transfer") == 1    # an action the policy names
    assert delta("riskengine_risk_score_count", action="other") == 1            # ...and one it does not
    assert not any(dict(labels).get("action") == "brew_coffee" for _, labels in after)
    assert delta("riskengine_risk_score_bucket", action="login", le="1.0") == 3
    assert delta("riskengine_risk_score_sum", action="login") == pytest.approx(
        first["risk_score"] + second["risk_score"] + after_m5(engine), abs=1e-6)
    for code in {r["code"] for r in first["reasons"] + second["reasons"]}:
        assert delta("riskengine_reasons_total", code=code) >= 1
    codes = {dict(labels)["code"] for name, labels in after if name == "riskengine_reasons_total"}
    assert codes and codes <= set(__import__("riskengine.policy.schema", fromlist=["x"]).REASON_CODES) | {"other"}
    decided = sum(delta("riskengine_policy_decisions_total", policy_version="ops@7", decision=d)
                  for d in ("allow", "step_up", "deny"))
    assert decided == 5
    assert delta("riskengine_feedback_total", outcome="confirmed_legit", result="recorded") == 1
    assert delta("riskengine_feedback_total", outcome="step_up_failed", result="unknown_event") == 1
    assert delta("riskengine_reload_failures_total", kind="policy") == 1
    assert delta("riskengine_reload_failures_total", kind="model") == 0
    built = after[("riskengine_geoip_build_timestamp_seconds", frozenset({("database", "city")}))]
    assert built == engine.enricher.geo.build_epochs["city"] and built > 1.5e9      # the bundled 2018 build


def after_m5(engine: Engine) -> float:
    stored = engine.store.find_event("obs-m5")
    return stored.decision["risk_score"]


def test_a_refused_model_is_counted(settings: Settings) -> None:
    """A champion pointer naming a version that is not there: the watcher refuses it, and it counts."""
    engine = open_engine(settings)
    with TestClient(create_app(settings, engine=engine)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        key = ("riskengine_reload_failures_total", frozenset({("kind", "model")}))
        before = scrape(client).get(key, 0.0)
        settings.models.mkdir(parents=True, exist_ok=True)
        (settings.models / "champion").write_text("2026-01-01T00-00-00Z-gone\n")
        deadline = time.monotonic() + 20                     # the watcher looks once a second
        while scrape(client).get(key, 0.0) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scrape(client)[key] - before == 1
        assert engine.model_error is not None


# -- tracing ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spans():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.disable()


def ours(spans) -> list:
    """riskengine's spans (recent FastAPI versions add their own through the same global provider)."""
    return [s for s in spans.get_finished_spans() if s.instrumentation_scope.name == "riskengine"]


STAGES = ["parse", "profile", "enrich", "context", "features", "score", "decide", "commit"]


def test_tracing_is_off_by_default(settings: Settings, spans) -> None:
    spans.clear()
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        assert client.post("/score", json=score_body("off")).status_code == 200
    assert ours(spans) == [] and not tracing.enabled()


def test_a_span_per_score_stage_under_the_callers_trace(settings: Settings, spans) -> None:
    spans.clear()
    with TestClient(create_app(settings.model_copy(update={"tracing": True}))) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        response = client.post("/score", json=score_body("t1", DISTINCT_USER, DISTINCT_IP),
                               headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        untraced = client.get("/livez")                          # no header: known by its new trace id
        assert client.delete(f"/users/{DISTINCT_USER}").status_code == 204
    assert not tracing.enabled()                                 # off again once the app has stopped
    finished = ours(spans)
    request = [s for s in finished if s.name == "POST /score"]
    assert len(request) == 1
    server = request[0]
    assert format(server.context.trace_id, "032x") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"              # the caller's span
    assert server.attributes["http.route"] == "/score" and server.attributes["http.response.status_code"] == 200
    children = sorted((s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id),
                      key=lambda s: s.start_time)
    assert [s.name for s in children] == STAGES
    assert all(s.end_time >= s.start_time for s in children)
    livez = [s for s in finished if s.name == "GET /livez"]
    assert untraced.headers["x-request-id"] == format(livez[0].context.trace_id, "032x")
    everything = spans.get_finished_spans()                   # FastAPI's native spans (raw paths) stay off
    dumped = json.dumps([dict(s.attributes or {}) for s in everything] + [s.name for s in everything])
    assert DISTINCT_USER not in dumped and DISTINCT_IP not in dumped


def test_tracing_without_the_packages_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_otel(name: str, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_otel)
    with pytest.raises(tracing.TracingUnavailable, match=r"pip install 'riskengine\[otel\]'"):
        tracing.enable()
    assert not tracing.enabled()
