"""In-memory backend: training replays and pure-logic tests, the same semantics as SQLite.
Plain and synchronous: ``batching.Batched(threads=False)`` adapts it for the service."""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

from riskengine.audit.chain import GENESIS, HEAD, START, Anchor, AuditRow, seal_records
from riskengine.features import GlobalCount, IpActivity
from riskengine.policy.payments import PaymentTotals, payment_totals
from riskengine.profiles import UserProfile
from riskengine.stores.base import Commit, Conflict, ContextRead, DuplicateEvent, StoredEvent
from riskengine.stores.counters import IpWindows, PopulationCounts


class MemoryStore:
    """Dicts behind one lock. ``keep_events=False`` skips recording, for large backfills."""

    def __init__(self, keep_events: bool = True, keep_audit: bool = True, chain: str = "main",
                 audit_key: bytes | None = None) -> None:
        self.keep_events, self.keep_audit, self.chain = keep_events, keep_audit, chain
        self.audit_key = audit_key
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        self._profiles: dict[str, UserProfile] = {}
        self._ips = IpWindows()
        self._population = PopulationCounts()
        self._events: dict[str, StoredEvent] = {}
        self._secrets: dict[str, bytes] = {}
        self._audit: list[AuditRow] = []
        self._anchors: dict[tuple[str, str], Anchor] = {}

    def get(self, user_id: str) -> UserProfile:
        with self._lock:
            return self._profiles.get(user_id) or UserProfile(user_id=user_id)

    def changed_profiles(self, probes: list[tuple[str, int]]) -> list[UserProfile | None]:
        with self._lock:
            stored = [self._profiles.get(user_id) for user_id, _ in probes]
        return [None if (profile.version if profile else 0) == version else profile or UserProfile(user_id=user_id)
                for (user_id, version), profile in zip(probes, stored)]

    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        return [(self._ip_activity(ip, at), self._global_counts(values)) for ip, at, values in reads]

    def _ip_activity(self, ip: str, at: float) -> IpActivity:
        with self._lock:
            return self._ips.activity(ip, at)

    def _global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]:
        with self._lock:
            return self._population.read(values)

    def find_event(self, event_id: str) -> StoredEvent | None:
        return self._events.get(event_id)

    def labelled_events(self) -> Iterator[StoredEvent]:
        yield from sorted(self._events.values(), key=lambda e: e.at)

    def audit_rows(self) -> Iterator[AuditRow]:
        with self._lock:
            rows = list(self._audit)
        yield from rows

    def audit_anchors(self) -> list[Anchor]:
        with self._lock:
            return [self._anchors[k] for k in sorted(self._anchors)]

    def payment_totals(self, actions: tuple[str, ...], currency: str, since: float, until: float) -> PaymentTotals:
        with self._lock:
            events = list(self._events.values())
        return payment_totals(((e.request, e.decision, e.outcome) for e in events if since <= e.at < until),
                              actions, currency)

    def prune_audit(self, chain: str, through_seq: int, audit: dict[str, Any]) -> int:
        with self._lock:
            rows = [r for r in self._audit if r.chain == chain]
            cut = next((r for r in rows if r.seq == through_seq), None)
            if cut is None or through_seq >= rows[-1].seq:
                return 0
            self._audit = [r for r in self._audit if r.chain != chain or r.seq > through_seq]
            self._anchors[(chain, START)] = Anchor.make(START, chain, through_seq + 1, cut.hash, self.audit_key)
            self._append(audit)
            return len([r for r in rows if r.seq <= through_seq])

    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None:
        with self._lock:
            if create and user_key not in self._secrets:
                self._secrets[user_key] = os.urandom(32)
            return self._secrets.get(user_key)

    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        """Each change on its own: nothing here can fail a whole group."""
        outcomes: list[BaseException | None] = []
        for change in changes:
            try:
                self._commit(change)
                outcomes.append(None)
            except (Conflict, DuplicateEvent) as refused:
                outcomes.append(refused)
        return outcomes

    def _commit(self, change: Commit) -> None:
        with self._lock:
            if change.event is not None and change.event.event_id in self._events:
                raise DuplicateEvent(change.event.event_id)
            if change.profile is not None:
                self._put_profile(change.user_id, change.expected_version, change.profile)
                self._count(change.learned_values)
            elif self._version(change.user_id) != change.expected_version:
                raise Conflict("the profile's version moved")    # the decision read a profile since moved on
            self._ips.add(change.ip, change.at, change.user_key, change.success)
            if change.event is not None and self.keep_events:
                self._events[change.event.event_id] = change.event
            if change.audit is not None:
                self._append(change.audit)

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        with self._lock:
            self._put_profile(user_id, expected_version, profile)
            self._count(learned_values)
            if audit is not None:
                self._append(audit)

    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool:
        with self._lock:
            stored = self._events.get(event_id)
            if stored is None:
                return False
            self._events[event_id] = StoredEvent(stored.event_id, stored.user_id, stored.at, stored.request,
                                                 stored.decision, stored.features, outcome)
            self._append(audit)
            return True

    def append_audit(self, audit: dict[str, Any]) -> None:
        with self._lock:
            self._append(audit)

    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        with self._lock:
            found = self._profiles.pop(user_id, None) is not None
            found |= self._secrets.pop(user_key, None) is not None
            for event_id in [k for k, e in self._events.items() if e.user_id == user_id]:
                del self._events[event_id]
                found = True
            self._ips.forget(user_key)
            self._append(audit)
            return found

    def _put_profile(self, user_id: str, expected: int, profile: UserProfile) -> None:
        if self._version(user_id) != expected:
            raise Conflict("the profile's version moved")
        profile.version = expected + 1
        self._profiles[user_id] = profile

    def _version(self, user_id: str) -> int:
        current = self._profiles.get(user_id)
        return current.version if current else 0

    def _count(self, values: dict[str, str]) -> None:
        self._population.count(values)

    def _append(self, body: dict[str, Any]) -> None:
        if not self.keep_audit:
            return
        head = self._anchors.get((self.chain, HEAD))
        seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
        rows, self._anchors[(self.chain, HEAD)] = seal_records([body], self.chain, seq, prev, self.audit_key)
        self._audit.extend(rows)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
