"""profiles.py: an event older than the user's latest never rewinds the profile, and no claimed
time prunes past the server's clock (issue 13, item 1). Real GeoIP lookups, real profiles."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from riskengine import profiles
from riskengine.profiles import DAY, UserProfile, failed, learned, trusted
from tests.conftest import BOMLO_IP, OSLO_IP, T0, event

RETENTION = 180 * DAY


@pytest.fixture
def history(enricher):
    """Alice: ten days of logins at home, a payment to her landlord, a passed step-up at home."""
    profile = UserProfile("alice")
    for day in range(10):
        profile = learned(profile, enricher.enrich(event(day, at=T0 + timedelta(days=day))), RETENTION)
    pay = enricher.enrich(event("pay", action="payment", at=T0 + timedelta(days=9, hours=1), payee_id="landlord",
                                amount=900.0))
    profile = learned(profile, pay, RETENTION)
    return trusted(profile, pay, pay.event.ts)


def kept(profile: UserProfile) -> dict:
    """What a far-future or older event must not take away."""
    return {"devices": set(profile.devices), "payees": set(profile.payees), "trusted": dict(profile.trusted),
            "last_success": profile.last_success, "last_at": profile.last_at}


def test_an_older_event_never_rewinds_last_seen_last_success_or_trust(history, enricher):
    before = kept(history)
    late = enricher.enrich(event("late", at=T0 - timedelta(days=30), ip=BOMLO_IP, payee_id="landlord",
                                 action="payment", amount=10.0))
    after = trusted(learned(history, late, RETENTION), late, late.event.ts)
    assert after.last_at == before["last_at"]
    assert after.last_success == before["last_success"]                  # still Oslo, day 9: not Bomlo
    assert after.devices["laptop-1"][1] == history.devices["laptop-1"][1]
    assert after.payees["landlord"] == [2.0, history.payees["landlord"][1]]  # counted, not rewound
    for key, at in before["trusted"].items():
        assert after.trusted[key] == at
    assert after.first_at == late.event.ts                               # the one thing it does move


def test_an_older_event_prunes_by_the_profiles_latest_time(history, enricher):
    """The horizon is max(latest, event time) - retention: an older event cannot revive the stale."""
    stale = learned(history, enricher.enrich(event("old-device", at=T0 - timedelta(days=200), device="old")),
                    RETENTION)
    assert "old" not in stale.devices


def test_failures_stay_in_time_order_and_the_newest_are_kept(enricher):
    profile = UserProfile("alice")
    for minute in range(profiles.MAX_FAILURES):
        profile = failed(profile, enricher.enrich(event(minute, at=T0 + timedelta(minutes=minute), success=False)),
                         RETENTION)
    profile = failed(profile, enricher.enrich(event("late", at=T0 - timedelta(minutes=5), success=False)), RETENTION)
    assert profile.failures == sorted(profile.failures)
    assert profile.failures[-1] == (T0 + timedelta(minutes=profiles.MAX_FAILURES - 1)).timestamp()
    assert len(profile.failures) == profiles.MAX_FAILURES


def test_a_far_future_event_cannot_wipe_devices_places_payees_or_trust(history, enricher):
    """With the server's clock, a time claimed past it prunes nothing (the API also refuses it: test_events)."""
    now = (T0 + timedelta(days=10)).timestamp()
    future = enricher.enrich(event("future", at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
                                   device="attacker", ip=BOMLO_IP))
    before = kept(history)
    after = learned(history, future, RETENTION, now=now)
    assert before["devices"] | {"attacker"} == set(after.devices)
    assert after.payees.keys() == before["payees"] and after.trusted == before["trusted"]
    assert after.last_at == now                                          # taken as now, not year 9999
    after = failed(after, future, RETENTION, now=now)
    assert after.failures[-1] == now and after.trusted == before["trusted"]
    # the next genuine event, a day later, finds everything still there
    home = learned(after, enricher.enrich(event("home", at=T0 + timedelta(days=11))), RETENTION,
                   now=(T0 + timedelta(days=11)).timestamp())
    assert home.trusted == before["trusted"] and "landlord" in home.payees and "laptop-1" in home.devices


def test_without_a_server_clock_event_time_rules_as_in_a_replay(history, enricher):
    """Replays (training, what-if) pass no clock: a long gap prunes, as it would have then."""
    gap = enricher.enrich(event("gap", at=T0 + timedelta(days=400), ip=OSLO_IP, device="new-laptop"))
    after = learned(history, gap, RETENTION)
    assert set(after.devices) == {"new-laptop"} and not after.trusted and not after.payees


def test_a_payees_added_time_is_kept_while_recent_and_survives_the_store_format(history, enricher):
    at = T0 + timedelta(days=10)
    added = learned(history, enricher.enrich(event("add", action="add_payee", payee_id="new", at=at)), RETENTION)
    assert added.payee_added_at("new") == at.timestamp()
    assert added.payee_added_at("landlord") == at.timestamp() - timedelta(days=1).total_seconds() + 3600
    assert added.payee_added_at("nobody") is None
    again = learned(added, enricher.enrich(event("pay", action="payment", payee_id="new", amount=5.0,
                                                 at=at + timedelta(minutes=5))), RETENTION)
    assert again.payee_added_at("new") == at.timestamp()                     # paying it keeps the first time
    assert UserProfile.from_json(again.to_json()).payees_added == again.payees_added
    later = learned(again, enricher.enrich(event("l", at=at + timedelta(days=31))), RETENTION)
    assert later.payee_added_at("new") == -math.inf and "new" in later.payees   # settled, still known


def test_only_the_latest_added_payees_keep_their_time(enricher):
    profile = UserProfile("bob")
    for i in range(profiles.MAX_PAYEES_ADDED + 3):
        profile = learned(profile, enricher.enrich(event(i, user="bob", action="add_payee", payee_id=f"p{i}",
                                                         at=T0 + timedelta(minutes=i))), RETENTION)
    assert len(profile.payees_added) == profiles.MAX_PAYEES_ADDED
    assert profile.payee_added_at("p0") == -math.inf and profile.payee_added_at(f"p{profiles.MAX_PAYEES_ADDED + 2}") > 0


def test_amounts_are_kept_by_currency_and_bounded(enricher):
    profile = UserProfile("alice")
    for i, currency in enumerate(["EUR", "EUR", None, *(f"C{n:02d}" for n in range(profiles.MAX_CURRENCIES))]):
        pay = event(i, action="payment", amount=10.0 + i, currency=currency, at=T0 + timedelta(hours=i))
        profile = learned(profile, enricher.enrich(pay), 180 * DAY)
    assert len(profile.amounts) == profiles.MAX_CURRENCIES
    assert profile.amount_stats("EUR")[0] == 2                      # the most used stays; a single one went
    assert profile.amount_stats("XAU") is None
    assert UserProfile.from_json(profile.to_json()).amounts == profile.amounts


def test_a_profile_stored_before_amounts_by_currency_keeps_its_history(enricher):
    """Its statistics (currency unknown) stand in for any currency until the next payment, which
    names them: no user's amounts are forgotten, none are compared across currencies after."""
    legacy = UserProfile.from_json('{"user_id": "alice", "events": 3, "amount_n": 3, "amount_mean": 3.7, '
                                   '"amount_m2": 0.02}')
    assert legacy.amount_stats("EUR")[:2] == legacy.amount_stats("JPY")[:2] == (3, 3.7)
    paid = learned(legacy, enricher.enrich(event(1, action="payment", amount=40.0, currency="EUR", at=T0)), 180 * DAY)
    assert set(paid.amounts) == {"EUR"} and paid.amount_stats("EUR")[0] == 4
    assert paid.amount_stats("JPY") is None and legacy.amounts == {"?": [3, 3.7, 0.02]}    # the old copy untouched
