"""The shipped presets (default, psd2, hipaa, gdpr), table-driven, through the real service and SQLite:
session reuse within and beyond max_age, PSD2 exemptions with their counters and fraud-rate
thresholds from feedback, shadow mode."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.policy.file import PRESETS_DIR
from riskengine.settings import Settings
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, SAFARI_IPHONE, T0, US_IP, iso

DAY = 86400


@dataclass
class Home:
    """One service over one SQLite home, with helpers that post /score and /feedback."""

    client: TestClient
    settings: Settings

    def score(self, user: str, n: int | str, action: str, amount: float | None = None, at: datetime = T0,
              session: tuple[str, float] | None = None, currency: str = "EUR", **extra) -> dict:
        body = {"event_id": f"{user}-{n}", "user_id": user, "action": action, "ip": OSLO_IP,
                "user_agent": CHROME_WIN, "device_id": "laptop-1", "timestamp": iso(at), **extra}
        if amount is not None:
            body.update(amount=amount, currency=currency, payee_id="grocer")
        if session is not None:
            acr, age = session
            body["session"] = {"acr": acr, "auth_time": iso(at - timedelta(seconds=age))}
        response = self.client.post("/score", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def feedback(self, event_id: str, outcome: str) -> None:
        response = self.client.post("/feedback", json={"event_id": event_id, "outcome": outcome})
        assert response.status_code == 200, response.text

    def audit(self) -> list[dict]:
        with closing(sqlite3.connect(self.settings.var / "profiles.db")) as db:
            return [json.loads(b) for (b,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]


def open_home(settings: Settings, policy) -> TestClient:
    client = TestClient(create_app(settings.model_copy(update={"policy": policy})))
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    return client


@pytest.fixture
def home(settings, request):
    policy = request.getfixturevalue(request.param) if request.param == "shadow_psd2" else request.param
    with open_home(settings, policy) as client:
        yield Home(client, settings)


# -- one event each, from a new user (low risk): the table ---------------------------------------------------

@dataclass(frozen=True)
class Case:
    preset: str
    action: str
    amount: float | None
    session: tuple[str, float] | None               # (acr, seconds since auth_time)
    decision: str
    acr: str
    max_age: int | None
    exemption: str | None = None
    currency: str = "EUR"


CASES = {
    "default: login needs aal1": Case("default", "login", None, None, "allow", "aal1", None),
    "default: dashboard needs aal1": Case("default", "view_dashboard", None, None, "allow", "aal1", None),
    "default: payment without a session steps up": Case("default", "payment", 10.0, None, "step_up", "aal2", 300),
    "default: payment, aal2 299 s ago": Case("default", "payment", 10.0, ("aal2", 299), "allow", "aal2", 300),
    "default: payment, aal2 301 s ago": Case("default", "payment", 10.0, ("aal2", 301), "step_up", "aal2", 300),
    "default: aal3 session covers aal2": Case("default", "change_email", None, ("aal3", 60), "allow", "aal2", 300),
    "default: aal1 session does not": Case("default", "change_email", None, ("aal1", 60), "step_up", "aal2", 300),
    "default: unknown action gets default": Case("default", "rename_pet", None, None, "step_up", "aal2", 300),
    "psd2: 20 EUR is low value": Case("psd2", "payment", 20.0, None, "allow", "aal1", None, "psd2_low_value"),
    "psd2: 30 EUR is still low value": Case("psd2", "payment", 30.0, None, "allow", "aal1", None, "psd2_low_value"),
    "psd2: 30.01 EUR needs SCA": Case("psd2", "payment", 30.01, None, "step_up", "aal2", 0),
    "psd2: low value only in EUR": Case("psd2", "payment", 20.0, None, "step_up", "aal2", 0, currency="USD"),
    "psd2: low-value credit transfer": Case("psd2", "transfer", 5.0, None, "allow", "aal1", None, "psd2_low_value"),
    "psd2: an earlier SCA is not one for this payment":
        Case("psd2", "payment", 50.0, ("aal2", 5), "step_up", "aal2", 0),
    "psd2: SCA made for this payment": Case("psd2", "payment", 50.0, ("aal2", 0), "allow", "aal2", 0),
    "psd2: add payee always needs SCA": Case("psd2", "add_payee", 1.0, ("aal2", 5), "step_up", "aal2", 0),
    "psd2: account info, SCA 179 days ago":
        Case("psd2", "view_dashboard", None, ("aal2", 179 * DAY), "allow", "aal2", 15552000),
    "psd2: account info, SCA 181 days ago":
        Case("psd2", "view_dashboard", None, ("aal2", 181 * DAY), "step_up", "aal2", 15552000),
    "hipaa: view PHI, aal2 10 min ago": Case("hipaa", "view_phi", None, ("aal2", 600), "allow", "aal2", 900),
    "hipaa: view PHI, aal2 16 min ago": Case("hipaa", "view_phi", None, ("aal2", 960), "step_up", "aal2", 900),
    "hipaa: view PHI, aal1 session": Case("hipaa", "view_phi", None, ("aal1", 10), "step_up", "aal2", 900),
    "hipaa: view PHI, no session": Case("hipaa", "view_phi", None, None, "step_up", "aal2", 900),
    "hipaa: export PHI, aal2 4 min ago": Case("hipaa", "export_phi", None, ("aal2", 240), "allow", "aal2", 300),
    "hipaa: export PHI, aal2 10 min ago": Case("hipaa", "export_phi", None, ("aal2", 600), "step_up", "aal2", 300),
    "hipaa: login needs aal1": Case("hipaa", "login", None, None, "allow", "aal1", None),
    "gdpr: export data, aal2 2 min ago": Case("gdpr", "export_data", None, ("aal2", 120), "allow", "aal2", 300),
    "gdpr: export data, aal2 6 min ago": Case("gdpr", "export_data", None, ("aal2", 360), "step_up", "aal2", 300),
    "gdpr: change password": Case("gdpr", "change_password", None, None, "step_up", "aal2", 300),
    "gdpr: change email, aal2 1 min ago": Case("gdpr", "change_email", None, ("aal2", 60), "allow", "aal2", 300),
    "gdpr: change MFA": Case("gdpr", "change_mfa", None, ("aal1", 5), "step_up", "aal2", 300),
    "gdpr: erase account": Case("gdpr", "delete_account", None, None, "step_up", "aal2", 300),
    "gdpr: view own data": Case("gdpr", "view_personal_data", None, None, "allow", "aal1", None),
}


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """One running service per preset; each table row is a new user, so rows do not affect each other."""
    opened = {}
    for preset in ("default", "psd2", "hipaa", "gdpr"):
        settings = Settings(home=tmp_path_factory.mktemp(preset), api_keys=f"tests:{API_KEY}",
                            sqlite_synchronous="NORMAL")
        client = open_home(settings, preset).__enter__()
        opened[preset] = Home(client, settings)
    yield opened
    for home in opened.values():
        home.client.__exit__(None, None, None)


@pytest.mark.parametrize("name", CASES)
def test_preset_table(homes, name):
    case = CASES[name]
    home = homes[case.preset]
    answer = home.score(name.replace(" ", "_").replace(":", "").replace(",", ""), 1, case.action, case.amount,
                        session=case.session, currency=case.currency)
    assert answer["risk_level"] == "low"
    got = (answer["decision"], answer["required_acr"], answer["max_age"], answer["exemption"])
    assert got == (case.decision, case.acr, case.max_age, case.exemption)
    assert answer["policy_version"] == f"{case.preset}@{2 if case.preset == 'default' else 1}" and answer["amr"] == ["rba"]
    if case.decision == "step_up":
        assert f'acr_values="{case.acr}"' in answer["challenge"] and f"max_age={case.max_age}" in answer["challenge"]


# -- PSD2 low value (RTS Art. 16): counters since the last SCA ---------------------------------------------

def _at(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_low_value_stops_after_five_payments_until_sca(home):
    _history(home, "payment", 1_000, 500)             # fraud rate 33 %: no TRA, only low value
    got = [home.score("ann", n, "payment", 1.0, at=_at(n))["exemption"] for n in range(6)]
    assert got == ["psd2_low_value"] * 5 + [None]
    sixth = home.score("ann", 6, "payment", 1.0, at=_at(6))
    assert sixth["decision"] == "step_up" and sixth["required_acr"] == "aal2"
    home.feedback("ann-6", "step_up_passed")                       # the SCA for that payment
    again = home.score("ann", 7, "payment", 1.0, at=_at(7))
    assert (again["decision"], again["exemption"]) == ("allow", "psd2_low_value")


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_low_value_stops_at_100_eur_cumulative(home):
    _history(home, "payment", 1_000, 500)             # fraud rate 33 %: no TRA, only low value
    for n in range(3):
        assert home.score("bo", n, "payment", 30.0, at=_at(n))["exemption"] == "psd2_low_value"
    over = home.score("bo", 3, "payment", 10.01, at=_at(3))               # 100.01 > 100
    assert (over["decision"], over["exemption"]) == ("step_up", None)
    exact = home.score("bo", 4, "payment", 10.0, at=_at(4))              # 100.00: allowed
    assert (exact["decision"], exact["exemption"]) == ("allow", "psd2_low_value")
    assert home.score("bo", 5, "payment", 0.01, at=_at(5))["exemption"] is None


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_a_session_that_passed_sca_restarts_the_counters(home):
    _history(home, "payment", 1_000, 500)             # fraud rate 33 %: no TRA, only low value
    for n in range(5):
        home.score("cy", n, "payment", 20.0, at=_at(n))
    assert home.score("cy", 5, "payment", 1.0, at=_at(5))["exemption"] is None
    # SCA at 5 min 30 s (e.g. at login): later payments start a new count, older SCAs do not
    stale = home.score("cy", 6, "payment", 1.0, at=_at(6), session=("aal2", 60 * 60))
    assert stale["exemption"] is None
    fresh = home.score("cy", 7, "payment", 20.0, at=_at(7), session=("aal2", 90))
    assert (fresh["decision"], fresh["exemption"]) == ("allow", "psd2_low_value")
    counted = [home.score("cy", n, "payment", 20.0, at=_at(n), session=("aal2", 90 + 60 * (n - 7)))["exemption"]
               for n in range(8, 13)]
    assert counted == ["psd2_low_value"] * 4 + [None]                 # 5 x 20 = 100, the sixth needs SCA


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_no_exemption_unless_the_risk_is_low(home):
    for n in range(10):
        home.score("dee", f"l{n}", "login", at=T0 - timedelta(days=10 - n))
    away = home.score("dee", "away", "payment", 5.0, ip=US_IP, user_agent=SAFARI_IPHONE, device_id="phone-9")
    assert away["risk_level"] in ("medium", "high")
    assert (away["decision"], away["exemption"]) == ("step_up", None)


# -- PSD2 transaction risk analysis (RTS Art. 18): thresholds from the fraud rate ----------------------------

def _history(home: Home, action: str, legit: float, fraud: float, days_ago: float = 10, fraud_days_ago: float = 10):
    """Executed payments: a passed SCA makes one legit, a confirmed fraud the other."""
    home.score("volume", 1, action, legit, at=T0 - timedelta(days=days_ago))
    home.feedback("volume-1", "step_up_passed")
    if fraud:
        home.score("mallory", 1, action, fraud, at=T0 - timedelta(days=fraud_days_ago))
        home.feedback("mallory-1", "confirmed_fraud")


TRA = [  # action, legit volume, fraud value, amount paid, exemption expected
    ("payment", 100_000, 10, 500.0, "psd2_tra"),          # 0.0100 % <= 0.01 %: up to 500
    ("payment", 100_000, 10, 500.01, None),
    ("payment", 100_000, 50, 250.0, "psd2_tra"),          # 0.05 % <= 0.06 %: up to 250
    ("payment", 100_000, 50, 251.0, None),
    ("payment", 9_987, 13, 100.0, "psd2_tra"),            # exactly 0.13 %: up to 100
    ("payment", 9_987, 13, 100.5, None),
    ("payment", 100_000, 140, 31.0, None),                # 0.14 % > 0.13 %: no TRA at all
    ("transfer", 100_000, 5, 500.0, "psd2_tra"),          # 0.005 %: up to 500
    ("transfer", 100_000, 10, 250.0, "psd2_tra"),         # 0.01 %: up to 250
    ("transfer", 100_000, 10, 260.0, None),
    ("transfer", 100_000, 15, 100.0, "psd2_tra"),         # 0.015 %: up to 100
    ("transfer", 100_000, 20, 31.0, None),                # 0.02 % > 0.015 %
    ("payment", 100_000, 0, 500.0, "psd2_tra"),           # no fraud at all
]


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
@pytest.mark.parametrize("action,legit,fraud,amount,expected", TRA)
def test_tra_threshold_follows_the_fraud_rate(home, action, legit, fraud, amount, expected):
    _history(home, action, legit, fraud)
    answer = home.score("paula", 1, action, amount)
    assert answer["risk_level"] == "low"
    assert answer["exemption"] == expected
    assert answer["decision"] == ("allow" if expected else "step_up")


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_tra_needs_payments_to_measure(home):
    assert home.score("paula", 1, "payment", 31.0)["exemption"] is None


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
@pytest.mark.parametrize("fraud_days_ago,expected", [(89, None), (91, "psd2_tra")])
def test_tra_fraud_rate_counts_the_last_90_days_of_event_time(home, fraud_days_ago, expected):
    _history(home, "payment", 100_000, 1_000, days_ago=30, fraud_days_ago=fraud_days_ago)
    assert home.score("paula", 1, "payment", 400.0)["exemption"] == expected


@pytest.mark.parametrize("home", ["psd2"], indirect=True)
def test_fraud_confirmed_later_withdraws_the_exemption(home):
    _history(home, "payment", 100_000, 0)
    assert home.score("paula", 1, "payment", 400.0)["exemption"] == "psd2_tra"
    home.score("mallory", 2, "payment", 200.0, at=T0 - timedelta(days=1))
    home.feedback("mallory-2", "confirmed_fraud")                        # 0.2 %: no TRA any more
    assert home.score("paula", 2, "payment", 400.0, at=_at(1))["exemption"] is None


# -- shadow mode ------------------------------------------------------------------------------------------

@pytest.fixture
def shadow_psd2(tmp_path):
    path = tmp_path / "psd2-shadow.yaml"
    path.write_text((PRESETS_DIR / "psd2.yaml").read_text().replace("version: 1", "version: 1-shadow\nshadow: true"))
    return path


@pytest.mark.parametrize("home", ["shadow_psd2"], indirect=True)
def test_shadow_preset_answers_allow_and_records_what_it_would_have_done(home):
    _history(home, "payment", 1_000, 500)             # fraud rate 33 %: no TRA, only low value
    big = home.score("eve", 1, "payment", 80.0)
    assert (big["decision"], big["shadow_decision"], big["challenge"]) == ("allow", "step_up", None)
    assert big["policy_version"] == "psd2@1-shadow"
    # the shadowed payment went through without SCA, so it counts towards the low-value limit
    small = home.score("eve", 2, "payment", 25.0, at=_at(1))
    assert (small["decision"], small["shadow_decision"], small["exemption"]) == ("allow", "step_up", None)
    records = [r for r in home.audit() if r["kind"] == "score"][2:]         # after the history
    assert [(r["decision"], r["shadowed"], r["shadow_decision"]) for r in records] == [
        ("allow", True, "step_up"), ("allow", True, "step_up")]


def test_hipaa_audits_every_access(settings):
    with open_home(settings, "hipaa") as client:
        home = Home(client, settings)
        answers = [home.score("dr-house-17", n, action, session=session, at=_at(n)) for n, (action, session) in enumerate(
            [("view_phi", ("aal2", 60)), ("view_phi", None), ("export_phi", ("aal2", 600)), ("view_phi", ("aal2", 10))])]
    records = [r for r in home.audit() if r["kind"] == "score"]
    assert [(r["action"], r["decision"]) for r in records] == [(a, x["decision"]) for a, x in zip(
        ("view_phi", "view_phi", "export_phi", "view_phi"), answers)]
    assert [x["decision"] for x in answers] == ["allow", "step_up", "step_up", "allow"]
    assert all(r["policy_version"] == "hipaa@1" and "dr-house-17" not in json.dumps(r) for r in records)


def test_the_fraud_rate_is_read_off_the_event_loop(settings):
    """The 90-day scan of payments behind PSD2 TRA runs on a store thread, read before deciding:
    the event loop never waits on it, and the exemption still follows the rate."""
    import asyncio

    from riskengine.home import open_engine

    psd2 = settings.model_copy(update={"policy": "psd2"})
    engine = open_engine(psd2)
    backend = engine.store.inner.backend
    read, on_loop = backend.payment_totals, []

    def recorded(*query):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return read(*query)

    backend.payment_totals = recorded
    with TestClient(create_app(psd2, engine=engine)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        home = Home(client, psd2)
        _history(home, "payment", 100_000, 10)
        assert home.score("paula", 1, "payment", 500.0)["exemption"] == "psd2_tra"
        assert home.score("paula", 2, "payment", 500.01, at=_at(1))["exemption"] is None
    assert on_loop and not any(on_loop)
