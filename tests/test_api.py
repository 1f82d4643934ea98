"""The HTTP contract of API.md against the real app, over HTTP, with a real SQLite file."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta

import pytest

from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, SAFARI_IPHONE, T0, US_IP, iso


def login(client, n, at, ip=OSLO_IP, ua=CHROME_WIN, device="laptop-1", user="alice", **extra):
    body = {"event_id": f"{user}-{n}", "user_id": user, "action": "login", "timestamp": iso(at), "ip": ip,
            "user_agent": ua, "device_id": device, **extra}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def snapshot(settings) -> dict[str, list]:
    tables = ("profiles", "ip_events", "global_counts", "global_totals", "events", "audit", "user_secrets")
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:      # closed: 3.13 warns of an open one
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}


def test_readme_story(client):
    """Home logins are allowed; a new country on a new device steps up; after the step-up it is trusted."""
    for day in range(10):
        answer = login(client, day, T0 + timedelta(days=day))
    assert answer["decision"] == "allow" and answer["risk_level"] == "low" and answer["challenge"] is None

    away = login(client, "away", T0 + timedelta(days=10), ip=US_IP, ua=SAFARI_IPHONE, device="phone-1")
    assert away["decision"] == "step_up" and away["risk_level"] in ("medium", "high")
    assert away["required_acr"] == "aal2" and away["max_age"] == 0     # bound to this sign-in
    assert away["challenge"] == ('Bearer error="insufficient_user_authentication", error_description='
                                 '"step-up required", acr_values="aal2", max_age=0')
    codes = [r["code"] for r in away["reasons"]]
    assert "new_country" in codes and "new_device" in codes
    weights = [r["weight"] for r in away["reasons"]]
    assert weights == sorted(weights, reverse=True) and 0 < sum(weights) <= 1.0001

    fb = client.post("/feedback", json={"event_id": "alice-away", "outcome": "step_up_passed"})
    assert fb.status_code == 200 and fb.json() == {"event_id": "alice-away", "recorded": True}

    again = login(client, "away-2", T0 + timedelta(days=10, hours=2), ip=US_IP, ua=SAFARI_IPHONE, device="phone-1")
    assert again["decision"] == "allow" and again["risk_level"] == "low"


def test_payment_of_fifty_times_the_usual_amount_to_a_new_payee_steps_up(client):
    for day in range(8):
        login(client, f"l{day}", T0 + timedelta(days=day))
    session = {"acr": "aal2", "auth_time": iso(T0 + timedelta(days=8))}
    for n in range(6):
        usual = client.post("/score", json={
            "event_id": f"pay-{n}", "user_id": "alice", "action": "payment", "ip": OSLO_IP, "user_agent": CHROME_WIN,
            "device_id": "laptop-1", "amount": 40.0 + n, "currency": "EUR", "payee_id": "landlord",
            "timestamp": iso(T0 + timedelta(days=8, seconds=30 + n)), "session": session}).json()
        assert usual["decision"] == "allow", usual          # aal2 held within max_age: no needless prompt
    big = client.post("/score", json={
        "event_id": "pay-big", "user_id": "alice", "action": "payment", "ip": OSLO_IP, "user_agent": CHROME_WIN,
        "device_id": "laptop-1", "amount": 2100.0, "currency": "EUR", "payee_id": "stranger",
        "timestamp": iso(T0 + timedelta(days=8, seconds=90)), "session": session}).json()
    assert big["decision"] == "step_up" and big["required_acr"] == "aal3"
    assert {"unusual_amount", "new_payee"} <= {r["code"] for r in big["reasons"]}


def test_session_older_than_max_age_must_step_up_again(client):
    login(client, 0, T0)
    body = {"user_id": "alice", "action": "payment", "ip": OSLO_IP, "user_agent": CHROME_WIN, "device_id": "laptop-1",
            "amount": 10.0, "payee_id": "p", "timestamp": iso(T0 + timedelta(minutes=20)),
            "session": {"acr": "aal2", "auth_time": iso(T0)}}
    assert client.post("/score", json=body).json()["decision"] == "step_up"     # 20 min > 300 s
    body["session"]["auth_time"] = iso(T0 + timedelta(minutes=18))
    assert client.post("/score", json=body).json()["decision"] == "allow"


def test_failed_password_is_denied_and_counted(client):
    for n in range(3):
        answer = login(client, f"f{n}", T0 + timedelta(minutes=n), success=False)
        assert answer["decision"] == "deny"
    ok = login(client, "ok", T0 + timedelta(minutes=4))
    assert "recent_failures" in {r["code"] for r in ok["reasons"]}


def test_repeated_event_id_returns_the_stored_decision_and_changes_nothing(client, settings):
    first = login(client, "dup", T0)
    before = snapshot(settings)
    second = login(client, "dup", T0 + timedelta(days=3))       # a retry: the same event, stamped again
    assert second == first
    assert snapshot(settings) == before


def test_an_allowed_events_id_on_a_takeover_payment_is_refused_not_allowed(client, settings):
    """Replaying the id of an allowed login on a large payment to a new payee, from another country
    and device, must not be answered with that login's allow: it is refused naming event_id, and the
    same payment under its own id is stepped up."""
    for day in range(8):
        login(client, f"l{day}", T0 + timedelta(days=day))
    allowed = login(client, "ok", T0 + timedelta(days=8))
    assert allowed["decision"] == "allow"
    before = snapshot(settings)
    payment = {"user_id": "alice", "action": "payment", "ip": US_IP, "user_agent": SAFARI_IPHONE,
               "device_id": "phone-9", "amount": 50_000.0, "currency": "EUR", "payee_id": "stranger",
               "timestamp": iso(T0 + timedelta(days=8, minutes=2))}
    reused = client.post("/score", json={"event_id": "alice-ok", **payment})
    assert reused.status_code == 409, reused.text
    [error] = reused.json()["detail"]
    assert error["field"] == "event_id" and "alice" not in reused.text
    assert snapshot(settings) == before
    other_user = client.post("/score", json={"event_id": "alice-ok", "user_id": "mallory", "action": "login",
                                             "ip": OSLO_IP, "timestamp": iso(T0 + timedelta(days=8))})
    assert other_user.status_code == 409 and other_user.json()["detail"][0]["field"] == "event_id"
    scored = client.post("/score", json={"event_id": "pay-big", **payment}).json()
    assert scored["decision"] in ("step_up", "deny") and scored["required_acr"] == "aal3", scored


def test_missing_event_id_and_timestamp_are_generated(client):
    response = client.post("/score", json={"user_id": "bob", "action": "login", "ip": "2001:4860:4860::8888"})
    assert response.status_code == 200
    assert len(response.json()["event_id"]) >= 16


VALID = {"event_id": "ok-1", "user_id": "alice", "action": "login", "timestamp": "2026-03-02T08:00:00Z",
         "ip": OSLO_IP, "user_agent": "ua", "device_id": "d", "success": True, "amount": 1.5, "currency": "EUR",
         "payee_id": "p", "session": {"acr": "aal1", "auth_time": "2026-03-02T07:59:00Z"},
         "attributes": {"k": "v"}}
MALFORMED = [
    ("event_id", {"event_id": ""}), ("event_id", {"event_id": "x" * 129}), ("event_id", {"event_id": 5}),
    ("user_id", {"user_id": None}), ("user_id", {"user_id": ""}), ("user_id", {"user_id": "u" * 257}),
    ("user_id", {"user_id": 42}), ("action", {"action": ""}), ("action", {"action": "a" * 65}),
    ("action", {"action": "pay ment"}), ("timestamp", {"timestamp": "yesterday"}),
    ("timestamp", {"timestamp": "2026-03-02T08:00:00"}), ("timestamp", {"timestamp": "2026-13-02T08:00:00Z"}),
    ("ip", {"ip": "300.1.1.1"}), ("ip", {"ip": "not-an-ip"}), ("ip", {"ip": 12345}),
    ("user_agent", {"user_agent": "x" * 1025}), ("device_id", {"device_id": "d" * 257}),
    ("success", {"success": "yes"}), ("amount", {"amount": -1}), ("amount", {"amount": "12"}),
    ("currency", {"currency": "euro"}), ("payee_id", {"payee_id": "p" * 257}),
    ("session", {"session": "aal2"}), ("session.acr", {"session": {"acr": ""}}),
    ("session.auth_time", {"session": {"auth_time": "soon"}}),
    ("session.level", {"session": {"level": "aal2"}}),
    ("attributes", {"attributes": {f"k{i}": i for i in range(33)}}),
    ("attributes.k", {"attributes": {"k": [1, 2]}}), ("attributes.k", {"attributes": {"k": None}}),
    ("surprise", {"surprise": 1}),
]


def test_a_valid_body_passes(client):
    assert client.post("/score", json=VALID).status_code == 200


@pytest.mark.parametrize("field,change", MALFORMED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(MALFORMED)])
def test_malformed_field_is_named_and_changes_nothing(client, settings, field, change):
    login(client, "seed", T0)
    before = snapshot(settings)
    response = client.post("/score", json={**VALID, **change})
    assert response.status_code == 422, response.text
    named = {e["field"] for e in response.json()["detail"]}
    assert any(n == field or n.startswith(field + ".") or field.startswith(n) for n in named), named
    assert snapshot(settings) == before


def test_missing_required_fields_are_named(client):
    response = client.post("/score", json={"action": "login"})
    assert response.status_code == 422
    assert {"user_id", "ip"} <= {e["field"] for e in response.json()["detail"]}


def test_non_json_and_non_object_bodies_are_refused(client):
    bad = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["detail"][0]["field"] == "body"
    assert client.post("/score", json=[1, 2]).status_code == 422
    nan = client.post("/score", content=b'{"user_id": "a", "action": "login", "ip": "8.8.8.8", "amount": NaN}',
                      headers={"content-type": "application/json"})
    assert nan.status_code in (400, 422) and nan.json()["detail"][0]["field"] in ("amount", "body")


def test_oversized_body_gets_413(client, settings):
    before = snapshot(settings)
    response = client.post("/score", json={**VALID, "user_agent": "x" * (settings.max_body_bytes + 10)})
    assert response.status_code == 413
    assert snapshot(settings) == before


def test_api_keys(client):
    body = {**VALID, "event_id": "auth-1"}
    assert client.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": ""}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": f"Basic {API_KEY}"}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer second-key"}).status_code == 200
    assert client.get("/health", headers={"Authorization": ""}).json()["status"] == "ok"


def test_feedback_validation_and_unknown_event(client, settings):
    login(client, 0, T0)
    before = snapshot(settings)
    assert client.post("/feedback", json={"event_id": "nope", "outcome": "step_up_passed"}).status_code == 404
    bad = client.post("/feedback", json={"event_id": "alice-0", "outcome": "maybe"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "outcome"
    assert client.post("/feedback", json={"event_id": "alice-0", "outcome": "confirmed_legit", "x": 1}).status_code == 422
    assert snapshot(settings) == before
    assert client.post("/feedback", json={"event_id": "alice-0", "outcome": "confirmed_legit"}).status_code == 200


def test_erasure_removes_the_user_but_not_others(client, settings):
    login(client, 0, T0)
    login(client, 0, T0, user="bob")
    assert client.delete("/users/alice").status_code == 204
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        assert db.execute("SELECT user_id FROM profiles").fetchall() == [("bob",)]
        assert db.execute("SELECT user_id FROM events").fetchall() == [("bob",)]
    assert client.post("/feedback", json={"event_id": "alice-0", "outcome": "confirmed_legit"}).status_code == 404


def test_health_and_metrics(client):
    health = client.get("/health").json()
    assert health == {"status": "ok", "model_version": "freeman-statistical@1", "policy_version": "default@2"}
    login(client, 0, T0)
    text = client.get("/metrics").text
    assert 'riskengine_decisions_total{action="login",decision="allow"}' in text
    assert "riskengine_request_seconds_bucket" in text and "riskengine_model_info" in text


JSON_EDGE_BODIES = {    # JSON text whose answer must not depend on the content type: one parser for all
    "integer amount": '{"user_id": "%s", "action": "payment", "ip": "81.2.69.160", "amount": 10, "currency": "EUR"}',
    "repeated key": '{"user_id": "x", "user_id": "%s", "action": "login", "ip": "81.2.69.160"}',
    "escaped text": '{"user_id": "%s", "action": "login", "ip": "81.2.69.160", "user_agent": "caf\\u00e9 \\ud83d\\ude00"}',
    "NaN amount": '{"user_id": "%s", "action": "payment", "ip": "81.2.69.160", "amount": NaN, "currency": "EUR"}',
    "huge amount": '{"user_id": "%s", "action": "payment", "ip": "81.2.69.160", "amount": 1e400, "currency": "EUR"}',
    "string bool": '{"user_id": "%s", "action": "login", "ip": "81.2.69.160", "success": "true"}',
    "float for int": '{"user_id": "%s", "action": "login", "ip": "81.2.69.160", "attributes": {"n": 1.0}}',
    "trailing comma": '{"user_id": "%s", "action": "login", "ip": "81.2.69.160",}',
}


@pytest.mark.parametrize("case", sorted(JSON_EDGE_BODIES))
def test_every_content_type_gets_the_same_answer(client, case):
    answers = []
    for n, content_type in enumerate(("application/json", "application/scim+json", "text/plain")):
        user = f"edge-{case.replace(' ', '-')}-{n}"        # the same length: error columns compare
        response = client.post("/score", content=JSON_EDGE_BODIES[case] % user,
                               headers={"content-type": content_type})
        answer = response.json()
        if response.status_code == 200:
            answer.pop("event_id")
        answers.append((response.status_code, answer))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] in (200, 400, 422)


def test_the_answer_is_the_response_model_and_every_request_is_timed(client):
    import json

    from riskengine.api.schemas import ScoreResponse

    def timed(client) -> dict[str, float]:
        counts = {"200": 0.0, "422": 0.0}
        for line in client.get("/metrics").text.splitlines():
            for status in counts:
                if line.startswith(f'riskengine_request_seconds_count{{method="POST",route="/score",status="{status}"}}'):
                    counts[status] = float(line.split()[-1])
        return counts

    before = timed(client)
    body = {"event_id": "model-1", "user_id": "model-user", "action": "login", "timestamp": iso(T0), "ip": OSLO_IP,
            "user_agent": CHROME_WIN, "device_id": "laptop-1"}
    response = client.post("/score", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert ScoreResponse.model_validate(answer).model_dump(mode="json") == answer   # every field, and no other
    assert answer["event_id"] == "model-1"
    bad = client.post("/score", content=json.dumps({"user_id": "x", "action": "login", "ip": "300.1.1.1"}),
                      headers={"content-type": "application/json"})
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["detail"]] == ["ip"]
    after = timed(client)
    assert (after["200"] - before["200"], after["422"] - before["422"]) == (1, 1)
