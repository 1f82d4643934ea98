"""inputs.py: one canonical input. The strict RFC 3339 parser and the string and number rules, alone
and over HTTP through the real app (TestClient, real SQLite): each finding of issue 13 at the door."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from pydantic import SecretStr

from riskengine import inputs
from riskengine.api import create_app
from riskengine.api.schemas import ScoreRequest
from riskengine.inputs import format_timestamp, parse_timestamp, text_problem
from riskengine.settings import Settings
from tests.conftest import API_KEY, T0, iso
from tests.test_api import VALID, snapshot

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc

# -- the RFC 3339 parser ------------------------------------------------------------------------
ACCEPTED = {
    "2026-11-28T04:30:00Z": datetime(2026, 11, 28, 4, 30, tzinfo=UTC),
    "2026-11-28t04:30:00z": datetime(2026, 11, 28, 4, 30, tzinfo=UTC),
    "2026-11-28T04:30:00.5+01:00": datetime(2026, 11, 28, 3, 30, 0, 500000, tzinfo=UTC),
    "2026-11-28T04:30:00.123456789Z": datetime(2026, 11, 28, 4, 30, 0, 123456, tzinfo=UTC),   # 3.10 refused this
    "2026-11-28T04:30:00.1-00:00": datetime(2026, 11, 28, 4, 30, 0, 100000, tzinfo=UTC),
    "2024-02-29T23:59:59-23:59": datetime(2024, 3, 1, 23, 58, 59, tzinfo=UTC),
    "0001-01-01T00:00:00Z": datetime(1, 1, 1, tzinfo=UTC),
    "9999-12-31T23:59:59.999999Z": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
}
REFUSED = [
    "2026-W48-6T04:30:00Z",            # ISO week date (3.11+ accepted it)
    "2026-11-28T04:30:00+0100",        # offset without colon (3.11+ accepted it)
    "2026-11-28T04:30Z",               # no seconds
    "2026-11-28T24:00:00Z",            # hour 24
    "2026-02-30T00:00:00Z",            # February 30th
    "2025-02-29T00:00:00Z",            # not a leap year
    "2026-11-28T04:30:60Z",            # leap second: not representable
    "2026-11-28T04:30:00",             # no offset
    "2026-11-28 04:30:00Z",            # space
    "2026-11-28T04:30:00.Z",           # empty fraction
    "2026-11-28T04:30:00+24:00",       # offset hour
    "2026-11-28T04:30:00+01:60",       # offset minute
    "20261128T043000Z",                # basic format
    "2026-11-28",                      # date only
    " 2026-11-28T04:30:00Z",           # padding
    "2026-11-28T04:30:00Z\n",          # trailing newline
    "２０２６-11-28T04:30:00Z",         # non-ASCII digits
    "0001-01-01T00:00:00+01:00",       # before year 1 in UTC: OverflowError once
    "9999-12-31T23:59:59-01:00",       # after year 9999 in UTC: OverflowError once
    "0000-01-01T00:00:00Z",
    "",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_rfc3339_forms_are_accepted(text):
    assert parse_timestamp(text) == ACCEPTED[text]
    assert parse_timestamp(text).tzinfo is timezone.utc


@pytest.mark.parametrize("text", REFUSED)
def test_non_rfc3339_forms_are_refused_with_a_value_error(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_the_parser_is_the_same_on_every_python(monkeypatch):
    """Written out by hand: nothing in it looks at the interpreter's version or its ISO parser."""
    used = set(parse_timestamp.__code__.co_names)          # every global and attribute its code reads
    assert not used & {"version_info", "sys", "fromisoformat", "strptime"}, used
    before = {text: parse_timestamp(text) for text in ACCEPTED}
    monkeypatch.setattr(sys, "version_info", (3, 10, 0, "final", 0))
    assert {text: parse_timestamp(text) for text in ACCEPTED} == before
    for text in REFUSED:
        with pytest.raises(ValueError):
            parse_timestamp(text)


OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59)


@st.composite
def rfc3339(draw) -> tuple[str, datetime | None]:
    """A valid RFC 3339 string and the UTC time it means (None: outside years 1-9999 in UTC)."""
    local = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
    digits = draw(st.integers(0, 9))
    fraction = draw(st.text("0123456789", min_size=digits, max_size=digits))
    offset = draw(OFFSETS)
    zone = draw(st.sampled_from("Zz")) if offset == 0 and draw(st.booleans()) else \
        f"{'+' if offset >= 0 else '-'}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    date = f"{local.year:04d}-{local.month:02d}-{local.day:02d}"       # %Y does not pad years < 1000
    text = f"{date}{draw(st.sampled_from('Tt'))}{local:%H:%M:%S}{'.' + fraction if digits else ''}{zone}"
    micro = int(fraction.ljust(6, "0")[:6]) if digits else 0
    try:
        expected = (local.replace(microsecond=micro) - timedelta(minutes=offset)).replace(tzinfo=UTC)
    except OverflowError:
        expected = None
    return text, expected


@hsettings(max_examples=300, deadline=None)      # a loaded machine (CI shares 2 cores) is no parser regression
@given(rfc3339())
def test_every_accepted_timestamp_round_trips(case):
    text, expected = case
    if expected is None:
        with pytest.raises(ValueError):
            parse_timestamp(text)
        return
    parsed = parse_timestamp(text)
    assert parsed == expected and parsed.tzinfo is timezone.utc
    assert parse_timestamp(format_timestamp(parsed)) == parsed         # what we write, we read back


@st.composite
def broken_rfc3339(draw) -> str:
    """A valid timestamp made invalid in one of the ways clients get it wrong."""
    at = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2999, 12, 31)))
    iso_year, iso_week, iso_day = at.isocalendar()
    return draw(st.sampled_from([
        f"{iso_year:04d}-W{iso_week:02d}-{iso_day}T{at:%H:%M:%S}Z",              # week date
        f"{at:%Y-%m-%dT%H:%M:%S}+{draw(st.integers(0, 23)):02d}00",               # +HHMM
        f"{at:%Y-%m-%dT%H:%M}Z",                                                  # no seconds
        f"{at:%Y-%m-%d}T24:{at:%M:%S}Z",                                          # hour 24
        f"{at:%Y}-02-{draw(st.integers(30, 31))}T{at:%H:%M:%S}Z",                 # Feb 30/31
        f"{at:%Y-%m-%dT%H:%M:%S}",                                                # no offset
        f"{at:%Y-%m-%d}T{at:%H:%M:%S}.Z",                                         # empty fraction
    ]))


@hsettings(max_examples=200, deadline=None)
@given(broken_rfc3339())
def test_rfc3339_invalid_strings_are_refused(text):
    with pytest.raises(ValueError):
        parse_timestamp(text)


# -- strings: properties ---------------------------------------------------------------------------
SAFE = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=60).filter(
    lambda s: text_problem(s) is None)
FORBIDDEN = st.one_of(st.integers(0, 0x1F), st.integers(0x7F, 0x9F), st.integers(0xD800, 0xDFFF),
                      st.sampled_from([0x202E, 0x2066, 0x200F])).map(chr)
ID_FIELDS = ("event_id", "user_id", "device_id", "payee_id", "user_agent", "action", "session.acr",
             "attributes.k", "attributes.<key>", "ip", "currency")


def with_value(body: dict, field: str, value: str) -> dict:
    body = json.loads(json.dumps(body))
    if field == "attributes.<key>":
        body["attributes"] = {value: 1}
    elif "." in field:
        outer, inner = field.split(".")
        body[outer][inner] = value
    else:
        body[field] = value
    return body


@hsettings(max_examples=200, deadline=None)
@given(SAFE, st.sampled_from(["event_id", "user_id", "device_id", "payee_id", "user_agent", "session.acr",
                              "attributes.k", "attributes.<key>"]))
def test_any_accepted_id_survives_parsing_unchanged(value, field):
    """In pydantic's JSON mode and in Python mode alike (the service has used both)."""
    body = with_value(VALID, field, value)
    for request in (ScoreRequest.model_validate_json(json.dumps(body)), ScoreRequest.model_validate(body)):
        event = request.to_event(NOW)
        got = {"event_id": event.event_id, "user_id": event.user_id, "device_id": event.device_id,
               "payee_id": event.payee_id, "user_agent": event.user_agent, "session.acr": event.session.acr,
               "attributes.k": event.attributes.get("k"), "attributes.<key>": next(iter(event.attributes))}
        assert got[field] == value and got[field].encode("utf-8", "surrogatepass") == value.encode("utf-8")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app for the property tests over HTTP: refused requests change nothing, so examples share it."""
    settings = Settings(home=tmp_path_factory.mktemp("home"), api_keys=SecretStr(f"tests:{API_KEY}"),
                        sqlite_synchronous="NORMAL")
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        assert client.post("/score", json=VALID).status_code == 200
        yield client, settings


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=20), FORBIDDEN, st.text(max_size=20), st.sampled_from(ID_FIELDS))
def test_a_string_with_a_control_character_or_lone_surrogate_is_refused_naming_its_field(shared, before, bad, after,
                                                                                      field):
    client, settings = shared
    state = snapshot(settings)
    body = json.dumps(with_value(VALID, field, before + bad + after))    # ASCII: lone surrogates as \u escapes
    response = client.post("/score", content=body, headers={"content-type": "application/json"})
    named = {e["field"] for e in response.json()["detail"]}
    if any(0xD800 <= ord(c) <= 0xDFFF for c in bad):
        # the one parser is pydantic's JSON mode, which refuses a lone surrogate escape as malformed JSON
        assert response.status_code == 400 and named == {"body"}, response.text
    else:
        assert response.status_code == 422, response.text
        expected = "attributes" if field == "attributes.<key>" else field
        assert any(n == expected or n.startswith(expected + ".") for n in named), named
    assert snapshot(settings) == state


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SAFE, min_size=2, max_size=2, unique=True))
def test_distinct_ids_never_share_a_profile(shared, users):
    client, settings = shared
    for n, user in enumerate(users):
        body = {**VALID, "event_id": f"distinct-{hashlib.sha256(user.encode()).hexdigest()[:24]}-{n}", "user_id": user}
        assert client.post("/score", json=body).status_code == 200
    recorded = {row[1] for row in snapshot(settings)["events"]}          # (event_id, user_id, ...)
    assert set(users) <= recorded


# -- the findings of issue 13, each refused at the door ------------------------------------------
def far_future(body: dict) -> dict:
    return {**body, "timestamp": "9999-12-31T23:59:59Z"}


FINDINGS = [
    ("user_id", lambda b: {**b, "user_id": "alice\u0000"}),
    ("event_id", lambda b: {**b, "event_id": "seed\u0000"}),
    ("timestamp", far_future),
    ("timestamp", lambda b: {**b, "timestamp": "0001-01-01T00:00:00+01:00"}),
    ("session.auth_time", lambda b: {**b, "session": {"acr": "aal2", "auth_time": "9999-12-31T23:59:59-01:00"}}),
    ("session.auth_time", lambda b: {**b, "session": {"acr": "aal2", "auth_time": format_timestamp(
        datetime.now(UTC) + timedelta(hours=1))}}),
    ("attributes.big", lambda b: {**b, "attributes": {"big": 2**70}}),
    ("attributes.small", lambda b: {**b, "attributes": {"small": -(2**63) - 1}}),
    ("amount", lambda b: {**b, "action": "payment", "amount": 1e16}),
]


@pytest.mark.parametrize("field,attack", FINDINGS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(FINDINGS)])
def test_each_finding_is_a_422_naming_the_field_with_no_state_change(client, settings, field, attack):
    seed = {**VALID, "event_id": "seed", "timestamp": iso(T0)}
    assert client.post("/score", json=seed).status_code == 200
    before = snapshot(settings)
    response = client.post("/score", json=attack({**seed, "event_id": "attack"}))
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["detail"]] == [field]
    assert snapshot(settings) == before
    assert "alice" not in response.text                   # no user id in the answer


def test_nan_and_infinity_are_refused_wherever_numbers_go(client, settings):
    before = snapshot(settings)
    for number in ('"amount": NaN', '"amount": Infinity', '"amount": 1e400', '"attributes": {"x": NaN}',
                   '"attributes": {"x": -Infinity}', '"attributes": {"x": 1e999}'):
        body = f'{{"user_id": "a", "action": "payment", "ip": "8.8.8.8", {number}}}'
        response = client.post("/score", content=body.encode(), headers={"content-type": "application/json"})
        assert response.status_code in (400, 422), response.text
        assert response.json()["detail"][0]["field"] in ("amount", "attributes.x", "body")
    assert snapshot(settings) == before


def test_the_largest_int64_attribute_and_amount_are_kept(client):
    body = {**VALID, "event_id": "edges", "attributes": {"max": 2**63 - 1, "min": -(2**63), "f": 1.5e300},
            "action": "payment", "amount": 1e15}
    assert client.post("/score", json=body).status_code == 200


def test_a_far_future_event_is_refused_but_a_skewed_clock_within_the_bound_is_fine(client):
    ahead = datetime.now(UTC)
    soon = {**VALID, "event_id": "soon", "timestamp": format_timestamp(ahead + timedelta(seconds=200))}
    assert client.post("/score", json=soon).status_code == 200
    late = {**VALID, "event_id": "late", "timestamp": format_timestamp(ahead + timedelta(seconds=400))}
    assert client.post("/score", json=late).json()["detail"][0]["field"] == "timestamp"


def test_the_skew_bound_is_a_setting(tmp_path):
    settings = Settings(home=tmp_path, api_keys=SecretStr(f"tests:{API_KEY}"), sqlite_synchronous="NORMAL",
                        max_clock_skew_seconds=3600)
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        body = {**VALID, "timestamp": format_timestamp(datetime.now(UTC) + timedelta(minutes=30))}
        assert client.post("/score", json=body).status_code == 200


@pytest.mark.parametrize("user_id", ["alice%00", "alice%E2%80%AE", "%0A", "x" * 257])
def test_erasing_a_user_id_that_breaks_the_rules_is_refused_naming_it(client, settings, user_id):
    assert client.post("/score", json={**VALID, "event_id": "erase-seed"}).status_code == 200
    before = snapshot(settings)
    response = client.delete(f"/users/{user_id}")
    assert response.status_code in (400, 422)
    assert response.json()["detail"][0]["field"] == "user_id"
    assert snapshot(settings) == before


def test_the_rules_are_one_module():
    """The schema takes its rules from inputs.py; no second copy of the character rule exists."""
    from riskengine.api import schemas

    source = inspect.getsource(schemas)
    assert "isfinite" not in source and "parse_timestamp" not in source and "\\x00" not in source
    assert inputs.Id is schemas.Id and inputs.Timestamp is schemas.Timestamp


# -- a member name given twice -------------------------------------------------------------------
def with_member(body: dict, member: str) -> bytes:
    """``body`` as JSON with ``member`` (``"name": value`` text) added inside its outer object."""
    return (json.dumps(body)[:-1] + ", " + member + "}").encode()


REPEATED = [
    ("user_id", with_member(VALID, '"user_id": "mallory"')),
    ("device_id", with_member(VALID, '"device_id": "laptop-1"')),       # a trusted device smuggled after the real one
    ("success", with_member(VALID, '"success": false')),
    ("user_id", with_member(VALID, '"user\\u005fid": "mallory"')),      # the same name once its escape is read
    ("session.acr", json.dumps({**VALID, "session": {"acr": "aal1"}}).replace(
        '"acr": "aal1"', '"acr": "aal1", "acr": "aal3"').encode()),
    ("attributes.k", json.dumps(VALID).replace('"k": "v"', '"k": "v", "k": "w"').encode()),
]


@pytest.mark.parametrize("field,body", REPEATED, ids=[f"{f}-{i}" for i, (f, _) in enumerate(REPEATED)])
def test_a_member_given_twice_is_a_422_naming_it_with_no_state_change(client, settings, field, body):
    """JSON readers disagree on which copy counts: the app (or a proxy, or a log) may have read the
    other one, so neither is scored."""
    assert client.post("/score", json={**VALID, "event_id": "seed"}).status_code == 200
    before = snapshot(settings)
    response = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["detail"]] == [field]
    assert snapshot(settings) == before


def test_the_same_name_in_different_objects_is_fine(client):
    body = {**VALID, "event_id": "names", "session": {"acr": "aal1", "id": "s-1"},
            "attributes": {"user_id": "x", "acr": "y", "k": 1}}
    assert client.post("/score", json=body).status_code == 200


def test_feedback_with_a_repeated_outcome_is_refused(client, settings):
    assert client.post("/score", json={**VALID, "event_id": "fb"}).status_code == 200
    before = snapshot(settings)
    body = b'{"event_id": "fb", "outcome": "confirmed_fraud", "outcome": "step_up_passed"}'
    response = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == "outcome"
    assert snapshot(settings) == before


def test_repeated_member_names_the_path():
    assert inputs.repeated_member(b'{"a": [1, {"b": 1}, {"c": {"d": 1, "d": 2}}]}') == "a.2.c.d"
    assert inputs.repeated_member(b'[{"x": 1}, {"y": 1, "y": 1}]') == "1.y"
    assert inputs.repeated_member(b'{"a": {"b": 1}, "b": {"a": 1}}') is None


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(VALID)), st.one_of(st.none(), st.booleans(), st.integers(), SAFE))
def test_any_member_given_again_with_any_value_is_refused(shared, field, value):
    client, settings = shared
    state = snapshot(settings)
    body = with_member({**VALID, "event_id": "again"}, f"{json.dumps(field)}: {json.dumps(value)}")
    response = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text     # as repeated, or its second value broke a rule first
    assert field in {e["field"].split(".")[0] for e in response.json()["detail"]}
    assert snapshot(settings) == state
