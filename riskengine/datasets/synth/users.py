"""Synthetic users for synth.py: where each one lives and travels, their networks, devices, login
rhythm and money habits, drawn once per user so their events are consistent and learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from riskengine.datasets.synth import useragents
from riskengine.datasets.synth.places import GeoPools

# Currency and a rough EUR exchange rate per home country (EUR elsewhere), so amounts look local.
CURRENCY = {"US": ("USD", 1.1), "CA": ("CAD", 1.5), "GB": ("GBP", 0.85), "SE": ("SEK", 11.0),
            "NO": ("NOK", 11.5), "PL": ("PLN", 4.3), "CH": ("CHF", 0.95), "BR": ("BRL", 6.0),
            "JP": ("JPY", 160.0), "AU": ("AUD", 1.7), "IN": ("INR", 95.0)}
IPHONE_SHARE = {"US": 0.57, "CA": 0.55, "GB": 0.5, "JP": 0.65, "AU": 0.55, "SE": 0.5, "NO": 0.55,
                "CH": 0.55, "IN": 0.05, "BR": 0.15, "PL": 0.2, "ES": 0.25, "IT": 0.3}
MAX_DEVICES = 3
MAX_PAYEES = 5
HOUSEHOLD_SHARE = 0.15  # users who live with another user: one home connection, one family device
NEVER = np.iinfo(np.int64).max
_DEVICE_COLUMNS = ("dev_family", "dev_phase", "dev_lag", "dev_key", "dev_change_day", "dev_new_key", "dev_upgrade")


@dataclass(frozen=True)
class Population:
    """Per-user habits as arrays indexed by user number (rows), slots as columns."""

    home: np.ndarray  # place
    currency: np.ndarray  # ISO 4217 code
    home_net: np.ndarray  # residential ISP network
    home_host: np.ndarray  # seed of the (slowly rotating) home address
    lease_days: np.ndarray  # the ISP hands out a new address this often
    work_net: np.ndarray  # office network, -1 for none
    work_host: np.ndarray
    carrier_nets: np.ndarray  # (users, 3) mobile-carrier networks across the home country
    cell_share: np.ndarray  # share of phone logins over mobile data
    vpn_net: np.ndarray  # VPN exit (a datacenter network), -1 for none
    vpn_share: np.ndarray
    rate: np.ndarray  # logins per weekday
    weekend: np.ndarray  # weekend rate multiplier
    peak_hour: np.ndarray  # (users, 3) morning / midday / evening peaks, local time
    peak_sd: np.ndarray
    peak_weight: np.ndarray
    dev_family: np.ndarray  # (users, MAX_DEVICES) synth_ua family, -1 for an empty slot
    dev_weight: np.ndarray
    dev_phase: np.ndarray  # days after a release the device updates
    dev_lag: np.ndarray  # releases behind
    dev_key: np.ndarray  # device_id number
    dev_change_day: np.ndarray  # day the device is replaced or its cookie is cleared (NEVER)
    dev_new_key: np.ndarray  # device_id number from that day on
    dev_upgrade: np.ndarray  # the change is a new phone (latest release), not a cleared cookie
    typo_rate: np.ndarray
    dashboard_rate: np.ndarray  # view_dashboard per session
    payment_rate: np.ndarray  # payments per session
    amount_median: np.ndarray  # local currency
    amount_sigma: np.ndarray
    payees: np.ndarray  # (users, MAX_PAYEES) habitual payee numbers
    payee_cdf: np.ndarray  # (users, MAX_PAYEES) cumulative choice probabilities
    household: np.ndarray  # the user whose home connection and family device this one shares (self: none)

    @property
    def size(self) -> int:
        return len(self.home)


def pick_columns(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row, with probability proportional to that row's weights."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), weights.shape[1] - 1)


def _networks(home: np.ndarray, pools: GeoPools, rng: np.random.Generator) -> dict:
    """Home ISP in the home city, an office network for some, a mobile carrier (networks across
    the country, as carrier-grade NAT looks to GeoIP) and, for a few, a VPN exit in a datacenter."""
    n = len(home)
    home_net = pools.random_nets(home, rng)
    other = pools.random_nets(home, rng)  # an office in the same city, on another network
    has_work = (rng.random(n) < 0.4) & (other != home_net)
    countries = pools.country[home]
    carriers = np.stack([pools.random_country_nets(countries, rng) for _ in range(3)], axis=1)
    dc_nets = np.flatnonzero(pools.datacenter[pools.net_place])
    has_vpn = rng.random(n) < 0.06
    return dict(
        home_net=home_net, home_host=rng.integers(0, 1 << 31, n),
        lease_days=rng.choice([7, 14, 30, 90, 365], n, p=[0.1, 0.2, 0.3, 0.2, 0.2]),
        work_net=np.where(has_work, other, -1), work_host=rng.integers(0, 1 << 31, n),
        carrier_nets=carriers, cell_share=rng.beta(2, 2, n),
        vpn_net=np.where(has_vpn, rng.choice(dc_nets, n), -1), vpn_share=rng.uniform(0.3, 0.95, n))


def _devices(countries: np.ndarray, days: int, rng: np.random.Generator) -> dict:
    """One to three devices with local iPhone/Android shares; some get replaced (new phone: new id
    and latest release) or lose their cookie (new id, same browser) during the window."""
    n, slots = len(countries), (len(countries), MAX_DEVICES)
    count = rng.choice([1, 2, 3], n, p=[0.3, 0.45, 0.25])
    mobile = rng.random(slots) < np.array([0.6, 0.35, 0.35])
    iphone = rng.random(slots) < np.array([IPHONE_SHARE.get(c, 0.35) for c in countries])[:, None]
    family = np.where(mobile, np.where(iphone, useragents.IOS, useragents.ANDROID),
                      useragents.desktop_families(n * MAX_DEVICES, rng).reshape(slots))
    family = np.where(np.arange(MAX_DEVICES) < count[:, None], family, -1)
    period = useragents.PERIOD[np.maximum(family, 0)]
    lag = np.minimum(rng.geometric(np.where(family == useragents.IOS, 0.45, 0.7)) - 1, 10)
    changes = rng.random(slots) < 0.05 * days / 30
    weight = rng.gamma(1.0, size=slots) * np.array([2.0, 1.0, 1.0])  # slot 0: the main device
    return dict(
        dev_family=family, dev_weight=np.where(family >= 0, weight, 0.0),
        dev_phase=rng.integers(0, period), dev_lag=lag, dev_key=rng.integers(0, 1 << 62, slots),
        dev_change_day=np.where(changes, rng.integers(0, days, slots), NEVER),
        dev_new_key=rng.integers(0, 1 << 62, slots),
        dev_upgrade=mobile & (rng.random(slots) < 0.6))


def _rhythm(n: int, rng: np.random.Generator) -> dict:
    """How often and when (local time) each user logs in: morning, midday and evening peaks."""
    return dict(
        rate=rng.lognormal(np.log(0.75), 0.6, n), weekend=rng.uniform(0.4, 1.5, n),
        peak_hour=np.stack([rng.normal(7.6, 0.8, n), rng.normal(12.8, 0.8, n),
                            rng.normal(20.3, 1.2, n)], axis=1),
        peak_sd=np.stack([rng.uniform(0.5, 1.2, n), rng.uniform(0.8, 1.5, n),
                          rng.uniform(0.8, 2.0, n)], axis=1),
        peak_weight=rng.dirichlet([1.5, 1.0, 2.0], n))


def _money(countries: np.ndarray, rng: np.random.Generator) -> dict:
    """Session habits, a personal amount median in local currency, a few habitual payees."""
    n = len(countries)
    currency, fx = zip(*(CURRENCY.get(c, ("EUR", 1.0)) for c in countries))
    count = rng.integers(1, MAX_PAYEES + 1, n)
    weights = np.where(np.arange(MAX_PAYEES) < count[:, None],
                       1.0 / np.arange(1, MAX_PAYEES + 1) ** 1.2, 0.0)
    return dict(
        currency=np.array(currency, dtype=object),
        typo_rate=rng.beta(1.2, 25, n), dashboard_rate=rng.uniform(0.4, 1.6, n),
        payment_rate=rng.gamma(2.0, 0.12, n),
        amount_median=rng.lognormal(np.log(45), 0.8, n) * np.array(fx), amount_sigma=rng.uniform(0.3, 0.9, n),
        payees=rng.integers(0, 1 << 48, (n, MAX_PAYEES)),
        payee_cdf=np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True))


def _households(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of users under one roof: (heads, partners)."""
    pairs = int(n * HOUSEHOLD_SHARE / 2)
    chosen = rng.permutation(n)[:2 * pairs]
    return chosen[:pairs], chosen[pairs:]


def _share_home(fields: dict, heads: np.ndarray, partners: np.ndarray) -> None:
    """Legitimate and odd-looking: the partner is on the head's broadband and also uses the head's
    main device (same id, same browser) beside their own, so one device and one address serve two
    accounts."""
    household = np.arange(len(fields["home"]))
    household[partners] = heads
    fields["household"] = household
    for name in ("home_net", "home_host", "lease_days"):
        fields[name][partners] = fields[name][heads]
    # the family device takes the partner's last slot (an empty one if they have fewer devices)
    slot = np.minimum((fields["dev_family"][partners] >= 0).sum(axis=1), MAX_DEVICES - 1)
    for name in _DEVICE_COLUMNS:
        fields[name][partners, slot] = fields[name][heads, 0]
    fields["dev_weight"][partners, slot] = np.maximum(fields["dev_weight"][partners, slot], 0.5)


def draw_population(n: int, days: int, pools: GeoPools, rng: np.random.Generator) -> Population:
    """Users spread over the home cities in proportion to their home weights; some share a home."""
    p = pools.home_weight / pools.home_weight.sum()
    home = rng.choice(len(p), size=n, p=p)
    heads, partners = _households(n, rng)
    home[partners] = home[heads]
    countries = pools.country[home]
    fields = dict(home=home, **_networks(home, pools, rng), **_rhythm(n, rng),
                  **_devices(countries, days, rng), **_money(countries, rng))
    _share_home(fields, heads, partners)
    return Population(**fields)


@dataclass(frozen=True)
class Trips:
    """Where each user is on each day: -1 at home, -2 travelling, else the place visited."""

    place: np.ndarray  # (users, days)
    net: np.ndarray  # (users, days) hotel / local network while away


def draw_trips(pop: Population, days: int, pools: GeoPools, rng: np.random.Generator) -> Trips:
    """Some users travel: transit days, days at the destination, transit days back. Transit days
    carry no logins, so even the longest flight fits between the last login at home and the next."""
    place = np.full((pop.size, days), -1, dtype=np.int64)
    net = np.full((pop.size, days), -1, dtype=np.int64)
    traveller = rng.random(pop.size) < 0.5
    counts = rng.poisson(np.where(traveller, rng.exponential(0.6, pop.size), 0.0) * days / 30)
    users = np.repeat(np.arange(pop.size), counts)
    starts = rng.integers(0, days, len(users))
    abroad = rng.random(len(users)) < 0.3
    lengths = np.where(abroad, rng.integers(5, 13, len(users)), rng.integers(3, 10, len(users)))
    isp = np.flatnonzero(~pools.datacenter)
    free_until = np.zeros(pop.size, dtype=np.int64)
    for user, start, length, foreign in zip(users, starts, lengths, abroad):
        if start < free_until[user]:
            continue  # trips do not overlap
        home = pop.home[user]
        same = pools.country[isp] == pools.country[home]
        options = isp[(~same if foreign else same) & (isp != home)]
        if len(options) == 0:
            options = isp[isp != home]
        dest = options[rng.integers(len(options))]
        end = min(start + length, days)
        place[user, start:end] = dest
        net[user, start:end] = pools.random_nets(np.array([dest]), rng)[0]
        transit = 2 if foreign else 1  # eastward flights eat up to a day of time zones
        place[user, start : start + transit] = -2
        place[user, max(end - transit, start) : end] = -2
        free_until[user] = end + 1
    return Trips(place=place, net=net)
