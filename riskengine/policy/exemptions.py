"""Regulatory exemptions a policy may apply in step 6 (decide): PSD2 RTS Art. 16 and Art. 18.

Pure functions of the event, the user's counters since the last strong customer
authentication (kept in the profile) and the provider's fraud rate, which the
engine computes from recorded ``confirmed_fraud`` feedback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from riskengine.events import Event
from riskengine.profiles import DAY, UserProfile

#: (actions, currency, since, until) -> fraud value / total value of those payments, or None without volume
FraudRate = Callable[[tuple[str, ...], str, float, float], "float | None"]
#: what a ``FraudRate`` is asked: (actions, currency, since, until)
RateQuery = tuple[tuple[str, ...], str, float, float]
_RATE_TOLERANCE = 1e-9          # 13 / 10_000 must meet a 0.13 % reference despite float rounding


@dataclass(frozen=True, slots=True)
class LowValue:
    """RTS Art. 16: at most ``max_amount``, and (this one included) at most ``max_cumulative_amount``
    and ``max_count`` payments since the user's last SCA.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)
    >>> rule = LowValue("psd2_low_value", sca_level=1)
    >>> pay = lambda amount: Event("e", "u", "payment", at, "192.0.2.1", amount=amount, currency="EUR")
    >>> rule.applies(pay(30.0), "low", (0.0, 0)), rule.applies(pay(30.01), "low", (0.0, 0))
    (True, False)
    >>> rule.applies(pay(20.0), "low", (80.0, 2)), rule.applies(pay(20.01), "low", (80.0, 2))
    (True, False)
    >>> rule.applies(pay(1.0), "low", (10.0, 4)), rule.applies(pay(1.0), "low", (10.0, 5))
    (True, False)
    """

    name: str
    sca_level: int                                  # rank of the weakest level that counts as SCA
    currency: str = "EUR"
    max_amount: float = 30.0
    max_cumulative_amount: float | None = 100.0
    max_count: int | None = 5
    risk_levels: tuple[str, ...] = ("low",)

    def applies(self, event: Event, risk_level: str, since_sca: tuple[float, int]) -> bool:
        if not _eligible(event, risk_level, self.risk_levels, self.currency) or event.amount > self.max_amount:
            return False
        amount, count = since_sca
        if self.max_cumulative_amount is not None and amount + event.amount > self.max_cumulative_amount + 1e-9:
            return False
        return self.max_count is None or count + 1 <= self.max_count


@dataclass(frozen=True, slots=True)
class Threshold:
    """One row of the RTS Annex: at or below ``fraud_rate`` (a share: 0.0013 is 0.13 %),
    payments up to ``up_to`` may skip SCA."""

    fraud_rate: float
    up_to: float


CARD = (Threshold(0.0013, 100.0), Threshold(0.0006, 250.0), Threshold(0.0001, 500.0))
CREDIT_TRANSFER = (Threshold(0.00015, 100.0), Threshold(0.0001, 250.0), Threshold(0.00005, 500.0))


@dataclass(frozen=True, slots=True)
class RiskAnalysis:
    """RTS Art. 18 transaction risk analysis: risk low and amount within the exemption
    threshold value the provider's fraud rate (Art. 19, by value, rolling ``window_days``)
    earns for that payment type.

    >>> tra = RiskAnalysis("psd2_tra", {"card": ("payment",)}, {"card": CARD})
    >>> [tra.threshold("card", rate) for rate in (0.0001, 0.0005, 0.0013, 0.0014)]
    [500.0, 250.0, 100.0, None]
    """

    name: str
    kinds: Mapping[str, tuple[str, ...]]          # payment type -> actions of that type
    rates: Mapping[str, tuple[Threshold, ...]]    # payment type -> reference fraud rates
    currency: str = "EUR"
    window_days: float = 90.0
    risk_levels: tuple[str, ...] = ("low",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "rates", MappingProxyType(dict(self.rates)))

    def kind_of(self, action: str) -> str | None:
        return next((kind for kind, actions in self.kinds.items() if action in actions), None)

    def threshold(self, kind: str, fraud_rate: float) -> float | None:
        """The highest threshold value whose reference rate the provider's rate meets, if any."""
        met = [t.up_to for t in self.rates.get(kind, ()) if fraud_rate <= t.fraud_rate * (1 + _RATE_TOLERANCE)]
        return max(met) if met else None

    def query(self, event: Event) -> RateQuery | None:
        """The fraud rate ``applies`` would ask for this event at an eligible risk level, if any: the
        engine reads it off the event loop before deciding (policy/fraud_rates.py)."""
        kind = self.kind_of(event.action)
        if kind is None or not _payable(event, self.currency):
            return None
        return self.kinds[kind], self.currency, event.ts - self.window_days * DAY, event.ts

    def applies(self, event: Event, risk_level: str, fraud_rate: FraudRate | None) -> bool:
        if fraud_rate is None or risk_level not in self.risk_levels or (query := self.query(event)) is None:
            return False
        rate = fraud_rate(*query)
        if rate is None:
            return False                          # no payments in the window: no rate to earn an exemption
        limit = self.threshold(self.kind_of(event.action) or "", rate)
        return limit is not None and event.amount is not None and event.amount <= limit


Exemption = LowValue | RiskAnalysis


def _eligible(event: Event, risk_level: str, risk_levels: tuple[str, ...], currency: str) -> bool:
    return risk_level in risk_levels and _payable(event, currency)


def _payable(event: Event, currency: str) -> bool:
    """A payment an exemption may cover: an amount, in its currency, that went through."""
    return event.amount is not None and event.currency == currency and event.success


# -- counters since the last SCA, kept in the profile --------------------------

def session_sca_at(event: Event, sca_level: int, level_of: Callable[[str | None], int | None]) -> float | None:
    """When the session last passed SCA, if its ``acr`` is SCA-grade and its ``auth_time`` not in the future."""
    rank = level_of(event.session.acr)
    auth_time = event.session.auth_time
    if rank is None or rank < sca_level or auth_time is None or auth_time > event.timestamp:
        return None
    return auth_time.timestamp()


def resets(profile: UserProfile, sca_at: float | None) -> bool:
    """Does an SCA at ``sca_at`` start the counts again? Only if it is newer than the last one known
    and than every payment counted: an SCA between counted payments cannot take back the later ones."""
    return sca_at is not None and all(t is None or sca_at > t for t in (profile.last_sca_at,
                                                                         profile.since_sca_paid_at))


def since_sca(profile: UserProfile, sca_at: float | None) -> tuple[float, int]:
    """Amount and count of payments made without SCA since the last one (a newer session SCA resets)."""
    if resets(profile, sca_at):
        return 0.0, 0
    return profile.since_sca_amount, profile.since_sca_count


def sca_passed(profile: UserProfile, at: float) -> UserProfile:
    """The user passed SCA at ``at``: the low-value counters start again."""
    new = profile.copy()
    if new.last_sca_at is None or at > new.last_sca_at:
        new.last_sca_at, new.since_sca_amount, new.since_sca_count, new.since_sca_paid_at = at, 0.0, 0, None
    return new


def paid_without_sca(profile: UserProfile, amount: float, at: float) -> UserProfile:
    new = profile.copy()
    new.since_sca_amount += amount
    new.since_sca_count += 1
    new.since_sca_paid_at = at if new.since_sca_paid_at is None else max(new.since_sca_paid_at, at)
    return new
