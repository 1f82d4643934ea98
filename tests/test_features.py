"""Each signal against a hand-computed expectation."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from riskengine import profiles
from riskengine.features import FEATURE_NAMES, Context, GlobalCount, IpActivity, extract, likelihood_ratio
from tests.conftest import BOMLO_IP, OSLO_IP, SAFARI_IPHONE, SYDNEY_IP, T0, US_IP, event

RETENTION = 180 * profiles.DAY


def history(enricher, events):
    profile = profiles.UserProfile("alice")
    for e in events:
        profile = profiles.learned(profile, enricher.enrich(e), RETENTION)
    return profile


def signals(enricher, e, profile, context=Context()):
    return extract(enricher.enrich(e), profile, context).values


def test_oslo_then_sydney_30_minutes_later_is_impossible_travel(enricher):
    profile = history(enricher, [event(0, ip=OSLO_IP)])
    v = signals(enricher, event(1, ip=SYDNEY_IP, at=T0 + timedelta(minutes=30)), profile)
    assert v["impossible_travel"] == 1.0
    assert 15_900 < v["km_from_last_success"] < 16_000          # Oslo -> Melbourne area
    # slack: Sydney's 1,000 km accuracy radius is subtracted before dividing by half an hour
    assert v["kmh_from_last_success"] == pytest.approx((v["km_from_last_success"] - 1 - 1000) * 2, rel=1e-6)


def test_same_city_a_day_later_is_not_impossible_travel(enricher):
    profile = history(enricher, [event(0)])
    v = signals(enricher, event(1, at=T0 + timedelta(days=1)), profile)
    assert v["impossible_travel"] == 0.0 and v["km_from_last_success"] == 0.0


def test_oslo_to_bomlo_by_plane_is_plausible_but_not_in_one_minute(enricher):
    profile = history(enricher, [event(0, ip=OSLO_IP)])
    two_hours = signals(enricher, event(1, ip=BOMLO_IP, at=T0 + timedelta(hours=2)), profile)
    one_minute = signals(enricher, event(2, ip=BOMLO_IP, at=T0 + timedelta(minutes=1)), profile)
    assert two_hours["impossible_travel"] == 0.0
    assert one_minute["impossible_travel"] == 1.0


def test_novelty_signals_need_history_and_compare_with_it(enricher):
    empty = profiles.UserProfile("alice")
    first = signals(enricher, event(0), empty)
    assert first["new_country"] == first["new_device"] == first["new_ip"] == 0.0   # cold start: no evidence
    assert first["history_logins"] == 0.0
    profile = history(enricher, [event(i, at=T0 + timedelta(days=i)) for i in range(3)])
    later = signals(enricher, event(9, ip=US_IP, ua=SAFARI_IPHONE, device="phone-9",
                                    at=T0 + timedelta(days=4)), profile)
    assert later["new_country"] == later["new_network"] == later["new_ip"] == later["new_device"] == 1.0
    assert later["new_browser"] == later["new_os"] == 1.0
    assert later["history_logins"] == 3.0
    same = signals(enricher, event(10, at=T0 + timedelta(days=4)), profile)
    assert same["new_country"] == same["new_device"] == same["new_browser"] == 0.0


def test_freeman_likelihood_ratio_by_hand():
    population = GlobalCount(count=9, total=90, distinct=9)      # p(v) = 10 / 100
    # user saw the value 4 times out of 8: p(v|u) = (4 + 0.1) / 9
    assert likelihood_ratio(population, 4, 8) == pytest.approx(math.log(0.1 / (4.1 / 9)))
    # never seen in 8: p(v|u) = 0.1 / 9 -> ratio 9
    assert likelihood_ratio(population, 0, 8) == pytest.approx(math.log(9))
    # the same unseen value is more suspicious for a user with a longer history
    assert likelihood_ratio(population, 0, 100) > likelihood_ratio(population, 0, 8)


def test_amount_zscore_first_payment_and_new_payee(enricher):
    pays = [event(i, action="payment", amount=20.0 + i, payee_id="landlord", at=T0 + timedelta(days=i))
            for i in range(6)]
    profile = history(enricher, pays)
    mean = sum(math.log1p(20.0 + i) for i in range(6)) / 6
    big = signals(enricher, event(9, action="payment", amount=1000.0, payee_id="stranger",
                                  at=T0 + timedelta(days=7)), profile)
    assert big["amount_zscore"] == pytest.approx((math.log1p(1000) - mean) / 0.25)   # spread floor 0.25
    assert big["new_payee"] == 1.0 and big["first_payment"] == 0.0
    usual = signals(enricher, event(10, action="payment", amount=22.0, payee_id="landlord",
                                    at=T0 + timedelta(days=7)), profile)
    assert abs(usual["amount_zscore"]) < 1 and usual["new_payee"] == 0.0
    first = signals(enricher, event(0, action="payment", amount=5.0, payee_id="x"), profiles.UserProfile("bob"))
    assert first["first_payment"] == 1.0 and math.isnan(first["amount_zscore"])


def test_payee_added_minutes_ago_is_recent_a_month_old_one_settled(enricher):
    """The scam's own add_payee must not make its payment look habitual: the payee's age is kept."""
    day0 = [event(i, action="payment", amount=30.0, payee_id="grocer", at=T0 + timedelta(days=i)) for i in range(3)]
    added = event("add", action="add_payee", payee_id="someone-new", at=T0 + timedelta(days=40))
    profile = history(enricher, [*day0, added])
    pay = lambda payee, after: signals(enricher, event(payee, action="payment", amount=1700.0, payee_id=payee,  # noqa: E731
                                                       at=T0 + timedelta(days=40) + after), profile)
    recent = pay("someone-new", timedelta(minutes=3))
    assert recent["new_payee"] == 0.0 and recent["payee_added_h"] == pytest.approx(3 / 60)
    assert pay("never-seen", timedelta(minutes=3))["payee_added_h"] == 0.0           # new_payee's case
    assert pay("grocer", timedelta(minutes=3))["payee_added_h"] == 30 * 24             # settled: the cap
    same_second = pay("someone-new", timedelta(0))
    assert 0 < same_second["payee_added_h"] <= 1 / 3600                                # known, so not 0
    assert math.isnan(signals(enricher, event("view", action="view_dashboard", at=T0 + timedelta(days=41)),
                              profile)["payee_added_h"])
    assert math.isnan(signals(enricher, event("p", action="payment", amount=5.0, payee_id="x"),
                              profiles.UserProfile("bob"))["payee_added_h"])          # no history: no evidence
    reason = extract(enricher.enrich(event("m", action="payment", amount=1700.0, payee_id="someone-new",
                                           at=T0 + timedelta(days=40, minutes=3))), profile, Context())
    assert reason.message("payee_added_h") == "payee added to this account 3 min earlier"


def test_missing_client_ids_counts_what_the_users_earlier_requests_sent(enricher):
    """A tool that keeps no cookie and sends no User-Agent must not look more familiar than a new device."""
    profile = history(enricher, [event(i, at=T0 + timedelta(days=i)) for i in range(3)])   # laptop-1, Chrome
    at = T0 + timedelta(days=4)
    assert signals(enricher, event("same", at=at), profile)["missing_client_ids"] == 0.0
    assert signals(enricher, event("new", device="laptop-2", at=at), profile)["missing_client_ids"] == 0.0
    no_device = extract(enricher.enrich(event("nd", device=None, at=at)), profile, Context())
    assert no_device.values["missing_client_ids"] == 1.0 and no_device.values["new_device"] == 0.0
    assert no_device.message("missing_client_ids") == "request without device id, unlike this user's earlier requests"
    script = extract(enricher.enrich(event("s", device=None, ua=None, action="export_data", at=at)), profile, Context())
    assert script.values["missing_client_ids"] == 2.0
    assert script.message("missing_client_ids") == ("request without device id and User-Agent, unlike this "
                                                    "user's earlier requests")
    assert signals(enricher, event("c", device=None, ua=None), profiles.UserProfile("bob"))["missing_client_ids"] == 0.0
    never_sent = history(enricher, [event(i, device=None, at=T0 + timedelta(days=i)) for i in range(3)])
    assert signals(enricher, event("api", device=None, at=at), never_sent)["missing_client_ids"] == 0.0


def test_time_of_day_against_the_users_own_hours(enricher):
    profile = history(enricher, [event(i, at=T0 + timedelta(days=i)) for i in range(20)])   # always 08:00
    usual = signals(enricher, event(30, at=T0 + timedelta(days=30)), profile)
    night = signals(enricher, event(31, at=T0 + timedelta(days=30, hours=12)), profile)
    assert usual["hour_unusualness"] < 0 < night["hour_unusualness"]
    # 20 logins at 08:00, none at 20:00: p = (0 + 2/24) / 22 -> -log(24 p)
    assert night["hour_unusualness"] == pytest.approx(-math.log(24 * (2 / 24) / 22))


def test_failures_and_per_ip_counters(enricher):
    profile = profiles.UserProfile("alice")
    for minutes in (0, 10, 50):
        profile = profiles.failed(profile, enricher.enrich(event(minutes, success=False,
                                                               at=T0 + timedelta(minutes=minutes))), RETENTION)
    v = signals(enricher, event(99, at=T0 + timedelta(minutes=55)), profile,
                Context(ip=IpActivity(failures=40, distinct_users=25)))
    assert v["failed_logins_15m"] == 1.0 and v["failed_logins_1h"] == 3.0
    assert v["ip_failures_1h"] == 40.0 and v["ip_users_1h"] == 25.0


def test_profile_is_bounded_and_pruned_by_event_time(enricher):
    events = [event(i, device=f"d{i}", at=T0 + timedelta(hours=i)) for i in range(40)]
    profile = history(enricher, events)
    assert len(profile.devices) == profiles.CAPS["devices"]
    assert "d39" in profile.devices and "d0" not in profile.devices     # least recently seen went first
    later = profiles.learned(profile, enricher.enrich(event(50, device="new", at=T0 + timedelta(days=200))),
                             RETENTION)
    assert list(later.devices) == ["new"]                                  # 180-day retention, event time


def test_each_entry_is_forgotten_when_it_passes_the_retention_window(enricher):
    """Pruning skips the maps while nothing in them can be that old; a stored and reloaded
    profile (which does not keep that bound) is pruned just the same."""
    def learn(profile, device, days):
        return profiles.learned(profile, enricher.enrich(event(days, device=device, at=T0 + timedelta(days=days))),
                                RETENTION)

    profile = learn(learn(profiles.UserProfile("alice"), "a", 0), "b", 100)
    assert "oldest_seen_at" not in profile.to_json()
    for reloaded in (False, True):
        p = profiles.UserProfile.from_json(profile.to_json()) if reloaded else profile
        assert sorted(learn(p, "c", 179).devices) == ["a", "b", "c"]     # a is 179 days old: kept
        assert sorted(learn(p, "c", 181).devices) == ["b", "c"]          # a is 181 days old: gone
        assert sorted(learn(learn(p, "c", 181), "d", 281).devices) == ["c", "d"]   # then b


def test_features_come_in_catalogue_order(enricher):
    s = extract(enricher.enrich(event(0)), profiles.UserProfile("alice"), Context())
    assert list(s.values) == list(FEATURE_NAMES)[: len(s.values)] and len(s.row()) == len(FEATURE_NAMES)


def test_geo_lookups_give_what_geoip2s_city_model_gives():
    """The locator reads the City file through maxminddb's plain records; on 3,000 addresses
    (IPv4 and IPv6, listed or not) it must say what geoip2's own City model says."""
    import random

    import geoip2.database
    import geoip2.errors

    from riskengine.enrich.geo import GeoLocator, bundled_city_db

    locator, reference = GeoLocator(), geoip2.database.Reader(str(bundled_city_db()))
    rng = random.Random(7)
    addresses = [".".join(str(rng.randrange(1 if i == 0 else 0, 224 if i == 0 else 256)) for i in range(4))
                 for _ in range(2500)] + [f"2001:{rng.randrange(65536):x}::{rng.randrange(65536):x}" for _ in range(500)]
    listed = 0
    for ip in addresses:
        geo = locator.lookup(ip)
        if geo.unknown_reason in ("private", "reserved"):
            continue
        try:
            city = reference.city(ip)
        except (geoip2.errors.AddressNotFoundError, ValueError):
            assert not geo.known, ip
            continue
        listed += city.country.iso_code is not None
        assert (geo.known, geo.country, geo.city, geo.latitude, geo.longitude, geo.accuracy_km) == (
            city.country.iso_code is not None, city.country.iso_code, city.city.name, city.location.latitude,
            city.location.longitude, float(city.location.accuracy_radius or 0)), ip
    assert listed > 1500                                  # most public addresses are in the file


def test_the_kept_totals_equal_the_counts_summed_through_caps_and_pruning(enricher):
    """``total`` keeps each Freeman map's sum up to date instead of summing it per event; through
    eviction at the caps, retention pruning, failures and a reload it must equal the sum."""
    ips = [OSLO_IP, BOMLO_IP, SYDNEY_IP, US_IP] + [f"198.51.100.{i}" for i in range(80)]
    uas = [SAFARI_IPHONE, "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"]

    def summed(p, attribute):
        return sum(count for count, _ in getattr(p, profiles._FREEMAN_FIELDS[attribute]).values())

    profile = profiles.UserProfile("alice")
    profile.total("ip")                                            # kept from here on
    largest, pruned = 0, False
    for i in range(260):
        at = T0 + timedelta(hours=7 * i, days=200 * (i // 100))      # twice a gap of 200 days
        e = event(i, ip=ips[(i * 5) % len(ips)], ua=uas[i % 2], at=at)
        if i % 9 == 4:
            profile = profiles.failed(profile, enricher.enrich(event(i, success=False, at=at)), RETENTION)
        else:
            profile = profiles.learned(profile, enricher.enrich(e), RETENTION)
        if i % 50 == 49:
            profile = profiles.UserProfile.from_json(profile.to_json())   # a reload starts unknown
        for attribute in profiles.FREEMAN_ATTRIBUTES:
            assert profile.total(attribute) == summed(profile, attribute), (i, attribute)
        largest = max(largest, len(profile.ips))
        pruned = pruned or len(profile.ips) < largest
    assert largest == profiles.CAPS["ips"] and pruned              # evicted at the cap, and pruned
    assert "freeman_totals" not in profile.to_json()


def test_amounts_are_compared_within_their_currency(enricher):
    """44 XAU is not 44 EUR: a figure is judged against the user's amounts in its own currency, and a
    currency never paid in (by a user who has paid before) is new; without any payment, NaN."""
    pays = [event(i, action="payment", amount=40.0 + i, currency="EUR", payee_id="grocer", at=T0 + timedelta(days=i))
            for i in range(6)]
    pays.append(event("yen", action="payment", amount=900_000.0, currency="JPY", payee_id="ryokan",
                      at=T0 + timedelta(days=6)))
    profile = history(enricher, pays)
    mean = sum(math.log1p(40.0 + i) for i in range(6)) / 6
    later = T0 + timedelta(days=7)
    euros = signals(enricher, event("e", action="payment", amount=44.0, currency="EUR", payee_id="grocer", at=later),
                    profile)
    assert euros["new_currency"] == 0.0 and euros["first_payment"] == 0.0
    assert euros["amount_zscore"] == pytest.approx((math.log1p(44.0) - mean) / max(
        math.sqrt(sum((math.log1p(40.0 + i) - mean) ** 2 for i in range(6)) / 5), 0.25))   # the yen left out
    gold = signals(enricher, event("g", action="payment", amount=44.0, currency="XAU", payee_id="grocer", at=later),
                   profile)
    assert gold["new_currency"] == 1.0 and math.isnan(gold["amount_zscore"]) and gold["first_payment"] == 0.0
    first = signals(enricher, event(0, action="payment", amount=5.0, currency="EUR"), profiles.UserProfile("bob"))
    assert math.isnan(first["new_currency"]) and first["first_payment"] == 1.0
    login = signals(enricher, event("l", at=later), profile)
    assert math.isnan(login["new_currency"]) and math.isnan(login["amount_zscore"])
