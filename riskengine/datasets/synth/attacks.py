"""Labelled attacks for synth.py, after the attacker models of Freeman et al. (NDSS 2016) and
Wiefling et al. (ACM TOPS 2022): what an attacker knows about the victim decides how close their
IP, User-Agent and device come to the victim's own. Attacks start only once a victim has history.
"""

from __future__ import annotations

import numpy as np

from riskengine.datasets.synth import useragents
from riskengine.datasets.synth.places import GeoPools
from riskengine.datasets.synth.legit import (ADD_PAYEE, CHANGE_EMAIL, CHANGE_PASSWORD, DASHBOARD, DAY,
                                    EXPORT_DATA, LOGIN, PAYMENT, Clock, Rows, take)
from riskengine.datasets.synth.users import NEVER, Population

ATTACK_CLASSES = ("legit", "naive", "vpn", "targeted", "very_targeted", "credential_stuffing",
                  "impossible_travel", "session_hijack_payment", "app_fraud", "mfa_fatigue",
                  "password_spraying", "sim_swap", "residential_proxy", "mid_session_hijack",
                  "scripted_client")
CODE = {name: code for code, name in enumerate(ATTACK_CLASSES)}
MIN_HISTORY = 1  # successful logins a victim has before any attack on them: new users get attacked too
# Incidents per user per 30 days (credential stuffing: bursts, each over many users).
RATES = {"naive": 0.055, "vpn": 0.055, "targeted": 0.05, "very_targeted": 0.045,
         "impossible_travel": 0.045, "session_hijack_payment": 0.05, "credential_stuffing": 0.006}
FAR_KM = 3000.0


class Attacks:
    """Writes the attack events of one stream into `records`, one dict per event."""

    def __init__(self, pop: Population, pools: GeoPools, clock: Clock, logins: Rows,
                 places: np.ndarray, rng: np.random.Generator):
        self.pop, self.pools, self.clock, self.rng = pop, pools, clock, rng
        order = np.lexsort((logins["ts"], logins["user"]))
        self.logins, self.places = take(logins, order), places[order]
        user = self.logins["user"]
        self.first = np.searchsorted(user, np.arange(pop.size))
        self.count = np.bincount(user, minlength=pop.size)
        enough = np.where(self.count >= MIN_HISTORY, self.first + MIN_HISTORY - 1, len(user))
        self.ready = np.append(self.logins["ts"], NEVER)[enough]  # when a user may first be attacked
        self.rank = np.arange(len(user)) - self.first[user]
        net_dc = pools.datacenter[pools.net_place]
        self.dc_nets, self.isp_nets = np.flatnonzero(net_dc), np.flatnonzero(~net_dc)
        self.isp_places = np.flatnonzero(~pools.datacenter)
        self.mules = rng.integers(0, 1 << 48, 40)  # money mules take payments from many victims
        self.records: list[dict] = []

    # --- building blocks -------------------------------------------------------------------
    def _ip(self, nets: np.ndarray) -> int:
        return int(self.pools.random_ips(np.array([self.rng.choice(nets)]), self.rng)[0])

    def _country_nets(self, place: int) -> np.ndarray:
        return np.flatnonzero(self.pools.country[self.pools.net_place] == self.pools.country[place])

    def _random_ua(self, t: int) -> int:
        return int(useragents.random_keys(1, self.clock.release_day + (t - self.clock.start) // DAY,
                                        self.rng)[0])

    def _new_device(self, p_cookie: float = 0.75) -> int:
        """A fresh device id, or none when the attacker's tool keeps no cookies."""
        return int(self.rng.integers(0, 1 << 62)) if self.rng.random() < p_cookie else -1

    def _last_login(self, victim: int, t: int) -> int:
        lo = self.first[victim]
        return lo + int(np.searchsorted(self.logins["ts"][lo:lo + self.count[victim]], t)) - 1

    def _emit(self, **event: object) -> None:
        self.records.append(event)

    def _big_amount(self, victim: int) -> float:
        return round(float(self.pop.amount_median[victim] * self.rng.lognormal(np.log(6), 0.7)), 2)

    def _loot(self, cls: str, victim: int, t: int, auth_ts: int, **origin: int) -> None:
        """What an attacker does once in: look around, pay a mule, lock the owner out, take data."""
        common = dict(user=victim, auth_ts=auth_ts, attack=CODE[cls], **origin)
        steps = []
        if self.rng.random() < 0.6:
            steps.append(dict(action=DASHBOARD))
        if self.rng.random() < 0.55:
            mule = int(self.rng.choice(self.mules))
            if self.rng.random() < 0.6:
                steps.append(dict(action=ADD_PAYEE, payee=mule))
            steps.append(dict(action=PAYMENT, payee=mule, amount=self._big_amount(victim)))
        for action, p in ((CHANGE_EMAIL, 0.25), (CHANGE_PASSWORD, 0.15), (EXPORT_DATA, 0.2)):
            if self.rng.random() < p:
                steps.append(dict(action=action))
        for step in steps:
            t += int(self.rng.integers(10, 240))
            self._emit(ts=t, **common, **step)

    def _session(self) -> int:
        return int(self.rng.integers(0, 1 << 62))

    def _takeover(self, cls: str, victim: int, t: int, p_fails: list[float], **origin: int) -> None:
        """Some wrong guesses, usually a successful login with the stolen password, then loot."""
        for _ in range(self.rng.choice(len(p_fails), p=p_fails)):
            self._emit(user=victim, action=LOGIN, ts=t, success=False, attack=CODE[cls], **origin)
            t += int(self.rng.integers(15, 120))
        if self.rng.random() < 0.9:
            session = self._session()
            self._emit(user=victim, action=LOGIN, ts=t, attack=CODE[cls], session=session, **origin)
            self._loot(cls, victim, t, auth_ts=t, session=session, **origin)

    # --- attacker models -------------------------------------------------------------------
    def _origin(self, cls: str, victim: int, last: int, t: int) -> dict[str, int]:
        """Freeman/Wiefling attackers: each knows a little more about the victim than the last."""
        home, ua = self.pop.home[victim], int(self.logins["ua"][last])
        if cls == "naive":  # anywhere, any browser
            return dict(ip=self._ip(np.arange(len(self.pools.net_base))), ua=self._random_ua(t),
                        device=self._new_device())
        if cls == "vpn":  # knows the victim's country
            return dict(ip=self._ip(self._country_nets(home)), ua=self._random_ua(t),
                        device=self._new_device())
        if cls == "targeted":  # ... and the browser and OS, not the exact versions
            k = useragents.key_release(ua) - int(self.rng.integers(1, 8))
            ua = int(useragents.ua_key(useragents.key_family(ua), k))
            return dict(ip=self._ip(self._country_nets(home)), ua=ua, device=self._new_device())
        # very_targeted: the victim's city or even ISP network, and their exact User-Agent
        nets = (np.array([self.pop.home_net[victim]]) if self.rng.random() < 0.5
                else self.pools.first[home] + np.arange(self.pools.count[home]))
        return dict(ip=self._ip(nets), ua=ua, device=int(self.rng.integers(0, 1 << 62)))

    def account_takeovers(self, cls: str, count: int) -> None:
        eligible = np.flatnonzero(self.ready < self.clock.end - 2 * 3600)
        if len(eligible) == 0:
            return
        for victim in self.rng.choice(eligible, count, replace=count > len(eligible)):
            t = int(self.rng.uniform(self.ready[victim] + 60, self.clock.end - 3600))
            origin = self._origin(cls, victim, self._last_login(victim, t), t)
            p_fails = [0.85, 0.1, 0.05, 0.0] if cls == "very_targeted" else [0.6, 0.2, 0.1, 0.1]
            self._takeover(cls, int(victim), t, p_fails, **origin)

    def _anchor_logins(self, count: int) -> np.ndarray:
        """Victim logins to attack right after: the victim already has MIN_HISTORY successes."""
        ok = np.flatnonzero((self.rank >= MIN_HISTORY - 1)
                            & (self.logins["ts"] < self.clock.end - 2 * 3600))
        return self.rng.choice(ok, count) if len(ok) else ok

    def impossible_travel(self, count: int) -> None:
        """Minutes after the victim logs in, the same account logs in from thousands of km away."""
        for i in self._anchor_logins(count):
            place, victim = self.places[i], int(self.logins["user"][i])
            far = self.isp_places[(self.pools.distance_km(place, self.isp_places) > FAR_KM)
                                  & (self.pools.country[self.isp_places] != self.pools.country[place])]
            nets = self.pools.random_nets(far, self.rng)
            t = int(self.logins["ts"][i] + self.rng.integers(5 * 60, 90 * 60))
            self._takeover("impossible_travel", victim, t, [0.8, 0.2], ip=self._ip(nets),
                           ua=self._random_ua(t), device=self._new_device())

    def session_hijack(self, count: int) -> None:
        """A stolen session cookie replayed from elsewhere to pay (or add) a mule payee."""
        for i in self._anchor_logins(count):
            victim, login_ts = int(self.logins["user"][i]), int(self.logins["ts"][i])
            net_country = self.pools.country[self.pools.net_place[self.isp_nets]]
            foreign = self.isp_nets[net_country != self.pools.country[self.places[i]]]
            t = login_ts + int(self.rng.integers(60, 1800))
            ua = int(self.logins["ua"][i]) if self.rng.random() < 0.5 else self._random_ua(t)
            common = dict(user=victim, auth_ts=login_ts, attack=CODE["session_hijack_payment"],
                          session=int(self.logins["session"][i]),
                          ip=self._ip(self.dc_nets if self.rng.random() < 0.5 else foreign), ua=ua,
                          device=self._new_device(0.6))
            mule, variant = int(self.rng.choice(self.mules)), self.rng.choice(3, p=[0.5, 0.3, 0.2])
            if variant >= 1:
                self._emit(action=ADD_PAYEE, ts=t, payee=mule, **common)
                t += int(self.rng.integers(15, 120))
            if variant <= 1:
                amount = self._big_amount(victim)
                self._emit(action=PAYMENT, ts=t, payee=mule, amount=amount, **common)

    def credential_stuffing(self, bursts: int) -> None:
        """One IP works through a leaked list: many accounts in minutes, nearly all failing."""
        ready = np.sort(self.ready[self.ready < self.clock.end - 2 * 3600])
        if len(ready) < 10:
            return
        earliest = ready[min(19, len(ready) - 1)] + 60
        for _ in range(bursts):
            t0 = int(self.rng.uniform(earliest, self.clock.end - 3600))
            eligible = np.flatnonzero(self.ready < t0)
            victims = self.rng.choice(eligible, min(int(self.rng.integers(15, 61)), len(eligible)),
                                      replace=False)
            nets = self.dc_nets if self.rng.random() < 0.6 else self.isp_nets
            origin = dict(ip=self._ip(nets), ua=self._random_ua(t0))
            gaps = self.rng.exponential(self.rng.uniform(1, 6), len(victims))  # seconds per account
            for victim, t in zip(victims.tolist(), (t0 + np.cumsum(gaps)).astype(int).tolist()):
                device = self._new_device(0.2)
                for attempt in range(self.rng.choice([1, 2], p=[0.8, 0.2])):
                    t, won = t + 3 * attempt, self.rng.random() < 0.03  # reused passwords work
                    session = self._session() if won else -1
                    self._emit(user=victim, action=LOGIN, ts=t, success=won, session=session,
                               attack=CODE["credential_stuffing"], device=device, **origin)
                    if won:
                        self._loot("credential_stuffing", victim, t, auth_ts=t, device=device,
                                   session=session, **origin)
                        break
