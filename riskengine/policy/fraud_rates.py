"""PSD2 RTS Art. 19: the fraud rate transaction-risk-analysis exemptions depend on, read from the
store's executed payments and their labels, and reused briefly because scanning 90 days of payments
on every payment would not scale. Read off the event loop, before deciding: ``decide`` itself only
looks the rates up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from riskengine.events import Event
from riskengine.policy.exemptions import FraudRate, RateQuery

if TYPE_CHECKING:
    from riskengine.policy.decide import Policy
    from riskengine.stores import ProfileStore

_KEPT = 256


class FraudRates:
    """Fraud by value among executed payments of some actions, per (actions, currency, window).

    A computed rate is reused for ``cache_s`` within the same hour of event time (the window is 90
    days; an hour moves it little). A new label changes it: ``forget()``.
    """

    def __init__(self, store: ProfileStore, cache_s: float = 60.0) -> None:
        self._store, self.cache_s = store, cache_s
        self._rates: dict[tuple, tuple[float, float | None]] = {}

    async def for_event(self, policy: Policy, event: Event) -> FraudRate:
        """What ``policy.decide`` may ask about ``event``, read now (on a store thread when not
        fresh), as a lookup that never touches the store. A query not read answers None: no
        exemption, so the payment gets strong authentication."""
        rates = {query: await self._rate(query) for query in policy.fraud_rate_queries(event)}
        return lambda *query: rates.get(query)

    async def _rate(self, query: RateQuery) -> float | None:
        actions, currency, since, until = query
        key = (actions, currency, since // 3600, until // 3600)
        now = time.monotonic()
        cached = self._rates.get(key)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        totals = await self._store.blocking(self._store.payment_totals, actions, currency, since, until)
        if len(self._rates) > _KEPT:
            self._rates.clear()
        self._rates[key] = (now, totals.fraud_rate)
        return totals.fraud_rate

    def forget(self) -> None:
        self._rates.clear()
