"""A read cache in front of a shared store (SQLite, Redis): the hot path reads what this
process last wrote or read instead of asking the store again on every event.

Why it stays correct with several processes: every ``commit`` and ``update_profile`` is
conditional on the profile version the decision saw, so a profile another process moved
since it was cached makes the store answer ``Conflict``; the entry is dropped and the
engine decides again on a fresh read. So that this stays rare where other processes write
too, a cached profile is then checked against the store's version before it is used
(``changed_profiles``: the profile itself is read only when another process moved it). With
several workers behind a load balancer that knows nothing of users, about half of a returning
user's events land on a different worker than the last, and before the check each of those
was decided twice (measured: 0.55 conflicts a request with two workers on Redis). A process
that has met no other writer (no ``Conflict`` for ``OTHERS_FORGOTTEN_S``) does not check:
alone, its cache is always current, and the check would cost a store read an event.

Population counts (Freeman's p(value)) are the one read that may lag: this process's own
writes show at once, other processes' within ``counts_ttl_s`` seconds, which moves a
probability over thousands of events by a hair.
Per-user audit secrets are re-read after ``secrets_ttl_s`` (1 s), so an erasure made by another
process is followed within it; with Redis, which tells every process of each erasure
(pub/sub), they are dropped at once and otherwise kept longer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable
from concurrent.futures import Future
from typing import Any

from riskengine.features import GlobalCount, IpActivity
from riskengine.profiles import UserProfile
from riskengine.stores.base import Commit, Conflict, Follow, ProfileStore

DEFAULT_PROFILES = 100_000
DEFAULT_COUNTS_TTL_S = 5.0        # population counts: a value a user meets once a second or less is still a hit
DEFAULT_SECRETS_TTL_S = 1.0       # how late an erasure by another process is followed, where nothing tells of it
SECRETS_TTL_WATCHED_S = 300.0      # a safety net: the erasure messages are what keeps them right
OTHERS_FORGOTTEN_S = 600.0         # cached profiles are checked until this long after another writer was last met


class CachedStore:
    """Wraps ``inner``; everything not cached here is passed straight through."""

    def __init__(self, inner: ProfileStore, max_profiles: int = DEFAULT_PROFILES,
                 counts_ttl_s: float = DEFAULT_COUNTS_TTL_S, secrets_ttl_s: float = DEFAULT_SECRETS_TTL_S) -> None:
        self.inner = inner
        self.max_profiles = max_profiles
        self.counts_ttl_s = counts_ttl_s
        self._lock = threading.Lock()
        self._profiles: dict[str, UserProfile] = {}       # never mutated: updates make new profiles
        self._writing: dict[str, int] = {}                 # user -> this process's commits of them on their way
        self._others_met_at = -OTHERS_FORGOTTEN_S            # when a Conflict last showed another writer (monotonic)
        self._secrets: dict[str, tuple[bytes, float]] = {}      # user key -> (secret, read at)
        self._counts: dict[tuple[str, str], list[float]] = {}   # (attribute, value) -> [count, read at]
        self._totals: dict[str, list[float]] = {}                # attribute -> [total, distinct, read at]
        self.secrets_ttl_s = secrets_ttl_s
        if hasattr(inner, "watch_erasures"):          # told of every erasure: secrets can be kept longer
            inner.watch_erasures(self._erased, self._forget_secrets)
            self.secrets_ttl_s = SECRETS_TTL_WATCHED_S

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    # -- cached reads -------------------------------------------------------
    def get(self, user_id: str) -> UserProfile:
        profile = self._profiles.get(user_id)
        if profile is None:
            profile = self.inner.get(user_id)
            self._keep(user_id, profile)
        return profile

    async def get_async(self, user_id: str) -> UserProfile:
        """``get`` for the event loop: a miss is read on the store's reader thread, never on the loop;
        a hit is checked there against the store's version once other writers have been met, unless
        this process's own write of the user is still on its way (the cached profile is that write's,
        newer than the store's)."""
        profile = self._profiles.get(user_id)
        if profile is None:
            profile = await self.inner.get_async(user_id)
            if (newer := self._profiles.get(user_id)) is not None:
                return newer                 # an event of this user queued a newer one meanwhile
            self._keep(user_id, profile)
        elif not self._writing.get(user_id) and time.monotonic() - self._others_met_at < OTHERS_FORGOTTEN_S:
            moved = await self.inner.changed_profile_async(user_id, profile.version)
            if moved is not None:            # another process wrote the user since: decide on its profile
                self._keep(user_id, moved)
                return moved
        return profile

    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None:
        """Kept ``secrets_ttl_s``: this process's own erasures drop a secret at once, other processes'
        within that time, or at once where the store tells of them (Redis)."""
        cached = self._cached_secret(user_key)
        return cached if cached is not None else self._keep_secret(user_key, self.inner.user_secret(user_id, user_key, create))

    async def user_secret_async(self, user_id: str, user_key: str, create: bool) -> bytes | None:
        """``user_secret`` for the event loop: a miss is read on the store's reader thread."""
        cached = self._cached_secret(user_key)
        if cached is not None:
            return cached
        return self._keep_secret(user_key, await self.inner.user_secret_async(user_id, user_key, create))

    def _cached_secret(self, user_key: str) -> bytes | None:
        cached = self._secrets.get(user_key)
        return cached[0] if cached is not None and cached[1] >= time.monotonic() - self.secrets_ttl_s else None

    def _keep_secret(self, user_key: str, secret: bytes | None) -> bytes | None:
        if secret is not None:
            self._bounded(self._secrets)[user_key] = (secret, time.monotonic())
        return secret

    def global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]:
        cached = self._cached_counts(values)
        return cached if cached is not None else self._remember(values, self.inner.global_counts(values))

    def context(self, ip: str, at: float, values: dict[str, str]) -> tuple[IpActivity, dict[str, GlobalCount]]:
        cached = self._cached_counts(values)
        return self._merged(values, cached, *self.inner.context(ip, at, {} if cached is not None else values))

    async def context_async(self, ip: str, at: float, values: dict[str, str],
                            hashed: dict[str, str] | None = None) -> tuple[IpActivity, dict[str, GlobalCount]]:
        cached = self._cached_counts(values)
        read = await self.inner.context_async(ip, at, {} if cached is not None else values, hashed)
        return self._merged(values, cached, *read)

    def _merged(self, values: dict[str, str], cached: dict[str, GlobalCount] | None, activity: IpActivity,
                read: dict[str, GlobalCount]) -> tuple[IpActivity, dict[str, GlobalCount]]:
        """The store's fresh per-IP activity with the counts: the cached ones, else those just read."""
        return activity, cached if cached is not None else self._remember(values, read)

    def _cached_counts(self, values: dict[str, str]) -> dict[str, GlobalCount] | None:
        """The counts, when every one of them was read (or written here) within ``counts_ttl_s``."""
        fresh = time.monotonic() - self.counts_ttl_s
        counts, totals = self._counts, self._totals
        if any((c := counts.get(item)) is None or c[1] < fresh for item in values.items()) \
                or any((t := totals.get(a)) is None or t[2] < fresh for a in values):
            return None
        return {a: GlobalCount(counts[(a, v)][0], totals[a][0], totals[a][1]) for a, v in values.items()}

    def _remember(self, values: dict[str, str], read: dict[str, GlobalCount]) -> dict[str, GlobalCount]:
        now = time.monotonic()
        with self._lock:
            self._bounded(self._counts)
            for attribute, value in values.items():
                g = read[attribute]
                self._counts[(attribute, value)] = [g.count, now]
                self._totals[attribute] = [g.total, g.distinct, now]
        return read

    # -- writes: the store decides, the cache follows -------------------------
    def commit(self, change: Commit) -> None:
        self.submit(change).result()

    def submit(self, change: Commit, follow: Follow | None = None) -> Future:
        """Queue the change; from now on the user's next event builds on its profile (a service
        does not wait for one commit of a user before deciding the next: that would make a burst of
        one user's events as slow as that many commits). The commit of that next event expects this
        one's version, so if this one fails, that one fails too and is decided again on a fresh read.
        The future resolves only after the cache has followed the outcome."""
        return self.inner.submit(change, self._follower(change, follow))

    def submit_async(self, change: Commit, follow: Follow | None = None,
                     hashed: dict[str, str] | None = None) -> Awaitable[None]:
        return self.inner.submit_async(change, self._follower(change, follow), hashed)

    def _follower(self, change: Commit, then: Follow | None) -> Follow:
        user_id = change.user_id
        if change.profile is not None:
            change.profile.version = change.expected_version + 1      # its version once committed
            self._keep(user_id, change.profile)
        with self._lock:
            self._writing[user_id] = self._writing.get(user_id, 0) + 1

        def follow(error: BaseException | None) -> None:
            with self._lock:
                if (left := self._writing.pop(user_id, 1) - 1) > 0:
                    self._writing[user_id] = left
            if error is not None:
                self._profiles.pop(user_id, None)    # moved by someone else, or not written: read it
                if isinstance(error, Conflict):
                    self._others_met_at = time.monotonic()
            elif change.profile is not None:
                self._counted(change.learned_values)
            if then is not None:
                then(error)

        return follow

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        try:
            self.inner.update_profile(user_id, expected_version, profile, learned_values, audit)
        except Conflict:
            self._profiles.pop(user_id, None)
            self._others_met_at = time.monotonic()
            raise
        self._keep(user_id, profile)
        self._counted(learned_values)

    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        try:
            return self.inner.erase_user(user_id, user_key, audit)
        finally:
            self._profiles.pop(user_id, None)
            self._secrets.pop(user_key, None)

    def clear(self) -> None:
        self.inner.clear()
        self.forget()

    def _erased(self, user_key: str) -> None:
        self._secrets.pop(user_key, None)

    def _forget_secrets(self) -> None:
        self._secrets.clear()

    def forget(self) -> None:
        """Drop everything cached (the store was changed behind this process's back)."""
        with self._lock:
            self._profiles.clear()
            self._secrets.clear()
            self._counts.clear()
            self._totals.clear()

    # -- helpers ------------------------------------------------------------
    def _keep(self, user_id: str, profile: UserProfile) -> None:
        self._bounded(self._profiles)[user_id] = profile

    def _bounded(self, table: dict) -> dict:
        """Oldest-first eviction once full: a dict keeps insertion order, so this is O(1)."""
        while len(table) >= self.max_profiles:
            try:
                table.pop(next(iter(table)))
            except (StopIteration, KeyError, RuntimeError):    # emptied or resized by another thread
                break
        return table

    def _counted(self, learned: dict[str, str]) -> None:
        """This process's own increments show at once (the store's counters moved the same way)."""
        if not learned:
            return
        with self._lock:
            for attribute, value in learned.items():
                count, total = self._counts.get((attribute, value)), self._totals.get(attribute)
                if count is None:                 # cannot tell whether the value was new: read again
                    self._totals.pop(attribute, None)
                    continue
                count[0] += 1
                if total is not None:
                    total[0] += 1
                    total[1] += count[0] == 1
