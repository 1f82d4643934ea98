"""PSD2 RTS Art. 19's fraud-rate inputs, as one pure rule over recorded events: which payments
were executed, and how much of that was later confirmed as fraud. Stores only select the events
of a window; SQLite's SQL form of the rule is checked against this one by the store contract suite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: outcomes that show a stepped-up event went ahead (the step-up was passed, or it happened)
EXECUTED_OUTCOMES = ("step_up_passed", "confirmed_fraud", "confirmed_legit")


@dataclass(frozen=True, slots=True)
class PaymentTotals:
    """Executed payments of some actions in a window (allowed, or stepped up and then settled by
    feedback), and the part later confirmed as fraud."""

    count: int = 0
    amount: float = 0.0
    fraud_count: int = 0
    fraud_amount: float = 0.0

    @property
    def fraud_rate(self) -> float | None:
        """Fraud by value; None when there was nothing to measure."""
        return self.fraud_amount / self.amount if self.amount > 0 else None


def executed(verdict: str | None, outcome: str | None) -> bool:
    """Did the payment go ahead? Allowed at once, or stepped up and then passed or settled.

    >>> executed("allow", None), executed("step_up", None), executed("step_up", "step_up_passed")
    (True, False, True)
    """
    return verdict == "allow" or (verdict == "step_up" and outcome in EXECUTED_OUTCOMES)


def payment_totals(events: Iterable[tuple[dict[str, Any], dict[str, Any], str | None]],
                   actions: tuple[str, ...], currency: str) -> PaymentTotals:
    """Fold (request, decision, outcome) of a window's events into its totals.

    >>> pay = {"action": "payment", "amount": 10, "currency": "EUR"}
    >>> payment_totals([(pay, {"decision": "allow"}, "confirmed_fraud"),
    ...                 (pay, {"decision": "step_up"}, None)], ("payment",), "EUR")
    PaymentTotals(count=1, amount=10.0, fraud_count=1, fraud_amount=10.0)
    """
    count, amount, fraud_count, fraud_amount = 0, 0.0, 0, 0.0
    for request, decision, outcome in events:
        value = request.get("amount")
        if (request.get("action") not in actions or value is None or request.get("currency") != currency
                or not executed(decision.get("decision"), outcome)):
            continue
        count, amount = count + 1, amount + float(value)
        if outcome == "confirmed_fraud":
            fraud_count, fraud_amount = fraud_count + 1, fraud_amount + float(value)
    return PaymentTotals(count, amount, fraud_count, fraud_amount)
