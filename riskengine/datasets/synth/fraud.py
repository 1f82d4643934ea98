"""Fraud that the classic attacker models (attacks.py) do not show: authorized push payments from
the owner's own session, MFA fatigue, low-and-slow password spraying, SIM swap and account
recovery, residential proxies in the victim's city, mid-session hijack and scripted clients.
"""

from __future__ import annotations

import numpy as np

from riskengine.datasets.synth.attacks import CODE, RATES, Attacks
from riskengine.datasets.synth.legit import (ADD_PAYEE, CHANGE_EMAIL, CHANGE_PASSWORD, CHANGE_PHONE, DASHBOARD,
                                             EXPORT_DATA, LOGIN, PAYMENT, Clock, Rows, rows_from_records)
from riskengine.datasets.synth.places import GeoPools
from riskengine.datasets.synth.users import Population

# Incidents per user per 30 days (password spraying: campaigns, each over many users).
FRAUD_RATES = {"app_fraud": 0.1, "mfa_fatigue": 0.015, "sim_swap": 0.02, "residential_proxy": 0.05,
               "mid_session_hijack": 0.025, "scripted_client": 0.015, "password_spraying": 0.003}


class Fraud(Attacks):
    """The newer attacker playbooks, on the same victims, places and clock as ``Attacks``."""

    def _mule_payment(self, victim: int, scale: float = 6.0) -> dict:
        amount = round(float(self.pop.amount_median[victim] * self.rng.lognormal(np.log(scale), 0.6)), 2)
        return dict(action=PAYMENT, payee=int(self.rng.choice(self.mules)), amount=amount)

    def _steps(self, t: int, steps: list[dict], gap: tuple[int, int], **common: int) -> int:
        for step in steps:
            t += int(self.rng.integers(*gap))
            self._emit(ts=t, **common, **step)
        return t

    def _victims(self, count: int) -> np.ndarray:
        eligible = np.flatnonzero(self.ready < self.clock.end - 2 * 3600)
        if len(eligible) == 0:
            return eligible
        return self.rng.choice(eligible, count, replace=count > len(eligible))

    def _when(self, victim: int) -> int:
        return int(self.rng.uniform(self.ready[victim] + 60, self.clock.end - 3600))

    def app_fraud(self, count: int) -> None:
        """A scammer talks the owner into paying: their own device, address and session; only the
        amount and the new payee are odd."""
        for i in self._anchor_logins(count):
            victim = int(self.logins["user"][i])
            common = dict(user=victim, auth_ts=int(self.logins["ts"][i]), session=int(self.logins["session"][i]),
                          ip=int(self.logins["ip"][i]), ua=int(self.logins["ua"][i]),
                          device=int(self.logins["device"][i]), attack=CODE["app_fraud"])
            payment = self._mule_payment(victim, scale=20.0)
            steps = ([dict(action=ADD_PAYEE, payee=payment["payee"])] if self.rng.random() < 0.6 else []) + [payment]
            self._steps(int(self.logins["ts"][i]), steps, (60, 900), **common)

    def mfa_fatigue(self, count: int) -> None:
        """The password is known; the second factor is not: sign-in after sign-in, each step-up
        refused, until the owner gives in (sometimes) and the attacker loots."""
        for victim in self._victims(count):
            victim, t = int(victim), self._when(int(victim))
            origin = dict(ip=self._ip(self._country_nets(self.pop.home[victim])), ua=self._random_ua(t),
                          device=self._new_device())
            for _ in range(int(self.rng.integers(3, 9))):
                session = self._session()
                self._emit(user=victim, action=LOGIN, ts=t, session=session, attack=CODE["mfa_fatigue"], **origin)
                t += int(self.rng.integers(30, 240))
            if self.rng.random() < 0.3:
                self._loot("mfa_fatigue", victim, t, auth_ts=t, session=session, **origin)

    def password_spraying(self, campaigns: int) -> None:
        """Low and slow: one or two common passwords per account, each try from another residential
        address, spread over hours so no address or account looks busy."""
        for _ in range(campaigns):
            victims = self._victims(int(self.rng.integers(20, 61)))
            if len(victims) == 0:
                return
            t0 = int(self.rng.uniform(self.ready[victims].max() + 60, self.clock.end - 3600)) \
                if self.ready[victims].max() + 60 < self.clock.end - 3600 else self.clock.end - 3600
            span = self.rng.uniform(6, 48) * 3600
            for victim, t in zip(victims.tolist(), np.sort(t0 + self.rng.uniform(0, span, len(victims))).tolist()):
                t = int(min(t, self.clock.end - 600))
                origin = dict(ip=self._ip(self.isp_nets), ua=self._random_ua(t), device=self._new_device(0.1))
                won = self.rng.random() < 0.02
                session = self._session() if won else -1
                self._emit(user=victim, action=LOGIN, ts=t, success=won, session=session,
                           attack=CODE["password_spraying"], **origin)
                if won:
                    self._loot("password_spraying", victim, t, auth_ts=t, session=session, **origin)

    def sim_swap(self, count: int) -> None:
        """The victim's number moved to the attacker's SIM: account recovery on the victim's own
        carrier, then the phone or e-mail changed, then money out."""
        for victim in self._victims(count):
            victim, t = int(victim), self._when(int(victim))
            carrier = self.pop.carrier_nets[victim, int(self.rng.integers(0, 3))]
            session = self._session()
            origin = dict(ip=self._ip(np.array([carrier])), ua=self._random_ua(t), device=self._new_device(0.9))
            self._emit(user=victim, action=LOGIN, ts=t, session=session, attack=CODE["sim_swap"], **origin)
            change = CHANGE_PHONE if self.rng.random() < 0.5 else CHANGE_EMAIL
            steps = [dict(action=change)] + ([dict(action=CHANGE_PASSWORD)] if self.rng.random() < 0.4 else [])
            steps.append(self._mule_payment(victim))
            self._steps(t, steps, (20, 300), user=victim, auth_ts=t, session=session, attack=CODE["sim_swap"],
                        **origin)

    def residential_proxy(self, count: int) -> None:
        """A proxy on a home connection in the victim's own city, the victim's exact User-Agent."""
        for victim in self._victims(count):
            victim, t = int(victim), self._when(int(victim))
            home = self.pop.home[victim]
            nets = self.pools.first[home] + np.arange(self.pools.count[home])
            others = nets[nets != self.pop.home_net[victim]]
            last = self._last_login(victim, t)
            origin = dict(ip=self._ip(others if len(others) else nets), ua=int(self.logins["ua"][last]),
                          device=self._new_device())
            self._takeover("residential_proxy", victim, t, [0.8, 0.15, 0.05], **origin)

    def mid_session_hijack(self, count: int) -> None:
        """The owner signed in; minutes later their session goes on from another address and
        browser (a stolen cookie), to add a payee and pay it, or take the account."""
        for i in self._anchor_logins(count):
            victim, login_ts = int(self.logins["user"][i]), int(self.logins["ts"][i])
            t = login_ts + int(self.rng.integers(120, 2400))
            nets = self._country_nets(self.places[i]) if self.rng.random() < 0.5 else self.dc_nets
            device = int(self.logins["device"][i]) if self.rng.random() < 0.5 else self._new_device(0.5)
            common = dict(user=victim, auth_ts=login_ts, session=int(self.logins["session"][i]), ip=self._ip(nets),
                          ua=self._random_ua(t), device=device, attack=CODE["mid_session_hijack"])
            payment = self._mule_payment(victim)
            steps = ([dict(action=ADD_PAYEE, payee=payment["payee"]), payment] if self.rng.random() < 0.7
                     else [dict(action=CHANGE_EMAIL)])
            self._steps(t, steps, (10, 120), **common)

    def scripted_client(self, count: int) -> None:
        """A script with the stolen password: no User-Agent, no cookie, a datacenter address, and
        payments or exports seconds apart."""
        for victim in self._victims(count):
            victim, t = int(victim), self._when(int(victim))
            session = self._session()
            origin = dict(ip=self._ip(self.dc_nets), ua=-1, device=-1)
            self._emit(user=victim, action=LOGIN, ts=t, session=session, attack=CODE["scripted_client"], **origin)
            steps = ([self._mule_payment(victim, 3.0) for _ in range(int(self.rng.integers(2, 6)))]
                     if self.rng.random() < 0.7 else [dict(action=DASHBOARD), dict(action=EXPORT_DATA)])
            self._steps(t, steps, (2, 20), user=victim, auth_ts=t, session=session,
                        attack=CODE["scripted_client"], **origin)


def attack_rows(pop: Population, pools: GeoPools, clock: Clock, logins: Rows, places: np.ndarray,
                rng: np.random.Generator) -> Rows:
    """Every attack class at its rate; streams of 100+ user-months get at least one of each."""
    attacks = Fraud(pop, pools, clock, logins, places, rng)
    scale = pop.size * clock.days / 30
    rates = RATES | FRAUD_RATES

    def count(cls: str) -> int:
        return max(int(scale >= 100), int(rng.poisson(rates[cls] * scale)))

    for cls in ("naive", "vpn", "targeted", "very_targeted"):
        attacks.account_takeovers(cls, count(cls))
    attacks.impossible_travel(count("impossible_travel"))
    attacks.session_hijack(count("session_hijack_payment"))
    attacks.credential_stuffing(count("credential_stuffing"))
    for cls in FRAUD_RATES:
        getattr(attacks, cls)(count(cls))
    return rows_from_records(attacks.records)
