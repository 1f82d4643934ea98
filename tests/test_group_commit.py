"""The writer thread behind the stores' ``submit``: what arrives while a group runs goes into the next."""

from __future__ import annotations

import asyncio
import threading

import pytest

from riskengine.stores import StoreUnavailable
from riskengine.stores.batching import GroupCommit


class Recorder:
    """A ``run`` that keeps each group it was given; the first group waits until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, items: list[int]) -> list[BaseException | None]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.started.set()
            assert self.release.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else None for i in items]


def test_items_that_arrive_during_a_commit_share_the_next_one() -> None:
    run = Recorder()
    group = GroupCommit(run, "test-group")
    first = group.submit(0)
    assert run.started.wait(10)
    waiting = [group.submit(i) for i in range(1, 7)]          # all queued while group 1 runs
    assert not any(f.done() for f in [first, *waiting])        # nothing is answered before it is durable
    run.release.set()
    assert first.result(10) is None
    for i, future in enumerate(waiting, start=1):
        if i % 2:
            with pytest.raises(ValueError, match=f"odd {i}"):  # each caller gets its own outcome
                future.result(10)
        else:
            assert future.result(10) is None
    assert run.groups == [[0], [1, 2, 3, 4, 5, 6]]
    group.close()


def test_a_failed_transaction_fails_its_whole_group_and_the_next_one_runs() -> None:
    calls: list[list[str]] = []

    def run(items: list[str]) -> list[BaseException | None]:
        calls.append(items)
        if "boom" in items:
            raise StoreUnavailable("disk full")
        return [None] * len(items)

    group = GroupCommit(run, "test-group")
    with pytest.raises(StoreUnavailable, match="disk full"):
        group.submit("boom").result(10)
    assert group.submit("fine").result(10) is None
    group.close()


def test_close_commits_what_is_queued_then_refuses_more() -> None:
    run = Recorder()
    group = GroupCommit(run, "test-group", max_group=2)
    first = group.submit(0)
    assert run.started.wait(10)
    queued = [group.submit(i) for i in (2, 4, 6)]
    closing = threading.Thread(target=group.close)
    closing.start()
    run.release.set()
    closing.join(10)
    assert first.result(0) is None and all(f.result(0) is None for f in queued)
    assert run.groups == [[0], [2, 4], [6]]                    # at most max_group per transaction
    with pytest.raises(StoreUnavailable):
        group.submit(8)


def test_what_one_turn_of_the_loop_submits_is_one_group_and_each_caller_gets_its_outcome() -> None:
    groups: list[list[int]] = []

    def run(items: list[int]) -> list[object]:
        groups.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    group = GroupCommit(run, "test-group")

    async def main() -> list[object]:
        futures = [group.submit_async(i) for i in range(6)]       # one turn: no await in between
        assert "test-group" not in {t.name for t in threading.enumerate()}   # nothing handed over yet
        await asyncio.sleep(0)
        futures.append(group.submit_async(6))                     # the next turn
        return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [o if not isinstance(o, ValueError) else str(o) for o in outcomes] == \
        [0, "odd 1", 20, "odd 3", 40, "odd 5", 60]
    assert [i for g in groups for i in g] == list(range(7))   # in the order submitted
    group.close()


def test_a_turn_handed_over_after_close_fails_with_store_unavailable() -> None:
    group = GroupCommit(lambda items: [None] * len(items), "test-group")
    followed: list[BaseException | None] = []

    async def main() -> None:
        future = group.submit_async("late", followed.append)
        group.close()                                         # before the loop's turn ends
        with pytest.raises(StoreUnavailable):
            await future

    asyncio.run(main())
    assert len(followed) == 1 and isinstance(followed[0], StoreUnavailable)   # a cache following it drops it


def test_a_loop_turns_group_runs_on_the_loop_when_it_can_and_on_the_thread_when_it_cannot() -> None:
    ran: list[tuple[str, list[int]]] = []

    def on_loop(items: list[int]) -> list[object] | None:
        if 13 in items:
            return None                                       # cannot now (busy lock, slow disk)
        ran.append((threading.current_thread().name, list(items)))
        return [i * 2 for i in items]

    def run(items: list[int]) -> list[object]:
        ran.append((threading.current_thread().name, list(items)))
        return [i * 3 for i in items]

    group = GroupCommit(run, "test-group", on_loop=on_loop)

    async def main() -> list[object]:
        first = await asyncio.gather(*(group.submit_async(i) for i in (1, 2)))
        second = await asyncio.gather(*(group.submit_async(i) for i in (13, 4)))
        return [*first, *second]

    assert asyncio.run(main()) == [2, 4, 39, 12]
    assert ran == [("MainThread", [1, 2]), ("test-group", [13, 4])]
    group.close()


def test_turns_wait_while_the_thread_has_a_group_and_then_run_as_one_after_it() -> None:
    """Never overtaken: a user's next event must commit after the one before."""
    release, ran = threading.Event(), []

    def on_loop(items: list[str]) -> list[object] | None:
        if items == ["slow"]:
            return None
        ran.append(list(items))
        return [None] * len(items)

    def run(items: list[str]) -> list[object]:
        assert release.wait(10)
        ran.append(list(items))
        return [None] * len(items)

    group = GroupCommit(run, "test-group", on_loop=on_loop)

    async def main() -> None:
        slow = group.submit_async("slow")
        await asyncio.sleep(0.05)                             # on the thread, waiting
        later = [group.submit_async("a"), group.submit_async("b")]
        await asyncio.sleep(0.05)
        last = group.submit_async("c")                        # another turn, also held
        await asyncio.sleep(0.05)
        assert ran == [] and not slow.done() and not any(f.done() for f in later)
        release.set()
        await asyncio.gather(slow, *later, last)

    asyncio.run(main())
    assert ran == [["slow"], ["a", "b", "c"]]
    group.close()


def test_a_loop_budget_sends_work_to_the_thread_after_slow_runs_and_tries_the_loop_again() -> None:
    import time

    from riskengine.stores.batching import LoopBudget

    budget = LoopBudget(0.002)
    budget.spent(time.perf_counter() - 0.0005)             # quick: stays on the loop
    assert budget.allows()
    budget.spent(time.perf_counter() - 0.5)                # a stall (slow disk, Redis hanging)
    refusals = 0
    while not budget.allows():
        refusals += 1
        assert refusals < 200
    assert refusals >= 10                                  # a good while on the thread, then again
