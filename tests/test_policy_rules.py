"""Conditions in the policy (rules), named lists with roles, enrolled factors and their fallback
(issue 17 items 1-3): per rule type, per list role, per fallback; validation naming file, field
and reason; and the same through the real app with a real SQLite home, policy file and lists."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.events import SessionInfo
from riskengine.policy.decide import Decision, Reason, Seen
from riskengine.policy.file import PRESETS, PRESETS_DIR, PolicyError, load_policy, parse_policy
from riskengine.settings import Settings
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, event, iso

RULES = """\
name: rules
version: 1
levels:
  - {name: aal1}
  - {name: aal2, max_age: 43200, factors: [totp, webauthn, passkey, push, sms]}
  - {name: aal3, max_age: 43200, factors: [webauthn, passkey]}
bands:
  medium: {from: 0.3, at_least: aal2, max_age: 300}
  high: {from: 0.7, at_least: aal2, raise: 1, max_age: 300}
deny_at: 0.97
actions:
  login: {requires: aal1}
  payment: {requires: aal2, max_age: 300, fallback: deny}
  export_data: {requires: aal3, max_age: 300, fallback: account_recovery}
  change_email: {requires: aal2, max_age: 300}
  account_recovery: {requires: aal2, max_age: 0}
rules:
  - name: admins-step-up-abroad
    when: {attributes: {role: admin}, countries: ['SE']}
    then: {decision: step_up, level: aal3, max_age: 60}
  - name: no-payments-from-satellites
    when: {actions: [payment], asns: [14593]}
    then: {decision: deny}
  - name: office-payments
    when: {actions: [payment], lists: [office], risk_below: 0.5}
    then: {decision: allow}
  - name: risky-travel
    when: {reasons: [impossible_travel], risk_level: [medium, high]}
    then: {decision: deny}
  - name: mid-risk-logins
    when: {actions: [login], risk_at_least: 0.4, risk_below: 0.6}
    then: {decision: step_up, level: aal2}
"""
POLICY = parse_policy(RULES, "rules.yaml")
HOME = Seen("NO", 2116)


def decide(risk: float = 0.1, action: str = "payment", seen: Seen = HOME, reasons: tuple[Reason, ...] = (),
           **extra) -> Decision:
    return POLICY.decide(event(1, action=action, **extra), risk, reasons, "m1", seen=seen)


def fresh(acr: str, seconds: int = 10) -> SessionInfo:
    return SessionInfo(acr, T0 - timedelta(seconds=seconds))


# -- rules: one test per condition type ----------------------------------------------------------

TRAVEL = (Reason("impossible_travel", "2000 km in 10 minutes", 1.0),)


@pytest.mark.parametrize("name, matching, other", [
    ("admins-step-up-abroad",                                       # attributes + countries
     dict(action="login", attributes={"role": "admin"}, seen=Seen("SE", 3301)),
     dict(action="login", attributes={"role": "user"}, seen=Seen("SE", 3301))),
    ("admins-step-up-abroad",
     dict(action="login", attributes={"role": "admin"}, seen=Seen("SE", 3301)),
     dict(action="login", attributes={"role": "admin"}, seen=Seen("DK", 3301))),
    ("no-payments-from-satellites",                                 # actions + asns
     dict(seen=Seen("NO", 14593)), dict(seen=Seen("NO", 14594))),
    ("no-payments-from-satellites",
     dict(seen=Seen("NO", 14593)), dict(action="change_email", seen=Seen("NO", 14593))),
    ("office-payments",                                             # lists + risk_below
     dict(risk=0.45, seen=Seen("NO", 2116, frozenset({"office"}))),
     dict(risk=0.5, seen=Seen("NO", 2116, frozenset({"office"})))),
    ("office-payments",
     dict(risk=0.2, seen=Seen("NO", 2116, frozenset({"office"}))),
     dict(risk=0.2, seen=Seen("NO", 2116, frozenset({"home"})))),
    ("risky-travel",                                                # reasons + risk_level
     dict(action="change_email", risk=0.35, reasons=TRAVEL), dict(action="change_email", risk=0.25, reasons=TRAVEL)),
    ("risky-travel",
     dict(action="change_email", risk=0.35, reasons=TRAVEL), dict(action="change_email", risk=0.35)),
    ("mid-risk-logins",                                             # risk_at_least + risk_below
     dict(action="login", risk=0.4), dict(action="login", risk=0.39)),
    ("mid-risk-logins",
     dict(action="login", risk=0.59), dict(action="login", risk=0.6)),
])
def test_each_condition_decides_when_it_holds_and_not_otherwise(name, matching, other):
    assert decide(**matching).rule == name
    assert decide(**other).rule != name


def test_the_first_matching_rule_decides_and_names_itself():
    # an admin abroad paying from a satellite network: the first rule (step up to aal3) wins
    answer = decide(attributes={"role": "admin"}, seen=Seen("SE", 14593))
    assert (answer.rule, answer.decision, answer.required_acr, answer.max_age) == \
        ("admins-step-up-abroad", "step_up", "aal3", 60)
    assert answer.challenge.endswith('acr_values="aal3", max_age=60')
    assert decide(seen=Seen("SE", 14593)).rule == "no-payments-from-satellites"
    assert decide(seen=Seen("SE", 14593)).decision == "deny"
    unmatched = decide(risk=0.1)
    assert unmatched.rule is None and unmatched.decision == "step_up" and unmatched.required_acr == "aal2"


def test_an_attribute_true_is_not_the_number_one():
    policy = parse_policy(RULES.replace("{role: admin}", "{vip: true}"), "rules.yaml")
    seen = Seen("SE", 1)
    assert policy.decide(event(1, attributes={"vip": True}), 0.1, (), "m", seen=seen).rule == "admins-step-up-abroad"
    assert policy.decide(event(1, attributes={"vip": 1}), 0.1, (), "m", seen=seen).rule is None


def test_a_rule_allow_beats_the_step_up_and_a_rule_step_up_is_met_by_a_held_session():
    office = Seen("NO", 2116, frozenset({"office"}))
    assert decide(risk=0.45, seen=office).decision == "allow"                   # no session, yet allowed
    admin = dict(action="login", attributes={"role": "admin"}, seen=Seen("SE", 1))
    assert decide(**admin, session=fresh("aal3", 30)).decision == "allow"
    stale = decide(**admin, session=fresh("aal3", 61))
    assert (stale.decision, stale.rule, stale.factors) == ("step_up", "admins-step-up-abroad", ("webauthn", "passkey"))


def test_the_failed_password_deny_wins_over_an_allow_rule():
    policy = parse_policy(RULES.replace("when: {actions: [payment], lists: [office], risk_below: 0.5}",
                                        "when: {lists: [office]}"), "rules.yaml")
    answer = policy.decide(event(1, success=False), 0.1, (), "m", seen=Seen("NO", 1, frozenset({"office"})))
    assert answer.decision == "deny" and answer.rule is None


def test_rules_apply_in_shadow_mode_as_audit_only():
    policy = parse_policy(RULES.replace("deny_at: 0.97", "deny_at: 0.97\nshadow: true"), "rules.yaml")
    answer = policy.decide(event(1, action="payment"), 0.1, (), "m", seen=Seen("NO", 14593))
    assert (answer.decision, answer.shadow_decision, answer.rule) == ("allow", "deny", "no-payments-from-satellites")


# -- lists with roles --------------------------------------------------------------------------

def test_an_address_on_a_deny_list_is_denied_without_a_rule_and_before_any_rule():
    bad = Seen("NO", 2116, frozenset({"office", "blocked"}), (("blocked", "deny"),))
    answer = decide(risk=0.01, seen=bad)                       # the office allow rule would match
    assert answer.decision == "deny" and answer.rule is None and answer.challenge is None
    assert answer.reasons[0].code == "denylisted_network" and "blocked" in answer.reasons[0].message
    assert "network" in answer.reasons[0].user_message and "blocked" not in answer.reasons[0].user_message
    held = decide(risk=0.01, action="login", seen=bad, session=fresh("aal3"))
    assert held.decision == "deny"


def test_an_anonymizer_list_adds_its_reason_and_leaves_the_decision_to_the_rest():
    tor = Seen("DE", 60729, frozenset({"tor"}), (("tor", "anonymizer"),))
    model = (Reason("new_device", "a new device", 1.0),)
    answer = decide(risk=0.1, action="login", seen=tor, reasons=model)
    assert [r.code for r in answer.reasons] == ["new_device", "anonymizer_network"]
    assert answer.decision == decide(risk=0.1, action="login", reasons=model).decision == "allow"
    already = (Reason("anonymizer_network", "the model's own", 0.7),)
    assert [r.code for r in decide(action="login", seen=tor, reasons=already).reasons] == ["anonymizer_network"]


def test_a_list_without_a_role_only_matters_to_rules():
    plain = Seen("NO", 2116, frozenset({"blocked"}))
    answer = decide(risk=0.1, action="login", seen=plain)
    assert answer.decision == "allow" and answer.reasons == ()


# -- enrolled factors and the fallback -----------------------------------------------------------

def test_a_step_up_names_the_factors_that_meet_the_level():
    assert decide().factors == ("totp", "webauthn", "passkey", "push", "sms")
    assert decide(factors=("sms", "password")).factors == ("sms",)
    assert decide(action="export_data").factors == ("webauthn", "passkey")
    assert decide(action="login").factors is None                    # allowed: nothing to prove


def test_without_factors_in_the_request_nothing_changes():
    plain = decide(action="export_data")
    assert plain.decision == "step_up" and plain.fallback is None and plain.required_acr == "aal3"


def test_a_step_up_the_user_cannot_perform_follows_fallback_deny():
    answer = decide(factors=("password", "email"))
    assert (answer.decision, answer.fallback, answer.challenge, answer.factors) == ("deny", "deny", None, ())


def test_a_step_up_the_user_cannot_perform_falls_back_to_the_recovery_action():
    answer = decide(action="export_data", factors=("totp", "sms"))     # aal3 needs webauthn or passkey
    assert (answer.decision, answer.fallback, answer.required_acr, answer.max_age) == \
        ("step_up", "account_recovery", "aal2", 0)
    assert answer.factors == ("totp", "sms")
    assert answer.challenge.endswith('acr_values="aal2", max_age=0')
    nothing = decide(action="export_data", factors=("password",))       # cannot even recover: deny
    assert (nothing.decision, nothing.fallback) == ("deny", "deny")


def test_an_action_without_fallback_still_steps_up_and_says_no_factor_fits():
    answer = decide(action="change_email", factors=("email",))
    assert (answer.decision, answer.fallback, answer.factors) == ("step_up", None, ())


def test_decisions_round_trip_with_the_new_fields():
    answer = decide(action="export_data", factors=("totp",), attributes={"role": "admin"}, seen=Seen("SE", 1))
    assert Decision.from_dict(json.loads(json.dumps(answer.to_dict()))) == answer


@pytest.mark.parametrize("name", PRESETS)
def test_presets_name_factors_per_level(name):
    policy = load_policy(PRESETS_DIR / f"{name}.yaml")
    assert policy.meeting(1) is not None and policy.meeting(len(policy.levels) - 1) == ("webauthn",)
    assert "sms" not in policy.meeting(len(policy.levels) - 1)


# -- validation: file, field, reason ------------------------------------------------------------

BROKEN = [
    ("rules:\n  - {when: {}, then: {decision: deny}}\n", "rules[0].name", "is required"),
    ("rules:\n  - {name: a, then: {decision: block}}\n", "rules[0].then.decision", "one of allow, deny, step_up"),
    ("rules:\n  - {name: a, then: {decision: step_up}}\n", "rules[0].then.level", "is required for step_up"),
    ("rules:\n  - {name: a, then: {decision: step_up, level: aal9}}\n", "rules[0].then.level", "unknown level 'aal9'"),
    ("rules:\n  - {name: a, then: {decision: deny, max_age: 5}}\n", "rules[0].then", "are for step_up, not deny"),
    ("rules:\n  - {name: a, then: {decision: deny}}\n  - {name: a, then: {decision: allow}}\n", "rules[1].name",
     "'a' already names an earlier rule"),
    ("rules:\n  - {name: a, when: {countries: [NO]}, then: {decision: deny}}\n", "rules[0].when.countries[0]",
     "quote it ('NO')"),
    ("rules:\n  - {name: a, when: {countries: [nor]}, then: {decision: deny}}\n", "rules[0].when.countries[0]",
     "ISO 3166"),
    ("rules:\n  - {name: a, when: {lists: [Tor Exits]}, then: {decision: deny}}\n", "rules[0].when.lists[0]",
     "must be a list name"),
    ("rules:\n  - {name: a, when: {reasons: [new_planet]}, then: {decision: deny}}\n", "rules[0].when.reasons[0]",
     "got 'new_planet'"),
    ("rules:\n  - {name: a, when: {asns: [AS1]}, then: {decision: deny}}\n", "rules[0].when.asns[0]", "an AS number"),
    ("rules:\n  - {name: a, when: {risk_at_least: 0.6, risk_below: 0.5}, then: {decision: deny}}\n",
     "rules[0].when.risk_below", "must be above risk_at_least"),
    ("rules:\n  - {name: a, when: {attributes: {plan: [gold]}}, then: {decision: deny}}\n",
     "rules[0].when.attributes.plan", "a text, a number or true/false"),
    ("rules:\n  - {name: a, when: {tenant: x}, then: {decision: deny}}\n", "rules[0].when.tenant", "unknown field"),
    ("levels:\n  - {name: aal1}\n  - {name: aal2, factors: [totp, carrier_pigeon]}\n", "levels[1].factors[1]",
     "one of password, totp"),
    ("actions:\n  payment: {requires: aal2, fallback: recover}\n", "actions.payment.fallback",
     "unknown action 'recover'; use deny or an action listed under actions: payment"),
]


@pytest.mark.parametrize("body, where, reason", BROKEN)
def test_a_broken_rule_is_named_by_file_field_and_reason(body, where, reason):
    with pytest.raises(PolicyError) as caught:
        parse_policy("name: p\nversion: 1\n" + body, "broken.yaml")
    assert any(line.startswith(f"broken.yaml {where}: ") and reason in line for line in caught.value.errors), \
        caught.value.errors


# -- through the real app ---------------------------------------------------------------------------

@pytest.fixture
def app_client(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "blocked.txt").write_text("# role: deny\n203.0.113.0/24\n")
    (lists / "tor.txt").write_text("# role: anonymizer\n198.51.100.7\n")
    policy = tmp_path / "rules.yaml"
    policy.write_text(RULES)
    settings = Settings(home=tmp_path, api_keys=f"tests:{API_KEY}", policy=policy, lists=lists,
                        policy_check_interval=0.0, sqlite_synchronous="NORMAL")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        yield client, settings


def post(client, n: int, **body):
    request = {"event_id": f"r-{n}", "user_id": "alice", "action": "login", "timestamp": iso(T0 + timedelta(hours=n)),
               "ip": OSLO_IP, "user_agent": CHROME_WIN, "device_id": "laptop-1", **body}
    return client.post("/score", json=request)


def test_the_app_answers_with_rule_factors_fallback_and_records_the_rule(app_client):
    client, settings = app_client
    denied = post(client, 1, ip="203.0.113.9")
    assert denied.status_code == 200 and denied.json()["decision"] == "deny"
    assert denied.json()["reasons"][0]["code"] == "denylisted_network"
    anonymous = post(client, 2, ip="198.51.100.7").json()
    assert "anonymizer_network" in [r["code"] for r in anonymous["reasons"]]
    admin = post(client, 3, action="payment", attributes={"role": "admin", "geo_country": "SE"}).json()
    assert admin["rule"] is None                          # Oslo's address is known: the hint does not apply
    cannot = post(client, 4, action="payment", factors=["password", "email"]).json()
    assert (cannot["decision"], cannot["fallback"], cannot["factors"]) == ("deny", "deny", [])
    recovery = post(client, 5, action="export_data", factors=["totp"]).json()
    assert (recovery["decision"], recovery["fallback"], recovery["required_acr"]) == \
        ("step_up", "account_recovery", "aal2")
    assert recovery["factors"] == ["totp"] and 'acr_values="aal2"' in recovery["challenge"]
    plain = post(client, 6, action="payment").json()
    assert plain["factors"] == ["totp", "webauthn", "passkey", "push", "sms"] and plain["fallback"] is None

    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]
    text = json.dumps(bodies)
    assert '"fallback": "account_recovery"' in text and '"denylisted_network"' in text


def test_the_app_names_the_rule_that_decided_in_the_answer_and_the_audit(app_client):
    client, settings = app_client
    assert post(client, 1, action="login").json()["rule"] is None
    settings.policy.write_text(RULES.replace("version: 1", "version: 2").replace(
        "rules:\n", "rules:\n  - name: all-logins\n    when: {actions: [login]}\n    then: {decision: deny}\n"))
    decided = post(client, 2).json()
    assert (decided["policy_version"], decided["rule"], decided["decision"]) == ("rules@2", "all-logins", "deny")
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        records = [json.loads(b) for (b,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]
    scores = [r for r in records if r["kind"] == "score"]
    assert [r.get("rule") for r in scores] == [None, "all-logins"]


@pytest.mark.parametrize("factors, ok", [
    (["totp", "webauthn"], True), ([], True), (["totp"] * 16, True),
    (["totp"] * 17, False), (["carrier_pigeon"], False), ("totp", False), ([1], False),
])
def test_factors_are_checked_and_a_bad_one_is_a_422_naming_factors(app_client, factors, ok):
    client, _ = app_client
    response = post(client, 1, factors=factors)
    assert response.status_code == (200 if ok else 422), response.text
    if not ok:
        assert all(problem["field"].split(".")[0] == "factors" for problem in response.json()["detail"]), response.text
