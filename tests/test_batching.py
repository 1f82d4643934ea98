"""The store's threads (batching.py): what arrives while a group runs goes into the next; what one
turn of the event loop submits is one group; a group that fails as a whole is retried item by item;
a full queue pushes back."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest

from riskengine.profiles import UserProfile
from riskengine.stores import Batched, Commit, MemoryStore, Refused, StoreUnavailable
from riskengine.stores.batching import Worker


class Recorder:
    """A ``run`` that keeps each group it was given; the first group waits until released.
    Odd items are refused on their own; a "poison" item makes the whole group fail."""

    def __init__(self, hold_first: bool = True) -> None:
        self.groups: list[list[Any]] = []
        self.started, self.release = threading.Event(), threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list[Any]) -> list[BaseException | None]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.started.set()
            assert self.release.wait(10)
        if "down" in items:
            raise StoreUnavailable("unreachable")
        if "poison" in items:
            raise OverflowError("a value the store cannot hold")
        return [ValueError(f"odd {i}") if isinstance(i, int) and i % 2 else None for i in items]


def _put(worker: Worker, item: Any) -> Future:
    future: Future = Future()
    worker.put([(item, None, future)], wait=True)
    return future


def test_items_that_arrive_during_a_commit_share_the_next_one() -> None:
    run = Recorder()
    worker = Worker(run, "test-writer")
    first = _put(worker, 0)
    assert run.started.wait(10)
    waiting = [_put(worker, i) for i in (2, 4, 6)]          # all queued while group 1 runs
    run.release.set()
    assert first.result(10) is None and [f.result(10) for f in waiting] == [None] * 3
    assert run.groups == [[0], [2, 4, 6]]
    with pytest.raises(ValueError, match="odd 3"):
        _put(worker, 3).result(10)                          # refused alone: its own outcome
    worker.close()


def test_a_group_that_fails_as_a_whole_is_retried_item_by_item_and_only_the_culprit_fails() -> None:
    run = Recorder()
    worker = Worker(run, "test-writer")
    first = _put(worker, 0)
    assert run.started.wait(10)
    items = [2, 4, "poison", 6, 8]
    futures = [_put(worker, i) for i in items]
    run.release.set()
    assert first.result(10) is None
    with pytest.raises(Refused) as refused:
        futures[2].result(10)
    assert "OverflowError" in str(refused.value) and "poison" not in str(refused.value)
    assert [f.result(10) for i, f in enumerate(futures) if i != 2] == [None] * 4
    assert run.groups[1] == items and run.groups[2:] == [[i] for i in items]
    worker.close()


def test_an_unreachable_store_fails_the_group_at_once_without_retries() -> None:
    run = Recorder(hold_first=False)
    worker = Worker(run, "test-writer")
    run.release.clear()
    futures = [_put(worker, i) for i in ("down",)]
    run.release.set()
    with pytest.raises(StoreUnavailable):
        futures[0].result(10)
    assert run.groups == [["down"]]
    worker.close()


def test_close_runs_what_is_queued_then_refuses_more() -> None:
    run = Recorder()
    worker = Worker(run, "test-writer")
    first = _put(worker, 0)
    assert run.started.wait(10)
    queued = [_put(worker, i) for i in (2, 4)]
    threading.Timer(0.1, run.release.set).start()
    worker.close()
    assert first.result(0) is None and [f.result(0) for f in queued] == [None, None]
    with pytest.raises(StoreUnavailable):
        _put(worker, 8)


def test_a_full_queue_makes_threads_wait_and_refuses_the_loop() -> None:
    run = Recorder()
    worker = Worker(run, "test-writer", max_pending=2)
    first = _put(worker, 0)
    assert run.started.wait(10)
    queued = [_put(worker, 2), _put(worker, 4)]                # the queue is full now
    with pytest.raises(StoreUnavailable, match="too many"):
        worker.put([(6, None, Future())], wait=False)       # the loop must not wait: 503
    late: list[Future] = []
    waiter = threading.Thread(target=lambda: late.append(_put(worker, 8)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()                                 # a thread waits for room
    run.release.set()
    waiter.join(10)
    assert [f.result(10) for f in [first, *queued, *late]] == [None] * 4
    worker.close()


class Counting:
    """A real memory backend that also notes the size of each group it commits."""

    def __init__(self) -> None:
        self.inner, self.groups = MemoryStore(), []

    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        self.groups.append(len(changes))
        return self.inner.commit_group(changes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _change(user: str, version: int = 0) -> Commit:
    return Commit(user, version, UserProfile(user_id=user, events=1), "192.0.2.1", f"key-{user}", 1e9, True)


def test_what_one_turn_of_the_loop_submits_is_one_group_and_each_caller_gets_its_outcome() -> None:
    backend = Counting()
    store = Batched(backend, b"k")

    async def main() -> list[Any]:
        turn = [store.submit_async(_change(f"u{i}")) for i in range(6)]     # one turn: no await in between
        turn.append(store.submit_async(_change("u0")))                      # u0 read before its first commit
        return await asyncio.gather(*turn, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert outcomes[:6] == [None] * 6 and type(outcomes[6]).__name__ == "Conflict"
    assert backend.groups == [7]
    assert [store.get(f"u{i}").version for i in range(6)] == [1] * 6
    store.close()


def test_a_turn_handed_over_after_close_fails_with_store_unavailable() -> None:
    store = Batched(Counting(), b"k")
    followed: list[BaseException | None] = []

    async def main() -> None:
        future = store.submit_async(_change("late"), followed.append)
        store.close()
        with pytest.raises(StoreUnavailable):
            await future

    asyncio.run(main())
    assert len(followed) == 1 and isinstance(followed[0], StoreUnavailable)


def test_per_ip_and_population_keys_reach_the_backend_as_keyed_hashes() -> None:
    backend = MemoryStore()
    store = Batched(backend, b"deployment key", threads=False)
    store.commit(Commit("u1", 0, UserProfile(user_id="u1"), "203.0.113.9", "key-u1", 1e9, False,
                        {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}))
    assert store.ip_activity("203.0.113.9", 1e9).failures == 1
    assert store.global_counts({"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"})["user_agent"].count == 1
    kept = repr((backend._ips._ips, backend._population._counts))     # what the backend holds (stores/counters.py)
    assert "203.0.113.9" not in kept and "Mozilla" not in kept
    assert store.keyed("203.0.113.9") in kept
    other = Batched(MemoryStore(), b"another deployment", threads=False)
    assert other.keyed("203.0.113.9") != store.keyed("203.0.113.9")


def test_keyed_hashes_are_the_ones_earlier_releases_stored() -> None:
    """An upgrade keeps its per-IP and population statistics and its pseudonyms: the prepared HMAC
    gives exactly what ``hmac.digest`` gave."""
    import hashlib
    import hmac

    from riskengine.audit.chain import pseudonym
    from riskengine.audit.records import Pseudonyms
    store = Batched(MemoryStore(), b"deployment key", threads=False)
    derived = hmac.digest(b"deployment key", b"riskengine per-IP and population keys", "sha256")
    values = [f"203.0.113.{i}" for i in range(8)] + ["Mozilla/5.0 \udcff"]   # a lone surrogate, as JSON may carry
    for value in values:
        expected = hmac.digest(derived, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hex()[:32]
        assert store.keyed(value) == expected
    assert Pseudonyms(b"pseudonym key", store).user_key("alice") == \
        hmac.digest(b"pseudonym key", b"alice", "sha256").hex()[:32]
    assert pseudonym(b"secret", "alice") == hmac.digest(b"secret", b"alice", "sha256").hex()[:32]


def test_the_keyed_commit_carries_every_other_field_as_it_is():
    """``_keyed_commit`` builds the backend's copy field by field: a new ``Commit`` field must reach it."""
    from dataclasses import fields

    from riskengine.stores.base import StoredEvent

    store = Batched(MemoryStore(), b"k", threads=False)
    change = Commit("u1", 3, UserProfile("u1"), "10.0.0.1", "key-u1", 1.5, False, {"ip": "10.0.0.1", "os": "Linux"},
                    StoredEvent("e1", "u1", 1.5, {}, {}, {}), {"kind": "score"})
    hashed: dict[str, str] = {}
    keyed = store._keyed_commit(change, hashed)
    assert keyed.ip == store.keyed("10.0.0.1") == hashed["10.0.0.1"] != change.ip
    assert keyed.learned_values == {"ip": keyed.ip, "os": store.keyed("Linux")}
    for f in fields(Commit):
        if f.name not in ("ip", "learned_values"):
            assert getattr(keyed, f.name) is getattr(change, f.name), f.name
