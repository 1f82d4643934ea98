"""PSD2 RTS Art. 19: the fraud rate transaction-risk-analysis exemptions depend on, read from the
store's executed payments and their labels, and reused briefly because scanning 90 days of payments
on every payment would not scale."""

from __future__ import annotations

import time

from riskengine.stores import ProfileStore

_KEPT = 256


class FraudRates:
    """``rate(actions, currency, since, until)``: fraud by value among executed payments of ``actions``.

    A computed rate is reused for ``cache_s`` within the same hour of event time (the window is 90
    days; an hour moves it little). A new label changes it: ``forget()``.
    """

    def __init__(self, store: ProfileStore, cache_s: float = 60.0) -> None:
        self._store, self.cache_s = store, cache_s
        self._rates: dict[tuple, tuple[float, float | None]] = {}

    def rate(self, actions: tuple[str, ...], currency: str, since: float, until: float) -> float | None:
        key = (actions, currency, since // 3600, until // 3600)
        now = time.monotonic()
        cached = self._rates.get(key)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        rate = self._store.payment_totals(actions, currency, since, until).fraud_rate
        if len(self._rates) > _KEPT:
            self._rates.clear()
        self._rates[key] = (now, rate)
        return rate

    def forget(self) -> None:
        self._rates.clear()
