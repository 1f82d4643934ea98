"""Ids are compared byte for byte in every store: any id the API accepts (printable unicode,
astral characters included, 1..256 characters) comes back exactly as it went in, and two distinct
ids never share a profile or an event, whatever a JSON path or a key encoding would make of them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from riskengine.profiles import UserProfile
from riskengine.stores import Commit, ProfileStore, StoredEvent, open_store
from tests.conftest import T0, redis_url

#: what the API accepts for a user or event id: no control characters (Cc), no lone surrogates (Cs)
IDS = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=256)
AT = T0.timestamp()
CHECKS = settings(max_examples=60, deadline=None, database=None,   # no example files left in the checkout
                  suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    if request.param == "memory":
        opened = open_store("memory://")
    elif request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/profiles.db", synchronous="OFF")
    else:
        opened = open_store(redis_url(request, request.param), prefix=f"test-{uuid.uuid4().hex[:12]}:")
    try:
        yield opened
    finally:
        opened.clear()
        opened.close()


def _record(store: ProfileStore, user_id: str, event_id: str, marker: int) -> None:
    """One scored event for ``user_id`` whose profile carries ``marker`` (as its event count)."""
    version = store.get(user_id).version
    event = StoredEvent(event_id, user_id, AT, {"user_id": user_id, "action": "login"}, {"decision": "allow"}, {})
    store.commit(Commit(user_id, version, UserProfile(user_id=user_id, events=marker), "192.0.2.1", "k", AT, True,
                        {}, event, {"kind": "score"}))


@CHECKS
@given(user_id=IDS, event_id=IDS)
@example(user_id="victim\x00", event_id="e\x00")            # beyond what the API accepts: still exact
@example(user_id="\U0001f600" * 256, event_id="\U00010000")
def test_any_accepted_id_round_trips_byte_exact(store: ProfileStore, user_id: str, event_id: str) -> None:
    if store.find_event(event_id) is not None:              # hypothesis repeats ids across examples
        return
    _record(store, user_id, event_id, 7)
    profile = store.get(user_id)
    assert profile.user_id.encode("utf-8", "surrogatepass") == user_id.encode("utf-8", "surrogatepass")
    assert profile.events == 7
    found = store.find_event(event_id)
    assert found is not None and (found.event_id, found.user_id) == (event_id, user_id)
    assert event_id in {e.event_id for e in store.labelled_events()}


@CHECKS
@given(first=IDS, second=IDS)
@example(first="victim", second="victim\x00")
@example(first="a", second="a\u0301")                        # not merged by unicode normalisation
@example(first="ß", second="SS")
def test_distinct_ids_never_share_a_profile(store: ProfileStore, first: str, second: str) -> None:
    if first == second:
        return
    tag = uuid.uuid4().hex                                   # fresh event ids each example
    _record(store, first, f"{tag}-1", 11)
    _record(store, second, f"{tag}-2", 22)
    assert store.get(first).events == 11 and store.get(second).events == 22
    assert store.get(first).user_id == first and store.get(second).user_id == second
    assert store.find_event(f"{tag}-1").user_id == first and store.find_event(f"{tag}-2").user_id == second
