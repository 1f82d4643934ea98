"""The one adapter between a store backend and the service: loop batching, the store's threads,
back-pressure, and the keyed hashing of per-IP and population keys.

What one turn of the event loop submits is one group, handed to the store's writer thread at the
end of that turn; the thread commits whatever arrived while its last group ran, so a busy service
pays one COMMIT (and fsync, or round trip) for many events. The loop never runs store work: it
goes on parsing and scoring while a group is flushed, and each caller awaits its own group's
durability. Context reads go the same way to a reader thread. A group that fails as a whole is
tried again one item at a time, so only the item at fault gets its error.

The memory backend has no disk or network to wait for: ``threads=False`` runs its groups at once,
in the caller's thread.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import lru_cache
from typing import Any

from riskengine.audit.chain import KeyedHash
from riskengine.features import GlobalCount, IpActivity
from riskengine.stores.base import Backend, Commit, ContextRead, Follow, Refused, StoreUnavailable

log = logging.getLogger("riskengine.store")

MAX_GROUP = 64
MAX_PENDING = 8192            # items waiting for a thread; more and the service sheds load (503)

#: run(items) -> one outcome per item: its result (None for a commit), or the exception its caller gets
GroupRun = Callable[[list[Any]], list[Any]]
#: an item, what runs after it (commits), the future its caller waits on
Entry = tuple[Any, Follow | None, "Future | asyncio.Future"]


def run_group(run: GroupRun, items: list[Any]) -> list[Any]:
    """``run(items)``; when the group fails as a whole, each item again on its own, so one item
    the store refuses fails alone. An unreachable store fails them all at once (trying each
    would only wait longer for the same answer)."""
    try:
        return run(items)
    except StoreUnavailable as down:
        return [down] * len(items)
    except Exception as failed:               # noqa: BLE001 - a value the store refused, somewhere in the group
        if len(items) > 1:
            return [run_group(run, [item])[0] for item in items]
        log.warning("store refused an item: %s", type(failed).__name__)     # its type only: no values in logs
        refused = Refused(f"the store cannot hold this item ({type(failed).__name__})")
        refused.__cause__ = failed
        return [refused]


class Worker:
    """A thread running ``run(group)`` over what was queued while its last group ran, in order."""

    def __init__(self, run: GroupRun, name: str, max_group: int = MAX_GROUP, max_pending: int = MAX_PENDING) -> None:
        self._run, self._name, self._max, self._max_pending = run, name, max_group, max_pending
        self._queue: list[Entry] = []
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def put(self, entries: list[Entry], wait: bool) -> None:
        """Queue ``entries``. Back-pressure: a full queue makes a thread (``wait``) wait for room, and
        refuses the event loop (which must not wait) with ``StoreUnavailable``."""
        with self._ready:
            while not self._closed and len(self._queue) >= self._max_pending:
                if not wait:
                    raise StoreUnavailable("the store is behind: too many commits are waiting")
                self._ready.wait()
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._thread is None:          # started on first use: a store only read never needs it
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.extend(entries)
            self._ready.notify_all()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return                    # closed and drained
                group, self._queue = self._queue[: self._max], self._queue[self._max:]
                self._ready.notify_all()      # room for writers held back by a full queue
            settle(group, run_group(self._run, [item for item, _, _ in group]))


class LoopTurns:
    """Collects what a turn of an asyncio event loop adds and passes it, in order, to
    ``hand_over`` once, at the end of that turn: one hand-off (one wake-up of a thread) for
    everything the turn produced. Each running loop has its own turn."""

    def __init__(self, hand_over: Callable[[list[Entry]], None]) -> None:
        self._hand_over = hand_over
        self._turns: dict[asyncio.AbstractEventLoop, list[Entry]] = {}

    def add(self, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = []
            loop.call_soon(self._end, loop)
        turn.append(entry)

    def _end(self, loop: asyncio.AbstractEventLoop) -> None:
        self._hand_over(self._turns.pop(loop))


class Batched:
    """A backend as the engine sees it (``ProfileStore``): ``submit``/``submit_async`` and
    ``context_async`` grouped and run on the store's threads (or at once, ``threads=False``);
    everything else passed through. Per-IP keys and population values reach the backend as
    HMACs under ``stats_key``, so no raw IP or User-Agent string is kept once its user is erased.
    ``remember``: offline replays keep that many recent hashes (a tenth of a backfill's time); the
    service keeps none, for the same reason."""

    def __init__(self, backend: Backend, stats_key: bytes | None, threads: bool = True,
                 max_group: int = MAX_GROUP, max_pending: int = MAX_PENDING, remember: int = 0) -> None:
        self.backend = backend
        self._stats_key = KeyedHash(hmac.digest(stats_key or b"", b"riskengine per-IP and population keys", "sha256"))
        self._remembered = lru_cache(maxsize=remember)(self._hash) if remember else None
        name = type(backend).__name__.removesuffix("Store").lower()
        self._writer = Worker(backend.commit_group, f"riskengine-{name}-writer", max_group, max_pending) \
            if threads else None
        self._reader = Worker(self._read, f"riskengine-{name}-reader", max_group, max_pending) \
            if threads else None
        self._commit_turns = LoopTurns(lambda turn: self._hand_over(self._writer, turn))
        self._read_turns = LoopTurns(lambda turn: self._hand_over(self._reader, turn))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    # -- keyed hashing: the one place raw IPs and attribute values turn into stored keys ----------
    def keyed(self, value: str, hashed: dict[str, str] | None = None) -> str:
        """A stable keyed hash: equal values count together, and the value cannot be read back.

        ``hashed``: one event's hashes so far (raw value -> hash), so its context read and its commit
        hash each value once; the engine drops it with the event, so no raw value outlives it here.
        """
        if hashed is not None and (known := hashed.get(value)) is not None:
            return known
        known = self._remembered(value) if self._remembered is not None else self._hash(value)
        if hashed is not None:
            hashed[value] = known
        return known

    def _hash(self, value: str) -> str:
        return self._stats_key.hex(value.encode("utf-8", "surrogatepass"))[:32]

    def _keyed_read(self, ip: str, at: float, values: dict[str, str],
                    hashed: dict[str, str] | None = None) -> ContextRead:
        return self.keyed(ip, hashed), at, {a: self.keyed(v, hashed) for a, v in values.items()}

    def _keyed_commit(self, change: Commit, hashed: dict[str, str] | None = None) -> Commit:
        # field by field (dataclasses.replace looks every field up again: a tenth of this store's
        # time per event); tests/test_batching.py checks that every other field is carried over
        return Commit(change.user_id, change.expected_version, change.profile, self.keyed(change.ip, hashed),
                      change.user_key, change.at, change.success,
                      {a: self.keyed(v, hashed) for a, v in change.learned_values.items()}, change.event, change.audit)

    # -- reads --------------------------------------------------------------
    def context(self, ip: str, at: float, values: dict[str, str]) -> tuple[IpActivity, dict[str, GlobalCount]]:
        """``ip_activity`` and ``global_counts`` at once, in the caller's thread."""
        return self.backend.read_contexts([self._keyed_read(ip, at, values)])[0]

    def ip_activity(self, ip: str, at: float) -> IpActivity:
        return self.context(ip, at, {})[0]

    def global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]:
        return self.context("", 0.0, values)[1]

    def context_async(self, ip: str, at: float, values: dict[str, str],
                      hashed: dict[str, str] | None = None) -> asyncio.Future:
        """``context`` for the event loop: read on the reader thread with the rest of this turn's
        (``hashed``: the event's hashes, see ``keyed``)."""
        return self._on_loop(self._read_turns, self._reader, self._read,
                             ("context", self._keyed_read(ip, at, values, hashed)), None)

    def get_async(self, user_id: str) -> asyncio.Future:
        """``get`` for the event loop: the profile read on the reader thread."""
        return self._on_loop(self._read_turns, self._reader, self._read, ("profile", user_id), None)

    def changed_profile_async(self, user_id: str, version: int) -> asyncio.Future:
        """``changed_profiles`` of one user for the event loop, on the reader thread."""
        return self._on_loop(self._read_turns, self._reader, self._read, ("changed", (user_id, version)), None)

    def user_secret_async(self, user_id: str, user_key: str, create: bool) -> asyncio.Future:
        """``user_secret`` for the event loop, on the reader thread."""
        return self._on_loop(self._read_turns, self._reader, self._read, ("secret", (user_id, user_key, create)),
                             None)

    def _read(self, items: list[tuple[str, Any]]) -> list[Any]:
        """A loop turn's reads: its context reads as one group and its profile checks as another (one
        statement or round trip each), the rest each."""
        reads = [read for kind, read in items if kind == "context"]
        probes = [read for kind, read in items if kind == "changed"]
        contexts = iter(self.backend.read_contexts(reads) if reads else ())
        changed = iter(self.backend.changed_profiles(probes) if probes else ())
        return [next(contexts) if kind == "context" else next(changed) if kind == "changed" else
                self.backend.get(read) if kind == "profile" else self.backend.user_secret(*read)
                for kind, read in items]

    # -- commits ------------------------------------------------------------
    def commit(self, change: Commit) -> None:
        self.submit(change).result()

    def submit(self, change: Commit, follow: Follow | None = None) -> Future:
        """Queue the change from a thread; the future resolves once its group is durable."""
        future: Future = Future()
        entry: Entry = (self._keyed_commit(change), _versioned(change, follow), future)
        if self._writer is None:
            settle([entry], run_group(self.backend.commit_group, [entry[0]]))
        else:
            self._writer.put([entry], wait=True)
        return future

    def submit_async(self, change: Commit, follow: Follow | None = None,
                     hashed: dict[str, str] | None = None) -> asyncio.Future:
        """``submit`` for the event loop: awaited without parking a thread or blocking the loop
        (``hashed``: the event's hashes, see ``keyed``)."""
        return self._on_loop(self._commit_turns, self._writer, self.backend.commit_group,
                             self._keyed_commit(change, hashed), _versioned(change, follow))

    def update_profile(self, user_id: str, expected_version: int, profile: Any,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        self.backend.update_profile(user_id, expected_version, profile,
                                    {a: self.keyed(v) for a, v in learned_values.items()}, audit)

    async def blocking(self, call: Callable[..., Any], *args: Any) -> Any:
        """A rare blocking store call from the loop (feedback, a repeated event id): on a thread of
        its own, so the loop never waits on the disk or network; at once for the memory backend."""
        if self._writer is None:
            return call(*args)
        return await asyncio.to_thread(call, *args)

    # -- helpers ------------------------------------------------------------
    def _on_loop(self, turns: LoopTurns, worker: Worker | None, run: GroupRun, item: Any,
                 follow: Follow | None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if worker is None:                    # nothing to wait for: run it now, as a group of one, on this loop
            outcome = run_group(run, [item])[0]
            _follow(follow, outcome)
            resolve([(future, outcome)])
        else:
            turns.add((item, follow, future))
        return future

    @staticmethod
    def _hand_over(worker: Worker | None, turn: list[Entry]) -> None:
        assert worker is not None
        try:
            worker.put(turn, wait=False)
        except StoreUnavailable as refused:
            settle(turn, [refused] * len(turn))

    def close(self) -> None:
        for worker in (self._writer, self._reader):
            if worker is not None:
                worker.close()
        self.backend.close()


def _versioned(change: Commit, then: Follow | None) -> Follow:
    """The caller's profile gets its committed version (the backend wrote a keyed copy of the change)."""
    def follow(error: BaseException | None) -> None:
        if error is None and change.profile is not None:
            change.profile.version = change.expected_version + 1
        if then is not None:
            then(error)
    return follow


def settle(group: list[Entry], outcomes: list[Any]) -> None:
    """Followers first (where the group ran), then the callers: thread futures at once, each loop's
    in one call on that loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for (_, follow, future), outcome in zip(group, outcomes):
        _follow(follow, outcome)
        if isinstance(future, Future):
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        else:
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, settled in by_loop.items():
        if loop is running:
            resolve(settled)
            continue
        try:
            loop.call_soon_threadsafe(resolve, settled)
        except RuntimeError:                  # the loop has closed: nobody is waiting any more
            pass


def _follow(follow: Follow | None, outcome: Any) -> None:
    """Tell a follower its item's outcome: None, or the exception its caller gets."""
    if follow is not None:
        try:
            follow(outcome if isinstance(outcome, BaseException) else None)
        except Exception:                     # noqa: BLE001 - a cache that failed to follow must not hang a caller
            log.exception("a commit's follower failed")


def resolve(settled: list[tuple[asyncio.Future, Any]]) -> None:
    """On the futures' loop: each gets its outcome, a result or an exception to raise on await."""
    for future, outcome in settled:
        if future.cancelled():                # its request was abandoned (client gone, deadline)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
