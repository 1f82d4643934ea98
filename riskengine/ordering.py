"""Per-user ordering and the one retry rule, for every path that changes a profile.

Events of one user are decided one after another (``Turns``), each on the profile the one before
left, though each awaits its store reads in between; events of different users interleave freely.
Writers in other processes are not ordered: the store's version check turns a race into
``Conflict``, and ``retried`` decides again on the fresh profile.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from riskengine.stores import Conflict

RETRIES = 20
T = TypeVar("T")


class Turns:
    """One queue per user on the event loop: a user's next change starts once the last one is done."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future] = {}     # user id -> its latest change still running

    @asynccontextmanager
    async def of(self, user_id: str) -> AsyncIterator[None]:
        before, mine = self._last.get(user_id), asyncio.get_running_loop().create_future()
        self._last[user_id] = mine
        try:
            if before is not None and not before.done():
                await before
            yield
        finally:
            mine.set_result(None)
            if self._last.get(user_id) is mine:
                del self._last[user_id]

    def __len__(self) -> int:
        return len(self._last)


async def retried(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` again while another writer moved the user on (``Conflict``), up to ``RETRIES`` times."""
    for tries in range(RETRIES):
        try:
            return await attempt()
        except Conflict:
            if tries:                              # the first retry goes at once: usually a stale cache
                await asyncio.sleep(back_off_s(tries))
    raise Conflict(f"gave up after {RETRIES} concurrent updates of one user")


def back_off_s(attempt: int) -> float:
    """A short jittered pause before deciding again: writers of one hot user stop colliding in lockstep."""
    return random.uniform(0, 0.001 * 2 ** min(attempt, 6))
