"""In-session actions judged with their session, over HTTP against the real app (statistical scorer):
the sign-in's decision and step-up outcome, hijack (address, browser, device change), the device
fallback without ``session.id``, the bounded session state, and ``session.id`` validation."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from riskengine.profiles import MAX_SESSIONS
from tests.conftest import CHROME_WIN, OSLO_IP, SAFARI_IPHONE, T0, US_IP, iso

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"


def post(client, n: str, action: str, at: datetime, session: str | None = None, ip: str = OSLO_IP,
         ua: str = CHROME_WIN, device: str | None = "laptop-1", user: str = "alice", **extra) -> dict:
    body = {"event_id": f"{user}-{n}", "user_id": user, "action": action, "timestamp": iso(at), "ip": ip,
            "user_agent": ua, **extra}
    if device is not None:
        body["device_id"] = device
    if session is not None:
        body["session"] = {"id": session}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def history(client, days: int = 12, user: str = "alice") -> datetime:
    """A settled user: daily sign-ins from one laptop in Oslo, each with a small payment."""
    for day in range(days):
        at = T0 + timedelta(days=day)
        post(client, f"hist{day}", "login", at, f"s-h{day}", user=user)
        post(client, f"histv{day}", "view_dashboard", at + timedelta(minutes=1), f"s-h{day}", user=user)
    return T0 + timedelta(days=days)


def codes(answer: dict) -> list[str]:
    return [r["code"] for r in answer["reasons"]]


def test_actions_in_a_session_whose_step_up_failed_are_not_allowed(client):
    now = history(client)
    login = post(client, "x1", "login", now, "s-x", ip=US_IP, ua=FIREFOX_LINUX, device="other")
    assert login["decision"] == "step_up"
    assert client.post("/feedback", json={"event_id": "alice-x1", "outcome": "step_up_failed"}).json()["recorded"]
    for n, action in enumerate(("view_dashboard", "add_payee")):
        answer = post(client, f"x2{n}", action, now + timedelta(minutes=1 + n), "s-x", ip=US_IP, ua=FIREFOX_LINUX,
                      device="other", payee_id="mule")
        assert answer["risk_level"] == "high" and answer["decision"] != "allow", answer
        assert "session_step_up_failed" in codes(answer)


def test_a_passed_step_up_clears_the_session(client):
    now = history(client)
    assert post(client, "y1", "login", now, "s-y", ip=US_IP, ua=FIREFOX_LINUX, device="other")["decision"] == "step_up"
    client.post("/feedback", json={"event_id": "alice-y1", "outcome": "step_up_passed"})
    answer = post(client, "y2", "view_dashboard", now + timedelta(minutes=1), "s-y", ip=US_IP, ua=FIREFOX_LINUX,
                  device="other")
    assert not {"session_step_up_failed", "session_unverified"} & set(codes(answer))


def test_a_step_up_never_passed_leaves_the_session_unverified(client):
    now = history(client)
    post(client, "z1", "login", now, "s-z", ip=US_IP, ua=FIREFOX_LINUX, device="other")
    answer = post(client, "z2", "add_payee", now + timedelta(minutes=1), "s-z", ip=US_IP, ua=FIREFOX_LINUX,
                  device="other", payee_id="mule")
    assert answer["decision"] != "allow" and "session_unverified" in codes(answer)


def test_a_mid_session_address_and_browser_change_is_not_allowed(client):
    now = history(client)
    assert post(client, "h1", "login", now, "s-h")["decision"] == "allow"
    assert post(client, "h2", "view_dashboard", now + timedelta(minutes=2), "s-h")["decision"] == "allow"
    hijacked = post(client, "h3", "view_dashboard", now + timedelta(minutes=5), "s-h", ip=US_IP, ua=SAFARI_IPHONE)
    assert hijacked["decision"] != "allow" and hijacked["risk_level"] in ("medium", "high")
    assert {"session_browser_changed", "session_network_changed"} & set(codes(hijacked))


def test_the_owner_changing_address_alone_in_session_stays_allowed(client):
    now = history(client)
    post(client, "m1", "login", now, "s-m")
    answer = post(client, "m2", "view_dashboard", now + timedelta(minutes=2), "s-m", ip="129.240.2.99")
    assert answer["decision"] == "allow"


def test_without_a_session_id_the_latest_sign_in_from_the_device_is_used(client):
    now = history(client)
    post(client, "d1", "login", now, None, ip=US_IP, ua=FIREFOX_LINUX, device="other")
    client.post("/feedback", json={"event_id": "alice-d1", "outcome": "step_up_failed"})
    answer = post(client, "d2", "add_payee", now + timedelta(minutes=1), None, ip=US_IP, ua=FIREFOX_LINUX,
                  device="other", payee_id="mule")
    assert "session_step_up_failed" in codes(answer) and answer["decision"] != "allow"
    # a sign-in on another device is another session: the laptop's stays clean
    laptop = post(client, "d3", "view_dashboard", now + timedelta(minutes=2), None)
    assert "session_step_up_failed" not in codes(laptop)


def test_an_action_with_no_known_sign_in_is_a_signal(enricher):
    """The statistical score leaves it out (apps may not post every sign-in); a model can learn it."""
    import asyncio

    from riskengine.engine import Engine
    from riskengine.events import Event, SessionInfo
    from riskengine.stores import memory_store

    async def sign_in_then_ask(engine: Engine):
        await engine.record(Event("l", "alice", "login", T0, OSLO_IP, CHROME_WIN, "laptop-1",
                                  session=SessionInfo(id="s1")))
        unknown = await engine.evaluate(Event("a", "alice", "add_payee", T0 + timedelta(minutes=1), OSLO_IP,
                                              CHROME_WIN, "laptop-1", payee_id="p", session=SessionInfo(id="s-other")))
        known = await engine.evaluate(Event("b", "alice", "add_payee", T0 + timedelta(minutes=1), OSLO_IP, CHROME_WIN,
                                            "laptop-1", payee_id="p", session=SessionInfo(id="s1")))
        return unknown, known

    with Engine(memory_store(), enricher) as engine:
        unknown, known = asyncio.run(sign_in_then_ask(engine))
    assert unknown.signals.values["session_unknown"] == 1.0 and known.signals.values["session_unknown"] == 0.0
    assert known.signals.values["session_age_min"] == 1.0


def test_the_pace_of_sensitive_actions_counts_within_the_session(client):
    now = history(client)
    post(client, "p0", "login", now, "s-p")
    answers = [post(client, f"p{n}", "export_data", now + timedelta(seconds=30 * n), "s-p") for n in range(1, 9)]
    assert "session_pace" in codes(answers[-1])
    assert answers[-1]["risk_score"] > answers[0]["risk_score"]


def test_session_state_stays_bounded(client, settings):
    for n in range(3 * MAX_SESSIONS):
        post(client, f"b{n}", "login", T0 + timedelta(hours=n), f"s-b{n}", device=f"dev-{n % 5}")
    from riskengine.home import open_for_audit

    client.__exit__(None, None, None)            # the service's store closes before it is read again
    with open_for_audit(settings) as engine:
        sessions = engine.store.get("alice").sessions
    assert len(sessions) == MAX_SESSIONS
    assert f"s:s-b{3 * MAX_SESSIONS - 1}" in sessions and "s:s-b0" not in sessions


@pytest.mark.parametrize("bad", ["", "x" * 129, "tab\there", 42])
def test_a_bad_session_id_is_refused_naming_the_field(client, bad):
    body = {"user_id": "alice", "action": "login", "ip": OSLO_IP, "session": {"id": bad}}
    response = client.post("/score", json=body)
    assert response.status_code == 422
    assert "session" in response.text and "id" in response.text
    assert client.post("/score", json={**body, "session": {"id": "ok"}}).status_code == 200
