"""Policies are data: typed validation (pydantic, strict, closed) that names file, field and reason
for every wrong type, refuses NaN and infinities, never escapes as a traceback (CLI) or a 500 (reload
over HTTP), and a published JSON Schema that is up to date and that the presets satisfy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.cli import main
from riskengine.policy.file import PRESETS, PRESETS_DIR, PolicyError, load_policy, parse_policy
from riskengine.policy.schema import SCHEMA_FILE, json_schema_text
from riskengine.settings import Settings
from tests.conftest import API_KEY, CHROME_WIN, OSLO_IP, T0, iso
from tests.test_policy import small

HEADER = "name: my\nversion: 1\n"
TRA = ("exemptions:\n  t:\n    type: transaction_risk_analysis\n    window_days: {window}\n    payment_types:\n"
       "      card: {{actions: [payment], reference_rates: [{{fraud_rate: {rate}, up_to: {up_to}}}]}}\n")
NOT_FINITE = [
    ("deny_at: {x}\n", "deny_at"),
    ("actions:\n  payment: {requires: aal2, deny_at: {x}}\n", "actions.payment.deny_at"),
    ("bands:\n  medium: {from: {x}}\n", "bands.medium.from"),
    ("exemptions:\n  lv: {type: low_value, max_amount: {x}}\n", "exemptions.lv.max_amount"),
    ("exemptions:\n  lv: {type: low_value, max_cumulative_amount: {x}}\n", "exemptions.lv.max_cumulative_amount"),
    (TRA.format(window=90, rate=0.001, up_to="{x}"), "exemptions.t.payment_types.card.reference_rates[0].up_to"),
    (TRA.format(window="{x}", rate=0.001, up_to=100), "exemptions.t.window_days"),
    ("audit: {min_retention_days: {x}}\n", "audit.min_retention_days"),
]


@pytest.mark.parametrize("x", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("body,field", NOT_FINITE, ids=[f for _, f in NOT_FINITE])
def test_nan_and_infinities_are_refused_naming_the_field(body, field, x):
    with pytest.raises(PolicyError) as refused:
        parse_policy(HEADER + body.replace("{x}", x), "my.yaml")
    shown = {".nan": ".nan", ".NaN": ".nan", ".inf": ".inf", "-.inf": "-.inf"}[x]
    assert refused.value.errors == [f"my.yaml {field}: must be a finite number, got {shown}"]


def test_a_nan_fraud_rate_is_refused_too():
    with pytest.raises(PolicyError, match=r"reference_rates\[0\].fraud_rate: must be a share .* got \.nan"):
        parse_policy(HEADER + TRA.format(window=90, rate=".nan", up_to=100), "my.yaml")


WRONG_TYPES = [
    ("actions:\n  payment: {requires: [aal2]}\n", "actions.payment.requires: expected a level name, got a list"),
    ("actions:\n  payment: {requires: {aal2: 1}}\n", "actions.payment.requires: expected a level name, got a mapping"),
    ("default_action: {requires: 2}\n", "default_action.requires: expected a level name, got 2"),
    ("bands:\n  high: {from: 0.5, at_least: [aal2]}\n", "bands.high.at_least: expected a level name, got a list"),
    ("exemptions:\n  lv: {type: low_value, sca_level: [aal2]}\n",
     "exemptions.lv.sca_level: expected a level name, got a list"),
    ("deny_at: '0.9'\n", "deny_at: must be a number, got '0.9'"),
    ("deny_at: true\n", "deny_at: must be a number, got True"),
    ("shadow: 'yes'\n", "shadow: must be true or false, got 'yes'"),
    ("actions: [payment]\n", "actions: must be a mapping, got a list"),
    ("actions:\n  payment: aal2\n", "actions.payment: must be a mapping, got 'aal2'"),
    ("levels:\n  - {name: a, max_age: '300'}\n", "levels[0].max_age: must be whole seconds (an integer), got '300'"),
    ("levels:\n  - {name: a, acr: [1]}\n", "levels[0].acr: must be an acr value or a list of them, got [1]"),
    ("exemptions:\n  lv: {type: low_value, risk_levels: [huge]}\n",
     "exemptions.lv.risk_levels: must be a list of low, medium, high, got ['huge']"),
    ("exemptions:\n  lv: {type: low_value, currency: 978}\n",
     "exemptions.lv.currency: must be an ISO 4217 code such as EUR, got 978"),
    ("version: 2026-03-01\n", "version: must be a number or a short text without '@' or spaces, got 2026-03-01"),
    ("actions:\n  1: {requires: aal2}\n", "actions.1: action names are 1-64 letters, digits, '_', '.', ':' or '-', got 1"),
    ("description: [a]\n", "description: must be a string, got a list"),
]


@pytest.mark.parametrize("body,line", WRONG_TYPES, ids=[line.split(":")[0] for _, line in WRONG_TYPES])
def test_every_wrong_type_is_named_with_file_field_and_reason(body, line):
    text = body if body.startswith("version") else HEADER + body
    with pytest.raises(PolicyError) as refused:
        parse_policy(("name: my\n" + text) if body.startswith("version") else text, "my.yaml")
    assert f"my.yaml {line}" in refused.value.errors, refused.value.errors


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _leaves(value, (*path, n))
    yield path


def _replaced(node, path, value):
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replaced(node[path[0]], path[1:], value)
    return copy


@pytest.mark.parametrize("preset", PRESETS)
def test_any_value_anywhere_in_a_preset_gives_a_policy_or_a_policy_error(preset):
    """Every field of every preset swapped for each kind of wrong value: parsed, or refused with lines
    that name the file; never another exception (which would be a traceback or a 500)."""
    document = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())
    wrong = [[], ["x"], {}, {"x": 1}, math.nan, math.inf, "text", True, None, 2 ** 70, -1, 0.5]
    refused = 0
    for path in {p for p in _leaves(document) if p}:
        for value in wrong:
            raw = yaml.safe_dump(_replaced(document, path, value))
            try:
                policy = parse_policy(raw, "mutant.yaml")
            except PolicyError as error:
                refused += 1
                assert error.errors and all(line.startswith("mutant.yaml") for line in error.errors), error.errors
            else:
                assert math.isfinite(policy.deny_at) and all(math.isfinite(b.start) for b in policy.bands)
    assert refused > 100


def test_policy_check_never_prints_a_traceback(tmp_path):
    files = {"list-level.yaml": HEADER + "actions:\n  payment: {requires: [aal2]}\n",
             "nan.yaml": HEADER + "deny_at: .nan\n",
             "deep.yaml": HEADER + "actions: " + "[" * 5000 + "]" * 5000 + "\n",
             "binary.yaml": "\x00\x01\x02",
             "top-list.yaml": "- 1\n- 2\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a-directory.yaml").mkdir()
    paths = [str(tmp_path / name) for name in (*files, "a-directory.yaml", "missing.yaml")]
    result = subprocess.run([sys.executable, "-m", "riskengine", "policy", "check", *paths],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{tmp_path / 'list-level.yaml'} actions.payment.requires: expected a level name, got a list" in result.stderr
    assert f"{tmp_path / 'nan.yaml'} deny_at: must be a finite number, got .nan" in result.stderr
    for path in paths:
        assert path in result.stderr


def test_a_broken_file_on_reload_keeps_the_old_policy_over_http(settings: Settings, tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(small(1))
    settings = settings.model_copy(update={"policy": path, "policy_check_interval": 0.0})
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"

        def score(n: int) -> dict:
            response = client.post("/score", json={"event_id": f"r-{n}", "user_id": "alice", "action": "checkout",
                                                   "ip": OSLO_IP, "user_agent": CHROME_WIN, "timestamp": iso(T0)})
            assert response.status_code == 200, response.text
            return response.json()

        assert score(1)["policy_version"] == "shop@1"
        path.write_text(small(2).replace("checkout: {requires: strong", "checkout: {requires: [strong]"))
        assert score(2)["policy_version"] == "shop@1"
        health = client.get("/health").json()
        assert health["policy_error"] == f"{path.name} actions.checkout.requires: expected a level name, got a list"
        path.write_text(small(3).replace("deny_at: 0.95", "deny_at: .nan"))
        assert score(3)["policy_version"] == "shop@1"
        assert client.get("/health").json()["policy_error"] == f"{path.name} deny_at: must be a finite number, got .nan"
        path.write_text(small(4))
        assert score(4)["policy_version"] == "shop@4" and "policy_error" not in client.get("/health").json()


def test_the_published_schema_is_up_to_date(capsys):
    assert SCHEMA_FILE.read_text() == json_schema_text(), "regenerate: riskengine policy schema > " + str(SCHEMA_FILE)
    assert main(["policy", "schema"]) == 0
    assert capsys.readouterr().out == SCHEMA_FILE.read_text()


@pytest.mark.parametrize("preset", PRESETS)
def test_the_presets_validate_against_the_published_schema(preset):
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    document = yaml.safe_load((PRESETS_DIR / f"{preset}.yaml").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)) == []
    load_policy(PRESETS_DIR / f"{preset}.yaml")


@pytest.mark.parametrize("change,where", [
    ({"deny_at": 2}, ["deny_at"]),
    ({"surprise": 1}, []),
    ({"actions": {"payment": {"requires": ["aal2"]}}}, ["actions", "payment", "requires"]),
    ({"actions": {"pay ment": {"requires": "aal2"}}}, ["actions"]),
    ({"actions": {"payment": {"requires": "aal2", "max_agee": 1}}}, ["actions", "payment"]),
])
def test_the_schema_refuses_in_an_editor_what_the_engine_refuses(change, where):
    schema = json.loads(SCHEMA_FILE.read_text())
    document = {**yaml.safe_load((PRESETS_DIR / "default.yaml").read_text()), **change}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert [list(e.absolute_path) for e in errors] == [where]
    with pytest.raises(PolicyError):
        parse_policy(yaml.safe_dump(document), "edited.yaml")
