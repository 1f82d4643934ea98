"""The synthetic stream is deterministic, well-formed, realistic where training relies on it, and
speaks the /score request form."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import geoip2.database
import numpy as np
import pandas as pd
import pytest
from _maxminddb_geolite2 import geolite2_database

from riskengine.datasets.synth import (ATTACK_CLASSES, EVENT_COLUMNS, generate_events, read_events,
                              to_request, write_events)
from riskengine.datasets.synth.places import POOLS_CSV
from riskengine.datasets.synth.attacks import MIN_HISTORY

RFC3339_Z = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"
API_FIELDS = {"event_id", "user_id", "action", "timestamp", "ip", "user_agent", "device_id", "success",
              "amount", "currency", "payee_id", "session", "attributes"}


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    return generate_events(users=300, days=30, seed=7)


@pytest.fixture(scope="module")
def city_db():
    with geoip2.database.Reader(geolite2_database()) as reader:
        yield reader


def _legit_logins(events: pd.DataFrame) -> pd.DataFrame:
    return events[(events.label == 0) & (events.action == "login") & events.success]


def test_same_seed_gives_the_same_frame():
    first = generate_events(users=40, days=10, seed=3)
    pd.testing.assert_frame_equal(first, generate_events(users=40, days=10, seed=3))
    assert not first.equals(generate_events(users=40, days=10, seed=4))


def test_columns_and_types(events):
    assert tuple(events.columns) == EVENT_COLUMNS
    assert events.event_id.is_unique
    assert events.timestamp.str.match(RFC3339_Z).all()
    auth = events.session_auth_time.dropna()
    assert len(auth) and auth.str.match(RFC3339_Z).all()
    assert events.success.dtype == bool and events.amount.dtype == np.float64
    assert events.label.dtype.kind == "i" and set(events.label.unique()) == {0, 1}
    assert set(events.attack_class.unique()) <= set(ATTACK_CLASSES)
    assert ((events.attack_class != "legit") == (events.label == 1)).all()
    money = events.amount.notna()
    assert (events.action[money] == "payment").all() and events.currency[money].notna().all()
    assert (events.amount[money] >= 0).all()


def test_sorted_by_time_inside_the_window(events):
    stamps = pd.to_datetime(events.timestamp, utc=True)
    assert stamps.is_monotonic_increasing
    assert stamps.min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert stamps.max() < pd.Timestamp("2026-01-31", tz="UTC")


def test_start_moves_the_window():
    start = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    stamps = pd.to_datetime(generate_events(users=30, days=5, start=start).timestamp, utc=True)
    assert stamps.min() >= start and stamps.max() < start + timedelta(days=5)


def test_attack_share_and_every_class(events):
    assert 0.005 <= events.label.mean() <= 0.04
    assert set(events.attack_class.unique()) == set(ATTACK_CLASSES)


def test_attacks_start_after_victim_history(events):
    logins = _legit_logins(events)
    history = {user: np.sort(ts.to_numpy()) for user, ts in logins.groupby("user_id").timestamp}
    attacks = events[events.label == 1]
    prior = [np.searchsorted(history.get(u, np.array([], dtype=object)), t)
             for u, t in zip(attacks.user_id, attacks.timestamp)]
    assert min(prior) >= MIN_HISTORY


def test_very_targeted_copies_the_victim_user_agent_on_a_new_device(events):
    logins = _legit_logins(events)
    attacks = events[(events.attack_class == "very_targeted") & (events.action == "login")]
    assert len(attacks)
    for row in attacks.itertuples():
        before = logins[(logins.user_id == row.user_id) & (logins.timestamp < row.timestamp)]
        # the victim's User-Agent when the attack began (the victim may sign in between its tries)
        assert row.user_agent in set(before.user_agent.iloc[-3:])
        known = set(events.device_id[(events.label == 0) & (events.user_id == row.user_id)])
        assert isinstance(row.device_id, str) and row.device_id not in known


def test_credential_stuffing_bursts_share_an_ip_across_many_users(events):
    stuffing = events[events.attack_class == "credential_stuffing"]
    bursts = stuffing.assign(t=pd.to_datetime(stuffing.timestamp)).groupby("ip").agg(
        users=("user_id", "nunique"), failures=("success", lambda s: 1 - s.mean()),
        minutes=("t", lambda t: (t.max() - t.min()).total_seconds() / 60))
    assert (bursts.users >= 10).any()
    big = bursts[bursts.users >= 10]
    assert (big.failures >= 0.8).all() and (big.minutes <= 30).all()


def test_legit_ips_mostly_geolocate_to_the_users_country(events, city_db):
    legit = events[events.label == 0]
    country = {ip: city_db.city(ip).country.iso_code for ip in legit.ip.unique()}
    located = legit.ip.map(country)
    assert located.notna().all()
    home = located.groupby(legit.user_id).agg(lambda s: s.mode().iloc[0])
    assert (located == legit.user_id.map(home)).mean() >= 0.9
    assert located.nunique() >= 10  # users live in many countries


def test_geo_pool_networks_geolocate_to_their_place(city_db):
    pools = pd.read_csv(POOLS_CSV, keep_default_na=False)
    assert POOLS_CSV.stat().st_size < 200_000
    assert pools[pools.kind == "isp"].country.nunique() >= 15
    rng = np.random.default_rng(0)
    for row in pools.itertuples():
        net = ipaddress.ip_network(row.network)
        ip = net.network_address + int(rng.integers(1, net.num_addresses - 1))
        found = city_db.city(str(ip))
        assert found.country.iso_code == row.country, row.network
        assert not row.city or found.city.name == row.city, row.network


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_write_read_roundtrip(events, tmp_path, suffix):
    path = write_events(events, tmp_path / f"events{suffix}")
    assert path.exists()
    pd.testing.assert_frame_equal(read_events(path), events)


def test_unknown_file_type_is_refused(events, tmp_path):
    with pytest.raises(ValueError, match=".csv"):
        write_events(events, tmp_path / "events.csv")


def test_to_request_gives_api_bodies(events):
    sample = pd.concat([events.groupby("attack_class").head(20), events.groupby("action").head(50),
                        events.sample(500, random_state=0)])
    for row in sample.to_dict("records"):
        body = to_request(row)
        assert set(body) <= API_FIELDS
        assert 1 <= len(body["user_id"]) <= 256 and 1 <= len(body["action"]) <= 64
        ipaddress.ip_address(body["ip"])
        assert isinstance(body["success"], bool)
        assert len(body.get("user_agent", "")) <= 1024 and len(body.get("device_id", "")) <= 256
        if "amount" in body:
            assert body["action"] == "payment" and isinstance(body["amount"], float)
            assert body["amount"] >= 0
        assert ("payee_id" in body) == (body["action"] in ("payment", "add_payee"))
        if body["action"] == "login":
            # a successful sign-in opens a session (its id only); a failed one opens none
            assert set(body.get("session", {})) == ({"id"} if body["success"] else set())
        else:
            assert set(body["session"]) == {"id", "acr", "auth_time"}
            assert body["session"]["auth_time"] <= body["timestamp"]


def test_in_session_actions_carry_the_session_their_sign_in_opened(events):
    logins = events[(events.action == "login") & events.success]
    opened = dict(zip(logins.session_id, logins.user_id))
    actions = events[(events.action != "login") & (events.attack_class == "legit")]
    assert actions.session_id.notna().all() and logins.session_id.is_unique
    assert (actions.session_id.map(opened) == actions.user_id).all()


def test_hijacked_sessions_reuse_the_owner_session_from_elsewhere(events):
    hijack = events[events.attack_class == "mid_session_hijack"]
    owner = events[(events.attack_class == "legit") & (events.action == "login")].set_index("session_id")
    assert len(hijack) and hijack.session_id.isin(owner.index).all()
    assert (hijack.user_agent.to_numpy() != owner.loc[hijack.session_id, "user_agent"].to_numpy()).any()


def test_app_fraud_comes_from_the_owner_device_and_session(events):
    fraud = events[events.attack_class == "app_fraud"]
    owner = events[(events.attack_class == "legit") & (events.action == "login")].set_index("session_id")
    assert len(fraud) and (fraud.device_id.to_numpy() == owner.loc[fraud.session_id, "device_id"].to_numpy()).all()
    assert set(fraud.action) <= {"add_payee", "payment"}


def test_shared_family_devices_serve_two_accounts_from_one_home(events):
    logins = _legit_logins(events)
    users_per_device = logins.groupby("device_id").user_id.nunique()
    shared = users_per_device[users_per_device == 2].index
    assert len(shared) >= 10 and users_per_device.max() == 2        # 15% of users, in pairs
    for device in shared[:10]:
        on_it = logins[logins.device_id == device]
        assert on_it.user_agent.nunique() <= 3                      # one browser, updating
        # the household's home address: both accounts sign in from it (on any of their devices)
        addresses = [set(logins.ip[logins.user_id == user]) for user in on_it.user_id.unique()]
        assert addresses[0] & addresses[1]
