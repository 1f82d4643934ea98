"""The profile-store interface every implementation (memory, SQLite, Redis) honours.

One ``commit`` writes a user's new profile, the per-IP and global counters, the
recorded event and its audit record together, or nothing: a 200 implies all.
Stores take ``audit_key`` (bytes or None): the key that seals audit records and anchors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import orjson

from riskengine.audit.chain import Anchor, AuditRow
from riskengine.profiles import UserProfile

IP_WINDOW_S = 3600.0


def dumps(value: Any) -> str:
    """Compact JSON for stored events and profiles (orjson: a tenth of ``json.dumps``' time on the
    hot path). A NaN feature (a signal with nothing to measure) is stored as null; readers map it back."""
    return orjson.dumps(value).decode()


class Conflict(Exception):
    """Another writer updated this user first; the caller recomputes and retries."""


class DuplicateEvent(Exception):
    """The event id was recorded by a concurrent request; answer with the stored decision."""


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the service answers 503, never a guess."""


@dataclass(frozen=True, slots=True)
class IpActivity:
    failures: int = 0
    distinct_users: int = 0


@dataclass(frozen=True, slots=True)
class GlobalCount:
    """Population statistics for one Freeman attribute value: p(value) needs all three."""

    count: float = 0.0
    total: float = 0.0
    distinct: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    user_id: str
    at: float
    request: dict[str, Any]
    decision: dict[str, Any]
    features: dict[str, float]
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentTotals:
    """Executed payments of some actions in a window (allowed, or stepped up and then settled by
    feedback), and the part later confirmed as fraud: the inputs of PSD2 RTS Art. 19's fraud rate."""

    count: int = 0
    amount: float = 0.0
    fraud_count: int = 0
    fraud_amount: float = 0.0

    @property
    def fraud_rate(self) -> float | None:
        """Fraud by value; None when there was nothing to measure."""
        return self.fraud_amount / self.amount if self.amount > 0 else None


#: outcomes that show a stepped-up event went ahead (the step-up was passed, or it happened)
EXECUTED_OUTCOMES = ("step_up_passed", "confirmed_fraud", "confirmed_legit")


@dataclass(slots=True)
class Commit:
    """Everything one scored event changes; ``profile=None`` leaves the profile as it was."""

    user_id: str
    expected_version: int
    profile: UserProfile | None
    ip: str
    user_key: str                 # keyed hash of the user id: per-IP distinct-user counting
    at: float
    success: bool
    learned_values: dict[str, str] = field(default_factory=dict)
    event: StoredEvent | None = None
    audit: dict[str, Any] | None = None


#: called where the commit ran (loop or writer thread) with its outcome, before its caller hears of it
Follow = Callable[[BaseException | None], None]


class ProfileStore(Protocol):
    def get(self, user_id: str) -> UserProfile: ...
    def ip_activity(self, ip: str, at: float) -> IpActivity: ...
    def global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]: ...
    # both of the above at once (Redis: one round trip), as the hot path needs them
    def context(self, ip: str, at: float, values: dict[str, str]) -> tuple[IpActivity, dict[str, GlobalCount]]: ...
    # the same for the service's event loop: made with the rest of the loop turn's reads
    def context_async(self, ip: str, at: float,
                      values: dict[str, str]) -> Awaitable[tuple[IpActivity, dict[str, GlobalCount]]]: ...
    def find_event(self, event_id: str) -> StoredEvent | None: ...
    def commit(self, change: Commit) -> None: ...
    # commit, resolved when durable (group.py); ``follow(outcome)`` runs before the caller hears of it
    def submit(self, change: Commit, follow: Follow | None = None) -> Future: ...
    def submit_async(self, change: Commit, follow: Follow | None = None) -> Awaitable[None]: ...
    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None: ...
    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool: ...
    def append_audit(self, audit: dict[str, Any]) -> None: ...
    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool: ...
    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None: ...
    def labelled_events(self) -> Iterator[StoredEvent]: ...
    def audit_rows(self) -> Iterator[AuditRow]: ...
    # -- audit anchors and retention (see audit.py): heads are kept by every append --------
    def audit_anchors(self) -> list[Anchor]: ...
    def prune_audit(self, chain: str, through_seq: int, audit: dict[str, Any]) -> int: ...
    # -- PSD2 fraud rate inputs: executed payments with amount in currency, since <= at < until --
    def payment_totals(self, actions: tuple[str, ...], currency: str, since: float,
                       until: float) -> PaymentTotals: ...
    def ping(self) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...
