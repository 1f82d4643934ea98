"""The profile-store interface: what a backend (memory, SQLite, Redis) offers, and what the
service sees once ``batching.py`` has adapted it.

A backend is plain and synchronous: reads and commits of a *group* (``read_contexts``,
``commit_group``), each item with its own outcome. One ``Commit`` writes a user's new profile,
the per-IP and population counters, the recorded event and its audit record together, or
nothing: a 200 implies all. Backends take ``audit_key`` (bytes or None): the key that seals
audit records and anchors (``audit/chain.py`` seals; backends only keep the rows).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import orjson

from riskengine.audit.chain import Anchor, AuditRow
from riskengine.features import GlobalCount, IpActivity
from riskengine.policy.payments import EXECUTED_OUTCOMES, PaymentTotals
from riskengine.profiles import UserProfile

__all__ = ["EXECUTED_OUTCOMES", "IP_WINDOW_S", "REDIS_SCHEMES", "Backend", "Commit", "Conflict", "ContextRead",
           "DuplicateEvent", "Follow", "GlobalCount", "IpActivity", "PaymentTotals", "ProfileStore", "Refused", "StoreUnavailable",
           "StoredEvent", "dumps", "prune_before"]

IP_WINDOW_S = 3600.0
#: the Redis store's URLs: one primary, a primary found through Sentinel, Redis Cluster (stores/redis.py)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://", "redis+cluster://",
                 "rediss+cluster://")


def dumps(value: Any) -> str:
    """Compact JSON for stored events and profiles (orjson: a tenth of ``json.dumps``' time on the
    hot path). A NaN feature (a signal with nothing to measure) is stored as null; readers map it back."""
    return orjson.dumps(value).decode()


def prune_before(at: float, now: float | None = None) -> float:
    """Per-IP entries older than this may go: two windows before the event, but never past the
    server's clock, so no accepted timestamp (a far-future one) can empty the shared windows.

    >>> prune_before(10_000.0, now=20_000.0), prune_before(1e12, now=20_000.0)
    (2800.0, 12800.0)
    """
    return min(at, time.time() if now is None else now) - 2 * IP_WINDOW_S


class Conflict(Exception):
    """Another writer updated this user first; the caller recomputes and retries."""


class DuplicateEvent(Exception):
    """The event id was recorded by a concurrent request; answer with the stored decision."""


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the service answers 503, never a guess."""


class Refused(ValueError):
    """The store cannot hold this one item (a value it refuses); the rest of its group went ahead.
    The message names no value: exceptions end up in logs."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    user_id: str
    at: float
    request: dict[str, Any]
    decision: dict[str, Any]
    features: dict[str, float]
    outcome: str | None = None


@dataclass(slots=True)
class Commit:
    """Everything one scored event changes; ``profile=None`` leaves the profile as it was.
    ``ip`` and ``learned_values`` reach a backend as keyed hashes (batching.py), never raw."""

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


#: one context read: (ip, at, {attribute: value}) -> the IP's activity before ``at`` and the values' counts
ContextRead = tuple[str, float, dict[str, str]]

#: called on the store's thread with the commit's outcome, before its caller hears of it
Follow = Callable[[BaseException | None], None]


class Backend(Protocol):
    """What memory, SQLite and Redis implement: plain, synchronous, no threads of their own."""

    def get(self, user_id: str) -> UserProfile: ...
    # each (user, version): None while that is still the stored version, else the stored profile (as ``get``)
    def changed_profiles(self, probes: list[tuple[str, int]]) -> list[UserProfile | None]: ...
    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]: ...
    # one outcome per change: None (durable), or Conflict / DuplicateEvent / Refused for that change alone;
    # raises (StoreUnavailable, or anything else) only when the group as a whole could not be written
    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]: ...
    def find_event(self, event_id: str) -> StoredEvent | None: ...
    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None: ...
    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool: ...
    def append_audit(self, audit: dict[str, Any]) -> None: ...
    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool: ...
    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None: ...
    def labelled_events(self) -> Iterator[StoredEvent]: ...
    def audit_rows(self) -> Iterator[AuditRow]: ...
    def audit_anchors(self) -> list[Anchor]: ...
    def prune_audit(self, chain: str, through_seq: int, audit: dict[str, Any]) -> int: ...
    # PSD2 fraud rate inputs: executed payments with amount in currency, since <= at < until
    def payment_totals(self, actions: tuple[str, ...], currency: str, since: float,
                       until: float) -> PaymentTotals: ...
    def ping(self) -> None: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


class ProfileStore(Backend, Protocol):
    """A backend as the engine uses it (``batching.Batched``, behind ``cached.CachedStore``)."""

    def ip_activity(self, ip: str, at: float) -> IpActivity: ...
    def global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]: ...
    def context(self, ip: str, at: float, values: dict[str, str]) -> tuple[IpActivity, dict[str, GlobalCount]]: ...
    # the same for the service's event loop: read on the store's thread with the rest of the loop turn's
    # (``hashed``: one event's raw value -> keyed hash, shared by its read and its commit; batching.py)
    def context_async(self, ip: str, at: float, values: dict[str, str],
                      hashed: dict[str, str] | None = None) -> Awaitable[tuple[IpActivity, dict[str, GlobalCount]]]: ...
    def get_async(self, user_id: str) -> Awaitable[UserProfile]: ...
    def changed_profile_async(self, user_id: str, version: int) -> Awaitable[UserProfile | None]: ...
    def user_secret_async(self, user_id: str, user_key: str, create: bool) -> Awaitable[bytes | None]: ...
    def commit(self, change: Commit) -> None: ...
    # commit, resolved when durable; ``follow(outcome)`` runs before the caller hears of it
    def submit(self, change: Commit, follow: Follow | None = None) -> Future: ...
    def submit_async(self, change: Commit, follow: Follow | None = None,
                     hashed: dict[str, str] | None = None) -> Awaitable[None]: ...
    def blocking(self, call: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...
