"""Per-user turns and the retry rule every profile change shares."""

from __future__ import annotations

import asyncio

import pytest

from riskengine.ordering import RETRIES, Turns, retried
from riskengine.stores import Conflict


def test_one_users_changes_run_one_after_another_and_other_users_interleave():
    turns, log = Turns(), []

    async def change(user: str, n: int) -> None:
        async with turns.of(user):
            log.append((user, n, "start"))
            await asyncio.sleep(0.01 if n == 0 else 0)     # the first waits on "the store" longest
            log.append((user, n, "end"))

    async def main() -> None:
        await asyncio.gather(*(change(user, n) for n in range(3) for user in ("ann", "bo")))

    asyncio.run(main())
    for user in ("ann", "bo"):
        mine = [(n, what) for u, n, what in log if u == user]
        assert mine == [(0, "start"), (0, "end"), (1, "start"), (1, "end"), (2, "start"), (2, "end")]
    assert log[:2] == [("ann", 0, "start"), ("bo", 0, "start")]      # different users do not wait
    assert len(turns) == 0                                             # nothing kept once done


def test_a_failed_change_still_hands_the_turn_on():
    turns = Turns()

    async def failing() -> None:
        async with turns.of("ann"):
            raise ValueError("refused")

    async def next_one() -> str:
        async with turns.of("ann"):
            return "ran"

    async def main():
        return await asyncio.gather(failing(), next_one(), return_exceptions=True)

    failed, ran = asyncio.run(main())
    assert isinstance(failed, ValueError) and ran == "ran"


def test_retried_decides_again_after_a_conflict_and_gives_up_with_a_conflict():
    calls = []

    async def twice_stale() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Conflict("moved on")
        return "committed"

    assert asyncio.run(retried(twice_stale)) == "committed" and len(calls) == 3

    async def always_stale() -> None:
        calls.append(1)
        raise Conflict("moved on")

    calls.clear()
    with pytest.raises(Conflict, match=f"gave up after {RETRIES}"):
        asyncio.run(retried(always_stale))
    assert len(calls) == RETRIES
