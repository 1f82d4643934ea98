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
