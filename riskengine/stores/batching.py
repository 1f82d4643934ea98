"""Group commit: what arrives together is committed together, so a busy service pays one COMMIT
(and fsync, or round trip) for many events. The same queue serves reads that are better made
many at a time (one statement, one round trip for every event waiting).

``submit`` hands back a ``concurrent.futures.Future`` that ``commit`` callers block on; it goes
to one writer thread per store, which commits whatever arrived while its last group ran.
``submit_async`` hands back an ``asyncio.Future`` the service awaits: what one turn of the event
loop submits is one group, run at the end of that turn on the loop itself when the store can do
it without waiting (``on_loop``, ``LoopBudget``), else on the thread. A future resolves only once
its group is durable; the loop's futures of one group are resolved in one callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from riskengine.stores.base import Follow, StoreUnavailable

log = logging.getLogger("riskengine.store")

#: run(items) -> one outcome per item: its result (None for a commit), or the exception its caller gets
GroupRun = Callable[[list[Any]], list[Any]]


def done(outcome: BaseException | None = None) -> Future:
    """An already resolved future, for stores that write in the caller's thread."""
    future: Future = Future()
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
    return future


def done_async(outcome: Any = None) -> asyncio.Future:
    """An already resolved future (a result, or an exception raised on await) on the running loop."""
    future = asyncio.get_running_loop().create_future()
    resolve([(future, outcome)])
    return future


def run_inline(commit: Callable[[Any], None], item: Any, follow: Follow | None,
               expected: tuple[type[BaseException], ...]) -> BaseException | None:
    """``commit(item)`` in the caller's thread, as a group of one: ``expected`` errors are its outcome."""
    try:
        commit(item)
        outcome: BaseException | None = None
    except expected as refused:
        outcome = refused
    if follow is not None:
        follow(outcome)
    return outcome


class LoopTurns:
    """Collects what a turn of an asyncio event loop adds and passes it, in order, to
    ``hand_over`` once, at the end of that turn: one hand-off for everything the turn produced.
    Each running loop has its own turn (a loop only ever touches its own)."""

    def __init__(self, hand_over: Callable[[list[Any]], None]) -> None:
        self._hand_over = hand_over
        self._turns: dict[asyncio.AbstractEventLoop, list[Any]] = {}

    def add(self, loop: asyncio.AbstractEventLoop, entry: Any) -> None:
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = []
            loop.call_soon(self._end, loop)
        turn.append(entry)

    def _end(self, loop: asyncio.AbstractEventLoop) -> None:
        self._hand_over(self._turns.pop(loop))


class LoopBudget:
    """Whether store work may run on the event loop itself: while it has lately (a moving
    average) taken under ``limit_s``. Over it (a slow disk, a slow or hanging server) the work goes
    to a thread, and after a few such groups the loop tries again."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s, self.recent_s = limit_s, 0.0

    def allows(self) -> bool:
        if self.recent_s > self.limit_s:
            self.recent_s *= 0.9
            return False
        return True

    def failed(self) -> None:
        """The work failed (the server is down or hangs): the threads take it for a good while."""
        self.recent_s = max(self.recent_s, 50 * self.limit_s)

    def spent(self, started: float) -> None:
        """Record work begun at ``started`` (``time.perf_counter()``)."""
        self.recent_s += 0.2 * (time.perf_counter() - started - self.recent_s)


class GroupCommit:
    """A writer thread running ``run(group)``; an exception from ``run`` itself (the transaction
    failed) goes to every caller of that group."""

    def __init__(self, run: GroupRun, name: str, max_group: int = 64,
                 on_loop: Callable[[list[Any]], list[Any] | None] | None = None) -> None:
        """``on_loop(group)``: run a loop turn's group right there instead, if it can be done without
        waiting (it answers None when it cannot, and the thread takes the group)."""
        self._run, self._name, self._max, self._on_loop = run, name, max_group, on_loop
        self._queue: list[tuple[Any, Follow | None, Future | asyncio.Future]] = []
        self._running = False                 # the thread is in the middle of a group
        self._held: list[tuple[Any, Follow | None, asyncio.Future]] = []   # loop turns waiting for it
        self._held_loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._turns = LoopTurns(self._hand_over)

    def submit(self, item: Any, follow: Follow | None = None) -> Future:
        future: Future = Future()
        self._put([(item, follow, future)])
        return future

    def submit_async(self, item: Any, follow: Follow | None = None) -> asyncio.Future:
        """Called on a running event loop; the future resolves on it. What a turn of the loop
        submits is one group, handed over at the end of that turn (``_hand_over``): on the loop
        itself or to the thread, once; waking the thread for each item cost a GIL hand-off each."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._turns.add(loop, (item, follow, future))
        return future

    def _hand_over(self, turn: list[tuple[Any, Follow | None, asyncio.Future]]) -> None:
        if self._on_loop is not None and not self._closed:
            if self._hold(turn):
                return
            if len(turn) <= self._max:
                try:
                    outcomes = self._on_loop([item for item, _, _ in turn])
                except BaseException as failed:   # noqa: BLE001 - handed to each caller, who raises it
                    outcomes = [failed] * len(turn)
                if outcomes is not None:
                    _settle(turn, outcomes)
                    return
        try:
            self._put(turn)
        except StoreUnavailable as closed:
            _settle(turn, [closed] * len(turn))

    def _put(self, items: list[tuple[Any, Follow | None, Future | asyncio.Future]]) -> None:
        with self._ready:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._thread is None:          # started on first use: a store only read never needs it
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.extend(items)
            self._ready.notify()

    def _hold(self, turn: list[tuple[Any, Follow | None, asyncio.Future]]) -> bool:
        """While the thread has a group, a loop turn's waits for it (and is then run as one group
        with the others held meanwhile), so that it can never overtake an earlier one."""
        loop = asyncio.get_running_loop()
        with self._ready:
            if not (self._queue or self._running or self._held) or self._held_loop not in (None, loop):
                return False
            self._held.extend(turn)
            self._held_loop = loop
            return True

    def _release(self) -> None:
        """On the loop, once the thread is done: what was held while it ran, as one group."""
        with self._ready:
            held, self._held, self._held_loop = self._held, [], None
        if held:
            self._hand_over(held)

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
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
                self._running = True
            try:
                outcomes = self._run([item for item, _, _ in group])
            except BaseException as failed:   # noqa: BLE001 - handed to each caller, who raises it
                outcomes = [failed] * len(group)
            _settle(group, outcomes)
            with self._ready:
                self._running = bool(self._queue)
                release = self._held_loop if not self._queue and self._held else None
            if release is not None:
                try:
                    release.call_soon_threadsafe(self._release)
                except RuntimeError:          # the loop has closed: nobody is waiting any more
                    pass


def _settle(group: list[tuple[Any, Follow | None, Future | asyncio.Future]], outcomes: list[Any]) -> None:
    """Followers first (where the group ran), then the callers: thread futures at once, each loop's
    in one call (at once when the group ran on that loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for (_, follow, future), outcome in zip(group, outcomes):
        failed = outcome if isinstance(outcome, BaseException) else None
        if follow is not None:
            try:
                follow(failed)
            except Exception:                 # noqa: BLE001 - a cache that failed to follow must not hang a caller
                log.exception("a commit's follower failed")
        if isinstance(future, Future):
            if failed is None:
                future.set_result(outcome)
            else:
                future.set_exception(failed)
        else:
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop, settled in by_loop.items():
        if loop is running:                   # settled on the loop itself (``on_loop``)
            resolve(settled)
            continue
        try:
            loop.call_soon_threadsafe(resolve, settled)
        except RuntimeError:                  # the loop has closed: nobody is waiting any more
            pass


def resolve(settled: list[tuple[asyncio.Future, Any]]) -> None:
    """On the futures' loop: each gets its outcome, a result or an exception to raise on await."""
    for future, outcome in settled:
        if future.cancelled():                # its request was abandoned (client gone, deadline)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
