"""Issue 17, the rest: a ``tenants`` condition in rules (over HTTP with two tenants' keys); lists as
model signals (``anonymizer_network`` in FEATURES, learnt and explained; an older model without it
still loads and scores); ``travel_exempt`` networks give no travel signal; the psd2 preset's
fallback; recorded ``factors: []`` replays as none enrolled (feedback and whatif)."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from riskengine import cli
from riskengine.api import create_app
from riskengine.engine import Engine
from riskengine.home import open_engine
from riskengine.enrich import Enricher
from riskengine.events import event_from_request, event_to_request, tenant_key
from riskengine.features import BY_NAME, FEATURE_NAMES, MONOTONIC, USER_MESSAGES, Context, Signals, extract
from riskengine.lab import training, whatif
from riskengine.policy.decide import LIST_USER_MESSAGES, Policy, Seen, When
from riskengine.policy.file import PRESETS_DIR, PolicyError, load_policy, parse_policy
from riskengine.profiles import UserProfile
from riskengine.scoring import registry as registry_module
from riskengine.scoring.model import RiskModel, StatisticalScorer, TrainedScorer
from riskengine.scoring.registry import ModelRefused, ModelRegistry, read_key, sign
from riskengine.settings import Settings
from riskengine.stores import memory_store
from tests.conftest import CHROME_WIN, OSLO_IP, SYDNEY_IP, T0, event, iso

KEYS = "acme-app:acme-key:acme,beta-app:beta-key:beta,plain-app:plain-key"
ACME, BETA, PLAIN = ({"Authorization": f"Bearer {k}"} for k in ("acme-key", "beta-key", "plain-key"))
HOSTING_IP = "198.51.100.7"

TENANT_RULES = """\
name: tenants
version: 1
actions:
  login: {requires: aal1}
  export_data: {requires: aal2, max_age: 300}
rules:
  - name: acme-no-exports
    when: {tenants: [acme], actions: [export_data]}
    then: {decision: deny}
  - name: default-tenant-logins
    when: {tenants: [default], actions: [login]}
    then: {decision: step_up, level: aal2}
"""


def write_lists(folder: Path, **lists: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in lists.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def service(tmp_path: Path, policy: str | Path | None = None, lists: Path | None = None, keys: str = KEYS):
    if isinstance(policy, str) and "\n" in policy:
        (tmp_path / "policy.yaml").write_text(policy)
        policy = tmp_path / "policy.yaml"
    settings = Settings(home=tmp_path, api_keys=SecretStr(keys), policy=policy, lists=lists,
                        sqlite_synchronous="NORMAL")
    engine = open_engine(settings)
    return TestClient(create_app(settings, engine=engine)), engine, settings


def post(client: TestClient, headers: dict, event_id: str, minutes: float = 0, **body) -> dict:
    request = {"event_id": event_id, "user_id": "alice", "action": "login", "ip": OSLO_IP, "user_agent": CHROME_WIN,
               "device_id": "laptop-1", "timestamp": iso(T0 + timedelta(minutes=minutes)), **body}
    response = client.post("/score", headers=headers, json=request)
    assert response.status_code == 200, response.text
    return response.json()


# -- 1. tenants ---------------------------------------------------------------------------------

def test_a_tenants_condition_matches_the_events_tenant():
    acme = event(1, user=tenant_key("acme", "alice"))
    plain = event(2, user="alice")
    when = When(tenants=("acme",))
    assert (when.matches(acme, 0.1, "low", (), Seen()), when.matches(plain, 0.1, "low", (), Seen())) == (True, False)
    assert When(tenants=("default",)).matches(plain, 0.1, "low", (), Seen())


def test_rules_for_one_tenant_decide_only_that_tenants_events_over_http(tmp_path):
    client, engine, settings = service(tmp_path, TENANT_RULES)
    with client:
        acme = post(client, ACME, "x-1", action="export_data")
        beta = post(client, BETA, "x-1", action="export_data")      # same ids, another tenant
        assert (acme["decision"], acme["rule"]) == ("deny", "acme-no-exports")
        assert (beta["decision"], beta["rule"], beta["required_acr"]) == ("step_up", None, "aal2")
        plain = post(client, PLAIN, "l-1", minutes=1)
        acme_login = post(client, ACME, "l-1", minutes=1)
        assert (plain["decision"], plain["rule"]) == ("step_up", "default-tenant-logins")
        assert (acme_login["decision"], acme_login["rule"]) == ("allow", None)
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        scores = [json.loads(b) for (b,) in db.execute("SELECT body FROM audit ORDER BY chain, seq")]
    decided = {(r.get("tenant", "default"), r.get("rule")) for r in scores if r["kind"] == "score"}
    assert ("acme", "acme-no-exports") in decided and ("default", "default-tenant-logins") in decided
    assert ("beta", "acme-no-exports") not in decided


@pytest.mark.parametrize("when, where, reason", [
    ("{tenants: ['']}", "rules[0].when.tenants[0]", "must be a tenant name"),
    ("{tenants: [1]}", "rules[0].when.tenants[0]", "must be a tenant name as API keys give it"),
    ("{tenants: acme}", "rules[0].when.tenants", "must be a list"),
    ("{tenants: []}", "rules[0].when.tenants", "must be a non-empty list"),
    ("{tenants: [\"a\\tb\"]}", "rules[0].when.tenants[0]", "printable"),
])
def test_a_broken_tenants_condition_is_named_by_file_field_and_reason(when, where, reason):
    body = f"name: p\nversion: 1\nrules:\n  - {{name: a, when: {when}, then: {{decision: deny}}}}\n"
    with pytest.raises(PolicyError) as caught:
        parse_policy(body, "broken.yaml")
    assert any(line.startswith(f"broken.yaml {where}: ") and reason in line for line in caught.value.errors), \
        caught.value.errors


def test_policy_check_names_the_file_rule_field_and_reason_for_tenants(tmp_path, capsys):
    broken = tmp_path / "shop.yaml"
    broken.write_text("name: shop\nversion: 1\nrules:\n  - name: ok\n    then: {decision: allow}\n"
                      "  - name: acme-only\n    when: {tenants: [acme, '']}\n    then: {decision: deny}\n")
    assert cli.main(["policy", "check", str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"{broken} rules[1].when.tenants[1]: must be a tenant name" in err, err
    good = tmp_path / "good.yaml"
    good.write_text(TENANT_RULES)
    assert cli.main(["policy", "check", str(good)]) == 0
    assert "2 rules" in capsys.readouterr().out


# -- 2. anonymizer_network: a model signal ------------------------------------------------------

def test_anonymizer_network_is_a_feature_that_only_raises_risk():
    feature = BY_NAME["anonymizer_network"]
    assert feature.code == "anonymizer_network" and feature.direction == 1
    assert MONOTONIC[FEATURE_NAMES.index("anonymizer_network")] == 1
    assert USER_MESSAGES["anonymizer_network"] == LIST_USER_MESSAGES["anonymizer_network"]
    assert not any(word in USER_MESSAGES["anonymizer_network"] for word in ("hosting", "list", "AS"))


def test_the_feature_reads_anonymizer_lists_from_a_real_folder(tmp_path):
    folder = write_lists(tmp_path / "lists", hosting=f"# role: anonymizer\n{HOSTING_IP}\nAS16509\n",
                         office=f"# role: allow\n{OSLO_IP}\n")
    enricher = Enricher(lists=folder)
    on = extract(enricher.enrich(event(1, ip=HOSTING_IP)), UserProfile("alice"), Context())
    off = extract(enricher.enrich(event(2, ip=OSLO_IP)), UserProfile("alice"), Context())
    assert (on.values["anonymizer_network"], off.values["anonymizer_network"]) == (1.0, 0.0)
    assert on.message("anonymizer_network") == "the address is on anonymizer list hosting"


def test_the_statistical_scorer_weighs_it_alone_below_a_step_up_and_with_novelty_above():
    zeros = dict.fromkeys(FEATURE_NAMES, 0.0) | {"amount_zscore": math.nan}
    scorer = StatisticalScorer()
    plain = scorer.score(Signals(zeros, {})).risk
    anonymous = scorer.score(Signals(zeros | {"anonymizer_network": 1.0}, {}))
    both = scorer.score(Signals(zeros | {"anonymizer_network": 1.0, "new_device": 1.0}, {})).risk
    assert plain == 0.0 < anonymous.risk < 0.3 <= both
    assert anonymous.contributions == {"anonymizer_network": 3.0}
    assert scorer.score(Signals(zeros | {"anonymizer_network": math.nan}, {})).risk == 0.0   # recorded before it


def test_the_service_scores_and_explains_the_signal_once_and_records_it(tmp_path):
    folder = write_lists(tmp_path / "lists", hosting=f"# role: anonymizer\n{HOSTING_IP}\n")
    client, engine, settings = service(tmp_path, lists=folder)
    with client:
        answer = post(client, PLAIN, "a-1", ip=HOSTING_IP)
        clean = post(client, PLAIN, "a-2", minutes=60)
    codes = [r["code"] for r in answer["reasons"]]
    assert codes.count("anonymizer_network") == 1
    reason = next(r for r in answer["reasons"] if r["code"] == "anonymizer_network")
    assert reason["weight"] > 0 and reason["message"] == "the address is on anonymizer list hosting"
    assert reason["user_message"] == USER_MESSAGES["anonymizer_network"]
    assert answer["risk_score"] > clean["risk_score"]
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        features = {e: json.loads(f) for e, f in db.execute("SELECT event_id, features FROM events")}
    assert (features["a-1"]["anonymizer_network"], features["a-2"]["anonymizer_network"]) == (1, 0)


def test_training_replays_with_the_services_lists(tmp_path):
    folder = write_lists(tmp_path / "lists", hosting=f"# role: anonymizer\n{HOSTING_IP}\n")
    settings = Settings(home=tmp_path, lists=folder)
    rows = [{"event_id": f"t-{n}", "user_id": "bob", "action": "login", "ip": ip, "label": label,
             "timestamp": iso(T0 + timedelta(hours=n)), "user_agent": CHROME_WIN}
            for n, (ip, label) in enumerate([(OSLO_IP, 0), (HOSTING_IP, 1), (OSLO_IP, 0)])]
    column = FEATURE_NAMES.index("anonymizer_network")
    served = training.backfill(rows, enricher=cli._enricher(settings))
    assert served.X[:, column].tolist() == [0.0, 1.0, 0.0]
    assert training.backfill(rows).X[:, column].tolist() == [0.0, 0.0, 0.0]    # no lists: nothing to learn


def _fake_rows(n: int = 3000, seed: int = 0, columns: tuple[str, ...] = FEATURE_NAMES):
    """Rows where attacks come from anonymizing networks far more often than logins do."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, len(columns)))
    y = (rng.random(n) < 0.1).astype(int)
    X[:, columns.index("new_device")] = rng.random(n) < np.where(y == 1, 0.6, 0.1)
    if "anonymizer_network" in columns:
        X[:, columns.index("anonymizer_network")] = rng.random(n) < np.where(y == 1, 0.7, 0.02)
    return X, y


def test_a_trained_model_uses_the_signal_and_names_it(tmp_path):
    X, y = _fake_rows()
    model = RiskModel(max_iter=30, monotonic_cst=MONOTONIC).fit(X, y)
    registry = ModelRegistry(tmp_path / "models")
    entry = registry.register(model)
    scorer = TrainedScorer.loaded(*registry.load(entry.version))
    zeros = dict.fromkeys(FEATURE_NAMES, 0.0)
    plain, anonymous = (scorer.score(Signals(zeros | {"anonymizer_network": v}, {})) for v in (0.0, 1.0))
    assert anonymous.risk > plain.risk
    assert anonymous.contributions.get("anonymizer_network", 0) > 0


def test_an_older_model_without_the_feature_still_loads_and_scores(tmp_path, monkeypatch):
    old_names = tuple(n for n in FEATURE_NAMES if n != "anonymizer_network")
    X_old, y = _fake_rows(columns=old_names)
    model = RiskModel(max_iter=20).fit(X_old, y)
    registry = ModelRegistry(tmp_path / "models")
    with monkeypatch.context() as patch:                          # registered by an engine before the feature
        patch.setattr(registry_module, "FEATURE_NAMES", old_names)
        entry = registry.register(model, promote=True)
    assert entry.metadata["feature_names"] == list(old_names)
    compiled, loaded = registry.load(entry.version)
    scorer = TrainedScorer.loaded(compiled, loaded)
    X_now = np.insert(X_old[:200], FEATURE_NAMES.index("anonymizer_network"), 1.0, axis=1)
    assert X_now.shape[1] == len(FEATURE_NAMES)
    np.testing.assert_allclose(scorer.predict(X_now), model.predict_proba(X_old[:200])[:, 1], rtol=0, atol=1e-9)
    row = dict(zip(FEATURE_NAMES, X_now[0].tolist()))
    score = scorer.score(Signals(row, {}))
    assert score.risk == pytest.approx(model.predict_proba(X_old[:1])[0, 1], abs=1e-9)
    assert "anonymizer_network" not in score.contributions
    # and the service serves it
    settings = Settings(home=tmp_path, api_keys=SecretStr(KEYS), sqlite_synchronous="NORMAL")
    with TestClient(create_app(settings)) as client:
        assert post(client, PLAIN, "o-1", ip=HOSTING_IP)["model_version"] == entry.version


def test_a_model_naming_a_feature_this_engine_lacks_is_refused(tmp_path):
    X, y = _fake_rows()
    registry = ModelRegistry(tmp_path / "models")
    entry = registry.register(RiskModel(max_iter=5).fit(X, y))
    meta = json.loads((entry.path / "metadata.json").read_text())
    meta["feature_names"][0] = "moon_phase"
    meta["signature"] = sign(read_key(registry.key_file), meta)
    (entry.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelRefused, match="other features.*unknown: moon_phase"):
        registry.load(entry.version)


# -- 3. travel_exempt networks: no travel signal ------------------------------------------------

def _journey(tmp_path: Path, lists: Path | None) -> list[dict]:
    """Oslo, Sydney 30 minutes later, Oslo again 30 minutes after that; step-ups passed."""
    client, engine, settings = service(tmp_path, lists=lists)
    answers = []
    with client:
        for n, (ip, minutes) in enumerate([(OSLO_IP, 0), (SYDNEY_IP, 30), (OSLO_IP, 60)]):
            answer = post(client, PLAIN, f"j-{n}", minutes=minutes, ip=ip)
            if answer["decision"] == "step_up":
                assert client.post("/feedback", headers=PLAIN, json={
                    "event_id": answer["event_id"], "outcome": "step_up_passed"}).status_code == 200
            answers.append(answer)
    with closing(sqlite3.connect(settings.var / "profiles.db")) as db:
        features = {e: json.loads(f) for e, f in db.execute("SELECT event_id, features FROM events")}
    return [answer | {"features": features[f"j-{n}"]} for n, answer in enumerate(answers)]


def test_a_travel_exempt_network_gives_no_impossible_travel(tmp_path):
    control = _journey(tmp_path / "control", None)
    assert [a["features"]["impossible_travel"] for a in control] == [0, 1, 1]
    assert "impossible_travel" in [r["code"] for r in control[1]["reasons"]]

    folder = write_lists(tmp_path / "lists", satellite=f"# role: travel_exempt\n{SYDNEY_IP}/32\n")
    exempt = _journey(tmp_path / "exempt", folder)
    assert [a["features"]["impossible_travel"] for a in exempt] == [0, 0, 0]
    assert exempt[1]["features"]["kmh_from_last_success"] is None         # no journey measured (NaN)
    assert exempt[2]["features"]["km_from_last_success"] == 0             # measured from Oslo, not Sydney
    assert all(r["code"] not in ("impossible_travel", "geo_velocity") for a in exempt for r in a["reasons"])


# -- 4. the psd2 preset's fallback -------------------------------------------------------------

PSD2 = load_policy(PRESETS_DIR / "psd2.yaml")


@pytest.mark.parametrize("action", ["payment", "transfer", "add_payee"])
def test_psd2_denies_a_payer_with_no_factor_that_can_make_sca(action):
    def decide(factors):
        return PSD2.decide(event(1, action=action, amount=250.0, currency="EUR", factors=factors), 0.1, (), "m")
    assert (decide(("email",)).decision, decide(("email",)).fallback) == ("deny", "deny")
    assert (decide(()).decision, decide(()).fallback) == ("deny", "deny")
    stepped = decide(("email", "totp"))
    assert (stepped.decision, stepped.factors, stepped.fallback) == ("step_up", ("totp",), None)
    assert decide(None).decision == "step_up"                        # factors not sent: as before


def test_psd2_fallback_over_http(tmp_path):
    client, engine, _ = service(tmp_path, "psd2")
    with client:
        denied = post(client, PLAIN, "p-1", action="payment", amount=250, currency="EUR", factors=[])
        sms = post(client, PLAIN, "p-2", minutes=1, action="payment", amount=250, currency="EUR", factors=["sms"])
    assert (denied["decision"], denied["fallback"], denied["factors"], denied["challenge"]) == ("deny", "deny", [], None)
    assert (sms["decision"], sms["factors"], sms["required_acr"]) == ("step_up", ["sms"], "aal2")


# -- 5. recorded factors: [] replays as none enrolled -------------------------------------------

def test_factors_round_trip_empty_as_empty_and_absent_as_absent():
    none_enrolled = event(1, action="payment", factors=())
    body = event_to_request(none_enrolled)
    assert body["factors"] == []
    assert event_from_request(json.loads(json.dumps(body))).factors == ()
    assert "factors" not in event_to_request(event(2, action="payment"))
    assert event_from_request(event_to_request(event(2, action="payment"))).factors is None
    assert event_from_request(event_to_request(event(3, factors=("totp",)))).factors == ("totp",)


def test_the_service_records_factors_empty_and_feedback_reads_them_back(tmp_path):
    client, engine, _ = service(tmp_path, "psd2")
    with client:
        answer = post(client, PLAIN, "f-1", action="change_email", factors=[])
        assert answer["decision"] == "step_up"                          # change_email has no fallback
        stored = engine.store.find_event("f-1")
        assert stored.request["factors"] == []
        assert event_from_request(stored.request).factors == ()
        assert client.post("/feedback", headers=PLAIN,
                           json={"event_id": "f-1", "outcome": "step_up_failed"}).status_code == 200


def test_whatif_replays_recorded_requests_and_applies_the_fallback(tmp_path):
    engine = Engine(memory_store(), Enricher(), StatisticalScorer(), Policy())
    events = [event(n, action="payment", at=T0 + timedelta(minutes=n), amount=250.0, currency="EUR",
                    factors=factors) for n, factors in enumerate([(), None, ("email",), ("totp",)])]
    recorded = []
    for e in events:
        assert asyncio.run(engine.score(e)).decision == "step_up"                    # the default policy has no fallback
        recorded.append(engine.store.find_event(e.event_id).request)
    assert [("factors" in r, r.get("factors")) for r in recorded] == \
        [(True, []), (False, None), (True, ["email"]), (True, ["totp"])]
    replayed = whatif.replay(recorded, whatif.Setup("current", StatisticalScorer(), Policy()),
                             whatif.Setup("candidate", StatisticalScorer(), PSD2))
    assert replayed["current_decision"].tolist() == ["step_up"] * 4
    assert replayed["candidate_decision"].tolist() == ["deny", "step_up", "deny", "step_up"]
    engine.close()
