"""Policies as files: validation that names file, field and reason; levels, bands, ceiling, sessions;
reload without restart that never swaps in a broken file; failure answers; audit-only mode."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.cli import main
from riskengine.events import SessionInfo
from riskengine.policy.decide import Policy, Reason
from riskengine.policy.file import PRESETS_DIR, PolicyError, PolicyWatcher, load_policy, parse_policy
from riskengine.settings import Settings
from riskengine.stores import StoreUnavailable
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, event, iso

SMALL = """\
name: shop
version: {version}
levels:
  - {{name: basic, acr: "urn:shop:basic"}}
  - {{name: strong, acr: ["urn:shop:mfa", "mfa"], max_age: 3600}}
  - {{name: hardware, acr: "urn:shop:hwk", max_age: 600}}
bands:
  medium: {{from: 0.4, at_least: strong, max_age: 120}}
  high: {{from: 0.8, raise: 2, max_age: 60}}
deny_at: 0.95
default_action: {{requires: strong}}
actions:
  login: {{requires: basic}}
  checkout: {{requires: strong, max_age: 900, deny_at: 0.9}}
  browse: {{requires: basic, shadow: {shadow}}}
"""


def small(version: int = 1, shadow: str = "false") -> str:
    return SMALL.format(version=version, shadow=shadow)


def fields(policy: Policy) -> dict:
    return {f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)
            if f.name not in ("source", "sha256", "description")}


def test_default_file_is_the_builtin_policy():
    assert fields(load_policy(PRESETS_DIR / "default.yaml")) == fields(Policy())


# -- validation ----------------------------------------------------------------------

BROKEN = [
    ("actions:\n  payment: {requires: aal4}\n", "actions.payment.requires", "unknown level 'aal4'"),
    ("actions:\n  payment: {requires: aal2, max_agee: 30}\n", "actions.payment.max_agee", "unknown field"),
    ("actions:\n  payment: {requires: aal2, max_age: -5}\n", "actions.payment.max_age", "0 or more"),
    ("actions:\n  payment: {requires: aal2, max_age: 1.5}\n", "actions.payment.max_age", "whole seconds"),
    ("actions:\n  payment: {requires: aal2, on_failure: allow}\n", "actions.payment.on_failure", "one of deny"),
    ("actions:\n  payment: {requires: aal2, shadow: maybe}\n", "actions.payment.shadow", "true or false"),
    ("actions:\n  payment: {requires: aal2, exemptions: [psd2_tra]}\n", "actions.payment.exemptions",
     "unknown exemption 'psd2_tra'"),
    ("actions:\n  pay ment: {requires: aal2}\n", "actions.pay ment", "action names"),
    ("actions:\n  payment: {requires: aal2}\n  payment: {requires: aal1}\n", "line 5 column 3", "duplicate key 'payment'"),
    ("actions: [\n", "line 4", "not valid YAML"),
    ("bands:\n  medium: {from: 0.8}\n  high: {from: 0.5}\n", "bands.high.from", "above bands.medium.from"),
    ("bands:\n  critical: {from: 0.9}\n", "bands.critical", "unknown field; known: medium, high"),
    ("bands:\n  high: {from: 0.99}\ndeny_at: 0.9\n", "bands.high.from", "not be above deny_at"),
    ("deny_at: 2\n", "deny_at", "between 0.0 and 1.0"),
    ("levels: []\n", "levels", "non-empty list"),
    ("levels:\n  - {name: a}\n  - {name: b, acr: a}\n", "levels[1]", "'a' already names"),
    ("exemptions:\n  lv: {type: low_value, max_count: 0}\n", "exemptions.lv.max_count", "1 or more"),
    ("exemptions:\n  x: {type: magic}\n", "exemptions.x.type", "low_value or transaction_risk_analysis"),
    ("exemptions:\n  t:\n    type: transaction_risk_analysis\n    payment_types:\n      card:\n"
     "        actions: [payment]\n        reference_rates: [{fraud_rate: 130%, up_to: 100}]\n",
     "exemptions.t.payment_types.card.reference_rates[0].fraud_rate", "percentage"),
    ("exemptions:\n  t:\n    type: transaction_risk_analysis\n    payment_types:\n      card: {actions: [payment], "
     "reference_rates: [{fraud_rate: 0.1%, up_to: 100}]}\nactions:\n  transfer: {requires: aal2, exemptions: [t]}\n",
     "actions.transfer.exemptions", "no payment type for action 'transfer'"),
    ("audit: {min_retention_days: 0}\n", "audit.min_retention_days", "at least 1"),
    ("surprise: 1\n", "surprise", "unknown field"),
]


@pytest.mark.parametrize("body,field,reason", BROKEN, ids=[b[1] for b in BROKEN])
def test_a_broken_policy_is_refused_naming_file_field_and_reason(tmp_path, body, field, reason):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nversion: 1\n" + body)
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert any(line.startswith(f"{path} {field}") and reason in line for line in refused.value.errors), \
        refused.value.errors


def test_name_and_version_are_required_and_empty_files_refused():
    with pytest.raises(PolicyError, match=r"p.yaml name: is required"):
        parse_policy("version: 1\n", "p.yaml")
    with pytest.raises(PolicyError, match=r"p.yaml version: is required"):
        parse_policy("name: x\n", "p.yaml")
    with pytest.raises(PolicyError, match=r"p.yaml: the file is empty"):
        parse_policy("", "p.yaml")
    with pytest.raises(PolicyError, match=r"version: must be a number or a short text without '@'"):
        parse_policy("name: x\nversion: 1@2\n", "p.yaml")


def test_policy_check_command(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: b\nversion: 1\nactions:\n  payment: {requires: aal4}\n")
    good = tmp_path / "shop.yaml"
    good.write_text(small())
    assert main(["policy", "check", str(good), "psd2", "hipaa", "gdpr", "default"]) == 0
    out = capsys.readouterr().out
    assert f"{good}: OK, shop@1" in out and "psd2@1" in out and "2 exemptions" in out
    assert main(["policy", "check", str(good), str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"{broken} actions.payment.requires: unknown level 'aal4'; known: aal1, aal2, aal3" in err


# -- deciding -----------------------------------------------------------------------------

def test_level_names_acr_values_bands_and_ceiling():
    policy = parse_policy(small(), "shop.yaml")
    assert policy.version == "shop@1"
    login = event(action="login")
    # low risk: the base requirement; the weakest level always holds
    low = policy.decide(login, 0.1, (), "m")
    assert (low.decision, low.required_acr, low.max_age, low.amr) == ("allow", "urn:shop:basic", None, ("rba",))
    # medium raises to at least `strong`, fresh within the band's 120 s; the challenge asks for the acr value
    medium = policy.decide(login, 0.5, (), "m")
    assert (medium.decision, medium.required_acr, medium.max_age) == ("step_up", "urn:shop:mfa", 120)
    assert 'acr_values="urn:shop:mfa", max_age=120' in medium.challenge
    # high raises two levels; the tightest max_age of action, band and level wins
    high = policy.decide(login, 0.85, (), "m")
    assert (high.decision, high.required_acr, high.max_age) == ("step_up", "urn:shop:hwk", 60)
    # the ceiling, and an action's own lower ceiling
    assert policy.decide(login, 0.95, (), "m").decision == "deny"
    assert policy.decide(event(action="checkout"), 0.91, (), "m").decision == "deny"
    # unknown actions get default_action, with its level's max_age
    other = policy.decide(event(action="rename_pet"), 0.0, (), "m")
    assert (other.decision, other.required_acr, other.max_age) == ("step_up", "urn:shop:mfa", 3600)


SESSIONS = [  # (held acr, seconds since auth_time, expected decision for checkout: strong within 900 s)
    ("mfa", 60, "allow"), ("urn:shop:mfa", 899, "allow"), ("urn:shop:mfa", 900, "allow"),
    ("urn:shop:mfa", 901, "step_up"), ("urn:shop:hwk", 60, "allow"), ("strong", 60, "allow"),
    ("basic", 60, "step_up"), ("aal2", 60, "step_up"), (None, None, "step_up"), ("mfa", None, "step_up"),
    ("mfa", -30, "step_up"),              # an auth_time in the future proves nothing
]


@pytest.mark.parametrize("acr,age,expected", SESSIONS)
def test_session_acr_and_auth_time_are_honoured(acr, age, expected):
    policy = parse_policy(small(), "shop.yaml")
    auth_time = T0 - timedelta(seconds=age) if age is not None else None
    checkout = event(action="checkout", session=SessionInfo(acr, auth_time))
    assert policy.decide(checkout, 0.1, (), "m").decision == expected


def test_failure_answers_follow_the_action():
    policy = parse_policy(small() + "  export: {requires: strong, on_failure: unavailable}\n"
                          "  ping: {requires: basic, on_failure: deny}\n", "shop.yaml")
    checkout = policy.on_failure(event(action="checkout"), "score_unavailable", "no score")
    assert (checkout.decision, checkout.failure, checkout.amr) == ("deny", "score_unavailable", ())
    assert checkout.reasons == (Reason("score_unavailable", "no score", 1.0, "We could not check this request just now."),)
    login = policy.on_failure(event(action="login", session=SessionInfo("urn:shop:hwk", T0)), "x", "no score")
    assert login.decision == "step_up" and login.required_acr == "urn:shop:hwk" and login.challenge
    assert policy.on_failure(event(action="export"), "x", "no score") is None          # -> 503
    assert policy.on_failure(event(action="ping"), "x", "no score").decision == "deny"
    assert policy.on_failure(event(action="login", success=False), "x", "no score").decision == "deny"


def test_shadow_mode_answers_allow_and_keeps_the_decision():
    policy = parse_policy(small(shadow="true"), "shop.yaml")
    browse = policy.decide(event(action="browse"), 0.5, (), "m")
    assert (browse.decision, browse.shadow_decision, browse.challenge, browse.amr) == ("allow", "step_up", None, ())
    assert policy.decide(event(action="checkout"), 0.5, (), "m").decision == "step_up"   # only browse is shadowed
    whole = parse_policy(small().replace("deny_at: 0.95", "deny_at: 0.95\nshadow: true"), "shop.yaml")
    assert whole.decide(event(action="checkout"), 0.99, (), "m").shadow_decision == "deny"
    failed = whole.decide(event(action="login", success=False), 0.0, (), "m")
    assert failed.decision == "deny" and failed.shadow_decision is None             # a wrong password is not risk


# -- the running service --------------------------------------------------------------------

def _client(settings: Settings) -> TestClient:
    client = TestClient(create_app(settings))
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    return client


def _score(client: TestClient, n: int, **extra) -> dict:
    body = {"event_id": f"ev-{n}", "user_id": "carol", "action": "login", "ip": OSLO_IP, "user_agent": CHROME_WIN,
            "device_id": "laptop-1", "timestamp": iso(T0 + timedelta(minutes=n)), **extra}
    response = client.post("/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _audit(settings: Settings) -> list[dict]:
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]


def test_reload_without_restart_and_a_broken_file_keeps_the_old_policy(settings, tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(small(1))
    settings = settings.model_copy(update={"policy": path, "policy_check_interval": 0.0})
    with _client(settings) as client:
        assert _score(client, 1)["policy_version"] == "shop@1"
        assert client.get("/health").json()["policy_version"] == "shop@1"

        path.write_text(small(2).replace("checkout: {requires: strong", "checkout: {requires: hardware"))
        answer = _score(client, 2, action="checkout")
        assert answer["policy_version"] == "shop@2" and answer["required_acr"] == "urn:shop:hwk"

        path.write_text(small(3).replace("requires: hardware", "").replace("requires: strong, max_age: 900",
                                                                             "requires: strongest, max_age: 900"))
        answer = _score(client, 3, action="checkout")
        assert answer["policy_version"] == "shop@2"                       # the broken v3 never serves
        health = client.get("/health").json()
        assert health["policy_version"] == "shop@2"
        assert health["policy_error"] == (f"{path.name} actions.checkout.requires: unknown level 'strongest'; "
                                          "known: basic, strong, hardware")

        path.unlink()                                                     # a vanished file changes nothing either
        assert _score(client, 4)["policy_version"] == "shop@2"
        assert "cannot read the policy file" in client.get("/health").json()["policy_error"]

        path.write_text(small(4))
        assert _score(client, 5)["policy_version"] == "shop@4"
        assert "policy_error" not in client.get("/health").json()
    changes = [(r["change"], r["policy_version"]) for r in _audit(settings) if r["kind"] == "policy"]
    assert changes == [("load", "shop@1"), ("reload", "shop@2"), ("refused", "shop@2"), ("refused", "shop@2"),
                       ("reload", "shop@4")]
    scored = [r["policy_version"] for r in _audit(settings) if r["kind"] == "score"]
    assert scored == ["shop@1", "shop@2", "shop@2", "shop@2", "shop@4"]


def test_the_service_does_not_start_on_a_broken_policy(settings, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: b\nversion: 1\nbands: {high: {from: high}}\n")
    with pytest.raises(PolicyError, match=r"broken.yaml bands.high.from: must be a number, got 'high'"):
        with _client(settings.model_copy(update={"policy": path})):
            pass


def test_watcher_looks_at_most_once_per_interval(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(small(1))
    now = [100.0]
    loaded: list[str] = []
    watcher = PolicyWatcher(path, lambda p: loaded.append(p.version), loaded.append, 1.0, clock=lambda: now[0])
    path.write_text(small(2) + "\n")
    watcher.poll()
    assert loaded == []                                   # within the interval: not even a stat
    now[0] += 1.0
    watcher.poll()
    watcher.poll()
    assert loaded == ["shop@2"]


def test_environment_selects_the_policy(monkeypatch, tmp_path):
    monkeypatch.setenv("RISKENGINE_POLICY", "hipaa")
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("RISKENGINE_API_KEYS", f"tests:{API_KEY}")
    with _client(Settings()) as client:
        assert client.get("/health").json()["policy_version"] == "hipaa@1"
        assert _score(client, 1, action="view_phi")["required_acr"] == "aal2"


class _BrokenModel:
    version = "broken@1"

    def score(self, signals):
        raise RuntimeError("model file truncated")


def test_a_failing_model_gets_the_policy_answer_recorded(settings):
    with _client(settings) as client:
        client.app_state["engine"].scorer = _BrokenModel()
        login = _score(client, 1)
        assert (login["decision"], login["failure"], login["amr"]) == ("step_up", "score_unavailable", [])
        assert login["required_acr"] == "aal2" and login["challenge"]
        payment = _score(client, 2, action="payment", amount=5.0)
        assert (payment["decision"], payment["failure"]) == ("deny", "score_unavailable")
        assert _score(client, 2, action="payment", amount=5.0) == payment        # recorded: retries get the same
    records = [r for r in _audit(settings) if r["kind"] == "score"]
    assert [(r["decision"], r["failure"]) for r in records] == [("step_up", "score_unavailable"),
                                                                ("deny", "score_unavailable")]


def test_a_failing_model_answers_503_where_the_policy_says_so(settings, tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(small() + "  export: {requires: strong, on_failure: unavailable}\n")
    with _client(settings.model_copy(update={"policy": path})) as client:
        client.app_state["engine"].scorer = _BrokenModel()
        response = client.post("/score", json={"user_id": "carol", "action": "export", "ip": OSLO_IP})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["failure"] == "score_unavailable"


def test_an_unreachable_store_gets_the_policy_answer_without_writing(settings, tmp_path, monkeypatch):
    path = tmp_path / "shop.yaml"
    path.write_text(small() + "  export: {requires: strong, on_failure: unavailable}\n")
    with _client(settings.model_copy(update={"policy": path})) as client:
        _score(client, 0)
        before = _audit(settings)
        store = client.app_state["engine"].store

        def unreachable(*args, **kwargs):
            raise StoreUnavailable("connection refused")

        async def unreachable_async(*args, **kwargs):
            unreachable()

        monkeypatch.setattr(store, "get", unreachable)
        monkeypatch.setattr(store, "get_async", unreachable_async)     # the service reads off the loop

        def unrecorded(n: int, **extra) -> dict:            # not recorded, so never a 200 (API.md)
            body = {"event_id": f"ev-{n}", "user_id": "carol", "action": "login", "ip": OSLO_IP, **extra}
            response = client.post("/score", json=body)
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            return response.json()

        checkout = unrecorded(1, action="checkout")
        assert (checkout["decision"], checkout["failure"]) == ("deny", "store_unavailable")
        login = unrecorded(2)
        assert (login["decision"], login["failure"]) == ("step_up", "store_unavailable")
        export = client.post("/score", json={"user_id": "carol", "action": "export", "ip": OSLO_IP})
        assert export.status_code == 503
        monkeypatch.undo()
        assert _audit(settings) == before                                  # nothing was written
        assert _score(client, 1, action="checkout")["failure"] is None     # not recorded: a retry is scored afresh


def test_answers_carry_amr_and_shadow_is_recorded(settings, tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(small(shadow="true"))
    with _client(settings.model_copy(update={"policy": path})) as client:
        enforced = _score(client, 1, action="checkout")
        assert (enforced["decision"], enforced["amr"], enforced["shadow_decision"]) == ("step_up", ["rba"], None)
        shadowed = _score(client, 2, action="browse", ip="8.8.8.8", device_id="phone-9")
        assert shadowed["decision"] == "allow" and shadowed["shadow_decision"] in ("step_up", "deny")
        assert shadowed["amr"] == [] and shadowed["challenge"] is None
    records = {r["event_ref"]: r for r in _audit(settings) if r["kind"] == "score"}
    assert sorted((r["action"], r["shadowed"]) for r in records.values()) == [("browse", True), ("checkout", False)]
    browse = next(r for r in records.values() if r["action"] == "browse")
    assert browse["decision"] == "allow" and browse["shadow_decision"] == shadowed["shadow_decision"]
    assert browse["policy_version"] == "shop@1"


def test_policy_and_model_changes_are_recorded(settings):
    with _client(settings) as client:
        client.app_state["engine"]._record_change("model", {"model_version": "m2", "sha256": "ab" * 32})
    kinds = [(r["kind"], r.get("change") or r.get("model_version")) for r in _audit(settings)]
    assert kinds == [("policy", "load"), ("model", "m2")]
    assert _audit(settings)[0]["sha256"] == load_policy(PRESETS_DIR / "default.yaml").sha256


def test_presets_ship_with_the_package():
    assert {p.name for p in Path(PRESETS_DIR).glob("*.yaml")} >= {"default.yaml", "psd2.yaml", "hipaa.yaml",
                                                                   "gdpr.yaml"}


def test_serve_refuses_a_broken_policy_before_starting(tmp_path, monkeypatch, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: b\nversion: 1\ndefault_action: {requires: aal9}\n")
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    monkeypatch.setenv("RISKENGINE_POLICY", str(path))
    assert main(["serve", "--port", "1"]) == 1
    assert f"{path} default_action.requires: unknown level 'aal9'" in capsys.readouterr().err
