"""events.py: a ``/score`` body and an ``Event`` map onto each other by field name, in one function
each way; every time in an event is bounded by the server's clock (injected here) plus the skew."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime, timedelta, timezone

import pytest

from riskengine.api.schemas import ScoreRequest, SessionIn
from riskengine.events import (Event, InputError, SessionInfo, event_from_request, event_to_request,
                               format_timestamp, row_to_request)
from tests.conftest import OSLO_IP
from tests.test_api import VALID

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
UTC = timezone.utc

# -- the clock-skew bound (clock injected) --------------------------------------------------------
BODY = {"user_id": "alice", "action": "login", "ip": OSLO_IP}


def test_a_time_up_to_the_skew_ahead_is_accepted_and_one_microsecond_more_is_not():
    at = NOW + timedelta(seconds=300)
    assert event_from_request({**BODY, "timestamp": at}, NOW, 300).timestamp == at
    with pytest.raises(InputError) as refused:
        event_from_request({**BODY, "timestamp": at + timedelta(microseconds=1)}, NOW, 300)
    assert refused.value.field == "timestamp"
    with pytest.raises(InputError) as refused:
        event_from_request({**BODY, "timestamp": NOW, "session": {"auth_time": format_timestamp(at + timedelta(seconds=1))}},
                           NOW, 300)
    assert refused.value.field == "session.auth_time"


def test_historical_replays_keep_their_times():
    old = datetime(2019, 5, 1, tzinfo=UTC)
    assert event_from_request({**BODY, "timestamp": format_timestamp(old)}, NOW, 300).timestamp == old
    assert event_from_request({**BODY}, NOW, 300).timestamp == NOW           # absent: the server's clock
    with pytest.raises(InputError) as refused:                                 # no clock, no time: named
        event_from_request(BODY)
    assert refused.value.field == "timestamp"


# -- body <-> Event, by field name -----------------------------------------------------------------
def test_every_event_field_round_trips_through_the_request_form():
    body = {**VALID, "timestamp": "2026-03-02T08:00:00Z"}
    event = event_from_request(body, NOW, 300)
    assert event_to_request(event) == body
    assert event_from_request(event_to_request(event)) == event
    assert ScoreRequest.model_validate_json(json.dumps(body)).to_event(NOW) == event


def test_a_dataset_row_maps_by_column_name():
    row = {**{k: v for k, v in VALID.items() if k not in ("session", "attributes")}, "session_acr": "aal1",
           "session_auth_time": "2026-03-02T07:59:00Z", "geo_city": "Oslo", "label": 1}
    assert row_to_request(row) == {**VALID, "attributes": {"geo_city": "Oslo"}}


def test_an_unknown_or_missing_field_in_a_stored_body_is_named():
    with pytest.raises(InputError) as refused:
        event_from_request({**BODY, "timestamp": "2026-01-01T00:00:00Z", "session": {"level": 2}})
    assert refused.value.field == "session.level"
    with pytest.raises(InputError) as refused:
        event_from_request({"action": "login", "ip": OSLO_IP, "timestamp": "2026-01-01T00:00:00Z"})
    assert refused.value.field == "user_id"


@pytest.mark.parametrize("wire,core", [(ScoreRequest, Event), (SessionIn, SessionInfo)])
def test_the_wire_schema_and_the_core_type_name_the_same_fields(wire, core):
    """What makes a new optional field cheap: declared in ``ScoreRequest`` and ``Event`` under one
    name, it travels request -> Event -> recorded body -> Event with no other edit."""
    assert set(wire.model_fields) == {f.name for f in fields(core) if f.init}


# -- the per-type plans give what the generic walk over the values gave ----------------------------
def _walked_body(value):
    """``event_to_request`` as it was written before its per-type plan: by each value's runtime type."""
    from dataclasses import is_dataclass

    said = {f.name for f in fields(type(value)) if f.init and f.default is None}
    body = {}
    for f in fields(type(value)):
        if not f.init:
            continue
        item = getattr(value, f.name)
        if isinstance(item, datetime):
            item = format_timestamp(item)
        elif is_dataclass(item):
            item = _walked_body(item)
        elif isinstance(item, (dict, tuple, list)):
            item = dict(item) if isinstance(item, dict) else list(item)
        if item is not None and ((f.name in said and isinstance(item, list))
                                 or not (isinstance(item, (str, dict, list)) and not item)):
            body[f.name] = item
    return body


AT = datetime(2026, 3, 2, 8, 0, 0, 250000, tzinfo=UTC)
VARIED = [
    Event("e1", "u1", "login", AT, OSLO_IP),
    Event("e2", "acme\x1fu2", "payment", AT, "2001:db8::1", user_agent="", device_id="", success=False,
          amount=0.0, currency="NOK", payee_id="p\x00\x07\u2028", factors=()),
    Event("e3", "u3", "add_payee", AT, OSLO_IP, "Mozilla/5.0 \x7f\ud800", "d\t1", True, 12.5, None, "p1",
          SessionInfo("aal2", AT - timedelta(minutes=5), "s\n1"), {"geo_country": "NO", "rtt_ms": 0, "x": False,
                                                                  "y": "", "z": 1.5e300}, ("otp", "webauthn")),
    Event("", "", "", AT, "", session=SessionInfo(), attributes={}, factors=("sms",)),
    Event("e5", "u5", "login", AT, OSLO_IP, session=SessionInfo(acr="", auth_time=None, id="s5"), amount=float("nan")),
]


@pytest.mark.parametrize("event", VARIED, ids=range(len(VARIED)))
def test_event_to_request_equals_the_generic_walk(event):
    body = event_to_request(event)
    assert json.dumps(body, sort_keys=True) == json.dumps(_walked_body(event), sort_keys=True)
    assert list(body) == list(_walked_body(event))              # same keys in the same order


@pytest.mark.parametrize("event", VARIED, ids=range(len(VARIED)))
def test_the_clock_bound_checks_every_time_in_an_event(event):
    from riskengine.events import _times

    expected = [("timestamp", event.timestamp)] + (
        [("session.auth_time", event.session.auth_time)] if event.session.auth_time is not None else [])
    assert list(_times(event)) == expected
