"""Legitimate traffic for synth.py: each user's logins (with typo failures) and the in-session
actions after them, as integer-coded columns (Rows) that synth.py turns into the event frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from riskengine.datasets.synth import useragents
from riskengine.datasets.synth.places import GeoPools
from riskengine.datasets.synth.users import MAX_PAYEES, Population, Trips, pick_columns

ACTIONS = ("login", "view_dashboard", "payment", "add_payee", "change_email", "change_password",
           "export_data", "change_phone")
LOGIN, DASHBOARD, PAYMENT, ADD_PAYEE, CHANGE_EMAIL, CHANGE_PASSWORD, EXPORT_DATA, CHANGE_PHONE = range(len(ACTIONS))
DAY = 86_400

# Column -> (dtype, default). -1 means absent for ua, device, payee, session and auth_ts (no session).
_COLUMNS = {"user": (np.int64, -1), "action": (np.int8, LOGIN), "ts": (np.int64, 0),
            "ip": (np.int64, 0), "ua": (np.int64, -1), "device": (np.int64, -1),
            "success": (np.bool_, True), "amount": (np.float64, np.nan), "payee": (np.int64, -1),
            "auth_ts": (np.int64, -1), "session": (np.int64, -1), "attack": (np.int8, 0)}
Rows = dict[str, np.ndarray]


def make_rows(n: int, **columns: object) -> Rows:
    """n rows; each column given as a scalar or an array of length n, defaults elsewhere."""
    unknown = set(columns) - set(_COLUMNS)
    if unknown:
        raise TypeError(f"unknown row columns {sorted(unknown)}; known: {', '.join(_COLUMNS)}")
    return {name: np.broadcast_to(np.asarray(columns.get(name, default), dtype=dtype), (n,)).copy()
            for name, (dtype, default) in _COLUMNS.items()}


def rows_from_records(records: list[dict]) -> Rows:
    """Rows from a few hand-built events (attacks), one dict each; missing columns get defaults."""
    return make_rows(len(records), **{name: np.array([r.get(name, default) for r in records], dtype)
                                      for name, (dtype, default) in _COLUMNS.items()})


def concat_rows(parts: list[Rows]) -> Rows:
    return {name: np.concatenate([p[name] for p in parts]) for name in _COLUMNS}


def take(rows: Rows, index: np.ndarray) -> Rows:
    return {name: column[index] for name, column in rows.items()}


@dataclass(frozen=True)
class Clock:
    """The simulated window: day d runs from start + d * DAY; offsets are per place and day."""

    start: int  # epoch seconds
    days: int
    release_day: int  # day 0 counted from useragents.RELEASE_EPOCH
    weekend: np.ndarray  # (days,) bool, Saturday or Sunday
    offsets: np.ndarray  # (places, days) seconds east of UTC

    @classmethod
    def at(cls, start: datetime, days: int, pools: GeoPools) -> Clock:
        naive = start.replace(tzinfo=None)
        return cls(start=int(start.timestamp()), days=days,
                   release_day=(naive - useragents.RELEASE_EPOCH).days,
                   weekend=(naive.weekday() + np.arange(days)) % 7 >= 5,
                   offsets=pools.utc_offsets(naive, days))

    @property
    def end(self) -> int:
        return self.start + self.days * DAY


def _login_times(pop: Population, trips: Trips, clock: Clock, rng: np.random.Generator):
    """Login count per user-day (overdispersed), then a local hour from the user's peaks."""
    users, days = pop.size, clock.days
    mean = pop.rate[:, None] * np.where(clock.weekend, pop.weekend[:, None], 1.0)
    counts = rng.poisson(mean * rng.gamma(2.0, 0.5, (users, days))) * (trips.place != -2)
    cell = np.repeat(np.arange(users * days), counts.ravel())
    user, day = cell // days, cell % days
    peak = pick_columns(pop.peak_weight[user], rng)
    hour = rng.normal(pop.peak_hour[user, peak], pop.peak_sd[user, peak])
    hour = (hour + np.where(clock.weekend[day], 0.75, 0.0)) % 24  # weekends start later
    return user, day, hour


def _devices(pop: Population, user, day, hour, away, clock: Clock, rng: np.random.Generator):
    """Which of the user's devices: desktops on workdays, phones when away; then its id and UA."""
    family = pop.dev_family[user]
    mobile = useragents.MOBILE[family] & (family >= 0)
    workday = ~clock.weekend[day] & (hour >= 8.5) & (hour < 17.5) & ~away
    boost = np.where(mobile, np.where(away, 3.0, 1.0)[:, None],
                     np.where(workday, 2.0, 1.0)[:, None])
    slot = pick_columns(pop.dev_weight[user] * boost, rng)
    family = family[np.arange(len(user)), slot]
    changed = day >= pop.dev_change_day[user, slot]
    device = np.where(changed, pop.dev_new_key[user, slot], pop.dev_key[user, slot])
    lag = np.where(changed & pop.dev_upgrade[user, slot], 0, pop.dev_lag[user, slot])
    k = useragents.release(family, clock.release_day + day, pop.dev_phase[user, slot], lag)
    return device, useragents.ua_key(family, k), useragents.MOBILE[family], workday


def _ips(pop: Population, trips: Trips, pools: GeoPools, user, day, phone, workday, away,
         rng: np.random.Generator) -> np.ndarray:
    """Home broadband (address rotates per lease, shared within a household), office, hotel while away, mobile data anywhere in
    the home country (roaming is home-routed), and a VPN exit for VPN users."""
    n = len(user)
    lease = pop.lease_days[user]
    household = pop.household[user]  # one household, one address: it rotates for both at once
    home = pools.host_ips(pop.home_net[user], pop.home_host[user] + (day + household) // lease * 7919)
    work = pools.host_ips(np.maximum(pop.work_net[user], 0), pop.work_host[user])
    hotel = pools.host_ips(np.maximum(trips.net[user, day], 0), user * 131 + day)
    cell = phone & (rng.random(n) < pop.cell_share[user])
    carrier = pools.random_ips(pop.carrier_nets[user, rng.integers(0, 3, n)], rng)
    vpn = (pop.vpn_net[user] >= 0) & (rng.random(n) < pop.vpn_share[user])
    exit_ip = pools.random_ips(np.maximum(pop.vpn_net[user], 0), rng)
    ip = np.where(workday & ~phone & (pop.work_net[user] >= 0), work, home)
    ip = np.where(away, hotel, ip)
    ip = np.where(cell, carrier, ip)
    return np.where(vpn, exit_ip, ip)


def _logins(pop: Population, trips: Trips, pools: GeoPools, clock: Clock,
            rng: np.random.Generator) -> tuple[Rows, np.ndarray]:
    """Every login attempt that gets through (a few fail and are given up), with its place."""
    user, day, hour = _login_times(pop, trips, clock, rng)
    away = trips.place[user, day] >= 0
    place = np.where(away, trips.place[user, day], pop.home[user])
    ts = clock.start + day * DAY + (hour * 3600).astype(np.int64) - clock.offsets[place, day]
    device, ua, phone, workday = _devices(pop, user, day, hour, away, clock, rng)
    ip = _ips(pop, trips, pools, user, day, phone, workday, away, rng)
    success = rng.random(len(user)) >= 0.01
    rows = make_rows(len(user), user=user, ts=ts, ip=ip, ua=ua, device=device, success=success,
                     session=np.where(success, rng.integers(0, 1 << 62, len(user)), -1))
    inside = (ts >= clock.start) & (ts < clock.end)
    return take(rows, np.flatnonzero(inside)), place[inside]


def _typos(logins: Rows, pop: Population, rng: np.random.Generator) -> Rows:
    """A mistyped password shortly before a successful login, sometimes twice."""
    ok = np.flatnonzero(logins["success"])
    first = ok[rng.random(len(ok)) < pop.typo_rate[logins["user"][ok]]]
    second = first[rng.random(len(first)) < 0.15]
    gap = np.concatenate([rng.integers(8, 60, len(first)), rng.integers(70, 150, len(second))])
    rows = take(logins, np.concatenate([first, second]))
    rows["ts"] -= gap
    rows["success"][:] = False
    rows["session"][:] = -1                       # a failed sign-in opens no session
    return rows


def _in_session(logins: Rows, action: int, count: np.ndarray, rng: np.random.Generator) -> Rows:
    """`count[i]` events of `action` in the session opened by successful login i, seconds to
    minutes after it, from the same IP and device, carrying the session's aal1 and auth time."""
    rows = take(logins, np.repeat(np.arange(len(count)), count))
    rows["action"][:] = action
    rows["auth_ts"] = rows["ts"].copy()
    rows["ts"] += 2 + rng.gamma(1.5, 60.0, len(rows["ts"])).astype(np.int64)
    return rows


def _roaming(rows: Rows, pop: Population, pools: GeoPools, rng: np.random.Generator) -> Rows:
    """A few in-session actions come from another address than the sign-in (Wi-Fi to mobile data,
    an address the ISP renewed): the session's owner, on the same device and browser."""
    moved = rng.random(len(rows["user"])) < 0.03
    carrier = pools.random_ips(pop.carrier_nets[rows["user"], rng.integers(0, 3, len(moved))], rng)
    rows["ip"] = np.where(moved, carrier, rows["ip"])
    return rows


def _salary_day(logins: Rows, pop: Population, rng: np.random.Generator) -> Rows:
    """Rent or a big bill once a month, to the user's main payee: large, but to a known payee."""
    first = np.flatnonzero(rng.random(len(logins["user"])) < 0.04)
    rows = _in_session(take(logins, first), PAYMENT, np.ones(len(first), dtype=int), rng)
    rows["payee"] = pop.payees[rows["user"], 0]
    rows["amount"] = np.round(pop.amount_median[rows["user"]] * rng.uniform(8, 30, len(first)), 2)
    return rows


def _payments(rows: Rows, pop: Population, rng: np.random.Generator) -> Rows:
    """Amounts log-normal around the user's median, mostly to their habitual payees."""
    user = rows["user"]
    pick = np.minimum((rng.random(len(user))[:, None] >= pop.payee_cdf[user]).sum(axis=1),
                      MAX_PAYEES - 1)
    habitual = pop.payees[user, pick]
    one_off = rng.random(len(user)) < 0.06
    rows["payee"] = np.where(one_off, rng.integers(0, 1 << 48, len(user)), habitual)
    amount = rng.lognormal(np.log(pop.amount_median[user]), pop.amount_sigma[user])
    rows["amount"] = np.round(amount, 2)
    return rows


def _sessions(logins: Rows, pop: Population, pools: GeoPools, rng: np.random.Generator) -> list[Rows]:
    """Dashboard views and payments at the user's own rates; rare account changes; a new payee
    is usually paid right away (as an attacker would, which keeps that signal honest)."""
    user, n = logins["user"], len(logins["user"])
    payments = _in_session(logins, PAYMENT, rng.poisson(pop.payment_rate[user]), rng)
    parts = [_in_session(logins, DASHBOARD, rng.poisson(pop.dashboard_rate[user]), rng),
             _payments(payments, pop, rng)]
    for action, p in ((CHANGE_EMAIL, 0.002), (CHANGE_PASSWORD, 0.004), (EXPORT_DATA, 0.003)):
        parts.append(_in_session(logins, action, (rng.random(n) < p).astype(int), rng))
    added = _in_session(logins, ADD_PAYEE, (rng.random(n) < 0.015).astype(int), rng)
    added["payee"] = rng.integers(0, 1 << 48, len(added["user"]))
    paid = take(added, np.flatnonzero(rng.random(len(added["user"])) < 0.7))  # pay the new payee
    paid["action"][:] = PAYMENT
    paid["ts"] += rng.integers(20, 180, len(paid["ts"]))
    paid["amount"] = np.round(rng.lognormal(np.log(pop.amount_median[paid["user"]] * 2), 0.6), 2)
    return [_roaming(part, pop, pools, rng) for part in parts + [added, paid]] + [_salary_day(logins, pop, rng)]


def legit_rows(pop: Population, trips: Trips, pools: GeoPools, clock: Clock,
               rng: np.random.Generator) -> tuple[Rows, Rows, np.ndarray]:
    """All legitimate events, plus the successful logins (and their places) attacks build on."""
    logins, place = _logins(pop, trips, pools, clock, rng)
    ok = np.flatnonzero(logins["success"])
    successes = take(logins, ok)
    rows = concat_rows([logins, _typos(logins, pop, rng), *_sessions(successes, pop, pools, rng)])
    return rows, successes, place[ok]
