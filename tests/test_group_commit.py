"""The writer thread behind the stores' ``submit``: what arrives while a group runs goes into the next."""

from __future__ import annotations

import threading

import pytest

from riskengine.stores import StoreUnavailable
from riskengine.stores.group import GroupCommit


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
