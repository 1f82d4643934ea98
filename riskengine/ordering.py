"""Per-user ordering and the one retry rule, for every path that changes a profile.

Events of one user are decided one after another (``Turns``), each on the profile the one before
left, though each awaits its store reads in between; events of different users interleave freely.
Writers in other processes are not ordered: the store's version check turns a race into
``Conflict``, and ``retried`` decides again on the fresh profile.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from riskengine.stores import Conflict

RETRIES = 20
T = TypeVar("T")


class Turns:
    """One queue per user on the event loop: a user's next change starts once the last one is done."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future] = {}     # user id -> its latest change still running

    def of(self, user_id: str) -> "_Turn":
        """``async with turns.of(user)``: wait for the user's previous change, then run this one."""
        return _Turn(self._last, user_id)

    def __len__(self) -> int:
        return len(self._last)


class _Turn:
    """One change's turn (a plain async context manager: every event takes one, and a generator-based
    ``asynccontextmanager`` cost more than the queueing itself)."""

    __slots__ = ("_last", "_user_id", "_mine")

    def __init__(self, last: dict[str, asyncio.Future], user_id: str) -> None:
        self._last, self._user_id = last, user_id

    async def __aenter__(self) -> None:
        before, mine = self._last.get(self._user_id), asyncio.get_running_loop().create_future()
        self._last[self._user_id] = self._mine = mine
        if before is not None and not before.done():
            try:
                await before
            except BaseException:             # cancelled while waiting: the next change must not wait on us
                self._done()
                raise

    async def __aexit__(self, *exc: object) -> None:
        self._done()

    def _done(self) -> None:
        self._mine.set_result(None)
        if self._last.get(self._user_id) is self._mine:
            del self._last[self._user_id]


async def retried(attempt: Callable[[], Awaitable[T]], conflicted: Callable[[], None] | None = None) -> T:
    """``attempt()`` again while another writer moved the user on (``Conflict``), up to ``RETRIES``
    times; ``conflicted()`` is told of each such conflict (a metric: /metrics)."""
    for tries in range(RETRIES):
        try:
            return await attempt()
        except Conflict:
            if conflicted is not None:
                conflicted()
            if tries:                              # the first retry goes at once: usually a stale cache
                await asyncio.sleep(back_off_s(tries))
    raise Conflict(f"gave up after {RETRIES} concurrent updates of one user")


def back_off_s(attempt: int) -> float:
    """A short jittered pause before deciding again: writers of one hot user stop colliding in lockstep."""
    return random.uniform(0, 0.001 * 2 ** min(attempt, 6))
