"""One contract suite run on every profile store: memory, SQLite (a tmp file) and the real Redis.

The stores must be interchangeable behind the Engine, so each test states one behaviour of
``ProfileStore`` and runs it on all three; the last one drives concurrent writers through the Engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from riskengine.audit.chain import verify
from riskengine.engine import Engine
from riskengine.enrich import Enricher
from riskengine.profiles import UserProfile
from riskengine.policy.payments import EXECUTED_OUTCOMES, payment_totals
from riskengine.stores import (Commit, Conflict, DuplicateEvent, MemoryStore, ProfileStore, Refused, SQLiteStore,
                               StoredEvent, open_store)
from riskengine.stores.redis import RedisStore
from tests.conftest import REDIS_TOPOLOGIES, REDIS_URL, T0, event, redis_url

AT = T0.timestamp()
IP = "203.0.113.7"
AUDIT_KEY = b"contract-suite audit key"


@pytest.fixture(params=["memory", "sqlite", *REDIS_TOPOLOGIES])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ProfileStore]:
    """A fresh store; a Redis one lives under its own key prefix and is cleared after: on the shared
    server's test database, on this run's own three-primary Cluster, and behind this run's own Sentinels."""
    if request.param == "memory":
        opened: ProfileStore = open_store("memory://", audit_key=AUDIT_KEY)
    elif request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/profiles.db", synchronous="NORMAL", audit_key=AUDIT_KEY)
    else:
        opened = open_store(redis_url(request, request.param), prefix=f"test-{uuid.uuid4().hex[:12]}:",
                            audit_key=AUDIT_KEY)
    try:
        yield opened
    finally:
        opened.clear()
        opened.close()


def stored_event(event_id: str, user: str = "alice", at: float = AT, verdict: str = "allow",
                 **request: Any) -> StoredEvent:
    return StoredEvent(event_id, user, at, {"user_id": user, "action": "login", **request},
                       {"decision": verdict, "risk_score": 0.1}, {"new_device": 0.0})


def change(event_id: str | None = "e1", user: str = "alice", version: int = 0, events: int | None = None,
           ip: str = IP, at: float = AT, success: bool = True, learned: dict[str, str] | None = None,
           profile: bool = True, audit: bool = True) -> Commit:
    """One scored event as the Engine would commit it; ``events`` marks the profile written."""
    new = UserProfile(user_id=user, events=version + 1 if events is None else events) if profile else None
    return Commit(user, version, new, ip, f"key-{user}", at, success,
                  learned if learned is not None else {"ip": ip, "country": "NO"},
                  stored_event(event_id, user, at) if event_id else None,
                  {"kind": "score", "event_id": event_id, "subject": f"s-{user}"} if audit else None)


def snapshot(store: ProfileStore) -> dict[str, Any]:
    """Everything a refused commit must leave alone."""
    return {"profile": store.get("alice"), "ip": store.ip_activity(IP, AT + 10),
            "counts": store.global_counts({"ip": IP, "country": "NO"}),
            "events": [e.event_id for e in store.labelled_events()],
            "audit": [(r.chain, r.seq, r.hash) for r in store.audit_rows()], "anchors": store.audit_anchors()}


def test_unknown_user_has_an_empty_profile(store: ProfileStore) -> None:
    profile = store.get("nobody")
    assert (profile.user_id, profile.version, profile.events) == ("nobody", 0, 0)
    assert store.find_event("missing") is None


def test_commit_then_get(store: ProfileStore) -> None:
    commit = change("e1", events=1)
    store.commit(commit)
    assert commit.profile.version == 1
    profile = store.get("alice")
    assert (profile.version, profile.events) == (1, 1)
    store.commit(change("e2", version=1, events=2))
    assert (store.get("alice").version, store.get("alice").events) == (2, 2)
    assert store.get("bob").version == 0


def test_a_moved_version_conflicts_and_changes_nothing(store: ProfileStore) -> None:
    store.commit(change("e1"))
    before = snapshot(store)
    with pytest.raises(Conflict):
        store.commit(change("e2", version=0, events=99))         # read before e1 was committed
    assert snapshot(store) == before
    assert store.find_event("e2") is None


def test_a_known_event_id_is_refused_and_changes_nothing(store: ProfileStore) -> None:
    store.commit(change("e1"))
    before = snapshot(store)
    with pytest.raises(DuplicateEvent):
        store.commit(change("e1", version=1, events=99, success=False))
    assert snapshot(store) == before
    assert store.find_event("e1").decision["decision"] == "allow"


def test_ip_activity_counts_failures_and_distinct_users_in_the_hour_before(store: ProfileStore) -> None:
    store.commit(change("old", user="old", at=AT - 3600, success=False))         # exactly an hour: out
    store.commit(change("a1", user="alice", at=AT - 1800, success=False))
    store.commit(change("a2", user="alice", version=1, at=AT - 60, success=False))
    store.commit(change("b1", user="bob", at=AT - 10))
    store.commit(change("c1", user="carol", at=AT + 60, success=False))          # after `at`: out
    store.commit(change("o1", user="dave", ip="198.51.100.1", at=AT, success=False))
    assert store.ip_activity(IP, AT) == store.ip_activity(IP, AT)             # reads change nothing
    activity = store.ip_activity(IP, AT)
    assert (activity.failures, activity.distinct_users) == (2, 2)
    later = store.ip_activity(IP, AT + 1800 + 1)                              # alice's a1 has left the hour
    assert (later.failures, later.distinct_users) == (2, 3)
    assert store.ip_activity("192.0.2.99", AT) == store.ip_activity("192.0.2.98", AT)
    assert store.ip_activity("192.0.2.99", AT).distinct_users == 0


def test_global_counts_totals_and_distinct_values(store: ProfileStore) -> None:
    store.commit(change("a1", user="alice", learned={"ip": IP, "country": "NO"}))
    store.commit(change("b1", user="bob", learned={"ip": IP, "country": "SE"}))
    store.commit(change("c1", user="carol", learned={"ip": "198.51.100.1", "country": "NO"}))
    store.commit(change("x1", user="dave", profile=False, learned={"ip": IP}))     # not learned: not counted
    counts = store.global_counts({"ip": IP, "country": "NO", "os": "Windows"})
    assert counts["ip"].count == 2 and counts["ip"].total == 3 and counts["ip"].distinct == 2
    assert counts["country"].count == 2 and counts["country"].total == 3 and counts["country"].distinct == 2
    assert (counts["os"].count, counts["os"].total, counts["os"].distinct) == (0, 0, 0)


def test_find_event_record_outcome_and_labelled_events(store: ProfileStore) -> None:
    store.commit(change("late", user="alice", at=AT + 100))
    store.commit(change("early", user="bob", at=AT - 100))
    found = store.find_event("late")
    assert found == stored_event("late", "alice", AT + 100)
    rows_before = len(list(store.audit_rows()))
    assert store.record_outcome("late", "confirmed_fraud", {"kind": "feedback", "event_id": "late"})
    assert not store.record_outcome("nope", "confirmed_fraud", {"kind": "feedback", "event_id": "nope"})
    assert len(list(store.audit_rows())) == rows_before + 1                  # the unknown one left no record
    assert store.find_event("late").outcome == "confirmed_fraud"
    assert [(e.event_id, e.outcome) for e in store.labelled_events()] == [("early", None),
                                                                         ("late", "confirmed_fraud")]


def test_update_profile_checks_the_version_and_counts(store: ProfileStore) -> None:
    store.commit(change("e1", learned={}))
    profile = UserProfile(user_id="alice", events=7)
    store.update_profile("alice", 1, profile, {"country": "NO"}, None)
    assert profile.version == 2
    assert (store.get("alice").version, store.get("alice").events) == (2, 7)
    assert store.global_counts({"country": "NO"})["country"].count == 1
    with pytest.raises(Conflict):
        store.update_profile("alice", 1, UserProfile(user_id="alice", events=99), {"country": "NO"},
                             {"kind": "trust"})
    assert store.get("alice").events == 7
    assert store.global_counts({"country": "NO"})["country"].count == 1


def test_erase_user_removes_only_that_user(store: ProfileStore) -> None:
    store.commit(change("a1", user="alice", success=False))
    store.commit(change("a2", user="alice", version=1, ip="198.51.100.1"))
    store.commit(change("b1", user="bob", success=False))
    alice_secret = store.user_secret("alice", "key-alice", create=True)
    bob_secret = store.user_secret("bob", "key-bob", create=True)
    assert alice_secret and store.user_secret("alice", "key-alice", create=True) == alice_secret
    rows_before = len(list(store.audit_rows()))

    assert store.erase_user("alice", "key-alice", {"kind": "erasure", "subject": "s-alice"})

    assert store.get("alice").version == 0
    assert store.find_event("a1") is None and store.find_event("a2") is None
    assert store.user_secret("alice", "key-alice", create=False) is None
    assert (store.ip_activity(IP, AT).failures, store.ip_activity(IP, AT).distinct_users) == (1, 1)
    assert store.ip_activity("198.51.100.1", AT).distinct_users == 0
    assert store.get("bob").version == 1 and store.find_event("b1") is not None
    assert store.user_secret("bob", "key-bob", create=False) == bob_secret
    assert [e.event_id for e in store.labelled_events()] == ["b1"]
    assert len(list(store.audit_rows())) == rows_before + 1
    assert not store.erase_user("alice", "key-alice", {"kind": "erasure", "subject": "s-alice"})


def test_audit_rows_verify_with_the_key_and_an_edited_row_is_found(store: ProfileStore, tmp_path) -> None:
    store.commit(change("e1"))
    store.append_audit({"kind": "model", "model_version": "m1"})
    store.commit(change("e2", version=1))
    rows = list(store.audit_rows())
    assert [r.seq for r in rows] == [1, 2, 3] and len({r.chain for r in rows}) == 1
    assert verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    assert verify(rows, b"another key", store.audit_anchors()) != []          # seals are keyed

    _tamper(store, tmp_path, rows[1], rows[1].body.replace('"m1"', '"m2"'))

    problems = verify(store.audit_rows(), AUDIT_KEY, store.audit_anchors())
    assert [(p.seq, "edited" in p.what) for p in problems] == [(2, True)]


def test_a_deleted_last_audit_record_is_found_by_the_head_anchor(store: ProfileStore, tmp_path) -> None:
    for n in range(3):
        store.append_audit({"kind": "model", "model_version": f"m{n}"})
    rows = list(store.audit_rows())

    _tamper(store, tmp_path, rows[-1], None)

    assert [r.seq for r in store.audit_rows()] == [1, 2]
    assert verify(store.audit_rows(), AUDIT_KEY) == []                    # the links alone look fine
    problems = verify(store.audit_rows(), AUDIT_KEY, store.audit_anchors())
    assert [(p.seq, "missing" in p.what) for p in problems] == [(3, True)]


def backend(store: ProfileStore) -> Any:
    """The backend behind the read cache (cached.py) and the batching layer (batching.py)."""
    store = getattr(store, "inner", store)
    return getattr(store, "backend", store)


def _tamper(store: ProfileStore, tmp_path, row: Any, body: str | None) -> None:
    """Edit (or, with ``body=None``, delete) one stored audit record behind the store's back."""
    store = backend(store)
    if isinstance(store, MemoryStore):
        index = store._audit.index(row)
        if body is None:
            del store._audit[index]
        else:
            store._audit[index] = dataclasses.replace(row, body=body)
    elif isinstance(store, SQLiteStore):
        with closing(sqlite3.connect(tmp_path / "profiles.db", isolation_level=None)) as db:
            if body is None:
                db.execute("DELETE FROM audit WHERE chain=? AND seq=?", (row.chain, row.seq))
            else:
                db.execute("UPDATE audit SET body=? WHERE chain=? AND seq=?", (body, row.chain, row.seq))
    else:
        assert isinstance(store, RedisStore)
        client = store._redis                                  # any topology: the store's own client
        key = store._chain_key("ar", row.chain)
        stored = [item for item in client.lrange(key, 0, -1) if item.endswith(row.body.encode())]
        assert len(stored) == 1
        if body is None:
            client.lrem(key, 1, stored[0])
        else:
            client.lset(key, row.seq - 1, stored[0].replace(row.body.encode(), body.encode()))


def test_prune_audit_keeps_the_chain_verifiable(store: ProfileStore) -> None:
    for n in range(5):
        store.append_audit({"kind": "model", "model_version": f"m{n}"})
    chain = next(store.audit_rows()).chain
    assert store.prune_audit(chain, 2, {"kind": "audit_pruned", "through_seq": 2}) == 2
    rows = list(store.audit_rows())
    assert [r.seq for r in rows] == [3, 4, 5, 6]
    assert '"audit_pruned"' in rows[-1].body
    assert verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    assert verify(rows, AUDIT_KEY) != []                              # without its start anchor: a gap
    assert store.prune_audit(chain, 6, {"kind": "audit_pruned"}) == 0     # never the last record
    assert store.prune_audit(chain, 1, {"kind": "audit_pruned"}) == 0     # already gone
    assert [r.seq for r in store.audit_rows()] == [3, 4, 5, 6]


def test_payment_totals_count_executed_payments_in_the_window(store: ProfileStore) -> None:
    day = 86400.0
    payments = [  # event id, at, action, amount, currency, decision, outcome
        ("p1", AT, "payment", 100.0, "EUR", "allow", None),
        ("p2", AT + 60, "payment", 50.0, "EUR", "step_up", "step_up_passed"),
        ("p3", AT + 120, "payment", 30.0, "EUR", "step_up", None),              # never went ahead
        ("p4", AT + 180, "payment", 20.0, "EUR", "allow", "confirmed_fraud"),
        ("p5", AT, "payment", 1000.0, "USD", "allow", None),                    # other currency
        ("p6", AT, "add_payee", 5.0, "EUR", "allow", None),                     # other action
        ("p7", AT, "payment", 8.0, "EUR", "deny", None),
        ("p8", AT - day, "payment", 1.0, "EUR", "allow", None),                 # since is inclusive
        ("p9", AT + day, "payment", 9.0, "EUR", "allow", None),                 # until is not
    ]
    for event_id, at, action, amount, currency, verdict, outcome in payments:
        commit = change(event_id, user=f"user-{event_id}", at=at)
        commit.event = stored_event(event_id, commit.user_id, at, verdict, action=action, amount=amount,
                                    currency=currency)
        store.commit(commit)
        if outcome:
            assert store.record_outcome(event_id, outcome, {"kind": "feedback"})
    store.commit(change("login", user="user-login"))
    totals = store.payment_totals(("payment",), "EUR", AT - day, AT + day)
    assert (totals.count, totals.amount, totals.fraud_count, totals.fraud_amount) == (4, 171.0, 1, 20.0)
    assert totals.fraud_rate == pytest.approx(20.0 / 171.0)
    assert store.payment_totals(("payment", "add_payee"), "EUR", AT - day, AT + day).count == 5
    assert store.payment_totals(("payment",), "GBP", AT - day, AT + day).fraud_rate is None
    assert store.erase_user("user-p4", "key-user-p4", {"kind": "erasure"})
    assert store.payment_totals(("payment",), "EUR", AT - day, AT + day).fraud_count == 0


def test_concurrent_events_for_one_user_lose_no_update(store: ProfileStore) -> None:
    """8 clients x 50 logins for the same user at once through the Engine: every learned event is counted once."""
    import asyncio

    engine = Engine(store, Enricher())

    async def client(first: int) -> int:
        learned = 0
        for i in range(50):
            n = first * 50 + i
            learned += (await engine.record(event(n, at=T0 + timedelta(seconds=30 * n)))).learned
        return learned

    async def all_clients() -> list[int]:
        return await asyncio.gather(*(client(c) for c in range(8)))

    learned = asyncio.run(all_clients())
    profile = store.get("alice")
    assert sum(learned) == 400                                  # low-risk repeats: every one is learned
    assert profile.events == 400
    assert len(list(store.labelled_events())) == 400
    rows = list(store.audit_rows())
    assert len(rows) == 400 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []


def test_submitted_commits_are_decided_one_by_one_and_durable(store: ProfileStore) -> None:
    """What the service does: many events in flight at once (one group on SQLite); a stale version
    and a repeated event id are refused alone, every other event is there afterwards."""
    store.commit(change("seed", user="u0"))
    futures = {f"u{i}": store.submit(change(f"g{i}", user=f"u{i}", version=1 if i == 0 else 0))
               for i in range(20)}
    stale = store.submit(change("stale", user="u1", version=0, events=99))    # u1 read before g1 landed
    repeated = store.submit(change("g2", user="u21"))                        # g2's id, another user
    for future in futures.values():
        assert future.result(timeout=10) is None
    with pytest.raises(Conflict):
        stale.result(timeout=10)
    with pytest.raises(DuplicateEvent):
        repeated.result(timeout=10)
    assert [store.get(f"u{i}").version for i in range(20)] == [2] + [1] * 19
    assert store.get("u1").events == 1 and store.get("u21").version == 0
    assert {e.event_id for e in store.labelled_events()} == {"seed", *(f"g{i}" for i in range(20))}
    assert store.find_event("g2").user_id == "u2"
    rows = list(store.audit_rows())
    assert len(rows) == 21 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    counts = store.global_counts({"ip": IP})["ip"]
    assert (counts.count, counts.total, counts.distinct) == (21, 21, 1)


@pytest.fixture(params=["sqlite", *REDIS_TOPOLOGIES])
def two_processes(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[ProfileStore, ProfileStore]]:
    """Two stores over the same data, each with its own read cache: two service processes."""
    if request.param == "sqlite":
        url, options = f"sqlite:///{tmp_path}/profiles.db", {"synchronous": "NORMAL"}
    else:
        url, options = redis_url(request, request.param), {"prefix": f"test-{uuid.uuid4().hex[:12]}:"}
    a = open_store(url, audit_key=AUDIT_KEY, **options)
    b = open_store(url, audit_key=AUDIT_KEY, **options)
    try:
        yield a, b
    finally:
        a.clear()
        a.close()
        b.close()


def test_a_profile_cached_by_one_process_and_moved_by_another_conflicts_then_reads_fresh(two_processes) -> None:
    a, b = two_processes
    a.commit(change("e1", events=1))
    assert a.get("alice").version == 1 == b.get("alice").version          # both now hold version 1
    b.commit(change("e2", version=1, events=2))                            # the other process moves on
    assert a.get("alice").version == 1                                     # a's cache has not seen it...
    with pytest.raises(Conflict):                                          # ...so its write is refused,
        a.commit(change("e3", version=1, profile=False))                   # even one that learns nothing
    fresh = a.get("alice")                                                 # and a reads what b wrote
    assert (fresh.version, fresh.events) == (2, 2)
    assert a.find_event("e3") is None
    a.commit(change("e3", version=2, events=3))
    with pytest.raises(Conflict):                                          # b's cache, stale in turn
        b.commit(change("e4", version=2, events=4))
    assert (b.get("alice").version, b.get("alice").events) == (3, 3)


def test_engines_in_two_processes_count_every_event_once(two_processes) -> None:
    """Alternating events of one user through two engines with their own caches: the retry after a
    conflict decides on the fresh profile, so the count is exact and every event is recorded once."""
    a, b = two_processes
    engines = [Engine(a, Enricher(), pseudonym_key=b"k" * 32), Engine(b, Enricher(), pseudonym_key=b"k" * 32)]
    learned = sum(asyncio.run(engines[n % 2].record(event(n, at=T0 + timedelta(seconds=30 * n)))).learned
                  for n in range(12))
    assert learned == 12
    assert a.inner.get("alice").events == 12                               # the store itself, past any cache
    assert b.get("alice").events == 12                                     # the last writer's cache follows it
    assert len(list(a.labelled_events())) == 12


def test_engines_in_two_processes_decide_each_event_once(two_processes) -> None:
    """A load balancer that knows nothing of users sends a user's events to either worker. Once a
    worker has met the other (its first conflict), it checks a cached profile against the store
    before deciding, so no event is decided on a stale profile and then again after a conflict."""
    a, b = two_processes
    engines = [Engine(a, Enricher(), pseudonym_key=b"k" * 32), Engine(b, Enricher(), pseudonym_key=b"k" * 32)]
    decided = []
    for engine in engines:
        def counted(event: Any, evaluate: Any = engine.evaluate) -> Any:
            decided.append(event.event_id)
            return evaluate(event)
        engine.evaluate = counted                                          # type: ignore[method-assign]
    for n in range(12):
        if n == 4:
            decided.clear()                      # by now each worker has met the other: one conflict each
        asyncio.run(engines[n % 2].record(event(n, at=T0 + timedelta(seconds=30 * n))))
    assert len(decided) == 8 and len(set(decided)) == 8                    # none decided twice
    assert backend(a).get("alice").events == 12 == b.get("alice").events      # b wrote last


def test_a_process_that_meets_no_other_writer_never_checks_its_cache(tmp_path) -> None:
    """Alone, its cache is always current: checking would cost a store read an event for nothing."""
    store = open_store(f"sqlite:///{tmp_path}/profiles.db", audit_key=AUDIT_KEY)
    engine = Engine(store, Enricher(), pseudonym_key=b"k" * 32)
    checked = []
    real = backend(store).changed_profiles
    backend(store).changed_profiles = lambda probes: checked.extend(probes) or real(probes)
    try:
        for n in range(6):
            asyncio.run(engine.record(event(n, at=T0 + timedelta(seconds=30 * n))))
        assert checked == []
        with pytest.raises(Conflict):                                      # another writer shows itself
            store.commit(change("elsewhere", user="alice", version=0))
        asyncio.run(engine.record(event(6, at=T0 + timedelta(seconds=180))))     # read afresh: a miss
        asyncio.run(engine.record(event(7, at=T0 + timedelta(seconds=210))))     # a hit: now checked
        assert checked == [("alice", 7)]                                   # version 7: after events 0-6
    finally:
        engine.close()


def test_changed_profiles_sends_back_only_a_moved_profile(store: ProfileStore) -> None:
    store.commit(change("e1", events=1))                                   # alice at version 1
    assert backend(store).changed_profiles([("alice", 1), ("nobody", 0)]) == [None, None]
    moved, gone = backend(store).changed_profiles([("alice", 0), ("nobody", 4)])
    assert (moved.user_id, moved.version, moved.events) == ("alice", 1, 1)
    assert (gone.user_id, gone.version, gone.events) == ("nobody", 0, 0)   # erased elsewhere: empty again


def test_a_profile_this_process_is_still_writing_is_used_as_cached(tmp_path) -> None:
    """While its own commit waits for the disk, the store still holds the older version: the cache's
    newer profile is the one to build on, not the store's (checking it would undo the write)."""
    store = open_store(f"sqlite:///{tmp_path}/profiles.db", audit_key=AUDIT_KEY)
    other = sqlite3.connect(tmp_path / "profiles.db", isolation_level=None)

    async def main() -> tuple[int, int]:
        await store.submit_async(change("w0", events=1))
        with pytest.raises(Conflict):                                      # another writer was met: checks on
            await store.submit_async(change("stale", version=0))
        assert (await store.get_async("alice")).version == 1               # cached again
        other.execute("BEGIN IMMEDIATE")                                   # the next commit cannot land yet
        committed = store.submit_async(change("w1", version=1, events=2))
        pending = await store.get_async("alice")
        other.execute("ROLLBACK")
        await asyncio.wait_for(committed, 10)
        return pending.version, (await store.get_async("alice")).version

    try:
        assert asyncio.run(main()) == (2, 2)
        assert backend(store).get("alice").version == 2
    finally:
        other.close()
        store.close()


def test_a_refused_change_in_a_group_leaves_the_rest_of_the_group_and_the_trail_whole(store: ProfileStore) -> None:
    """A group whose second change is refused: the ones sealed after it (Redis: onto a head that
    never was) must still land, each once, and the audit chain must verify without a gap."""
    store.commit(change("first", user="carol"))
    group = [change("g1", user="dan"), change("g2", user="carol", version=0),       # stale: refused
             change("g3", user="erin"), change("g4", user="fay"), change("first", user="gus")]   # repeated id
    outcomes = [o if o is None else type(o).__name__ for o in backend(store).commit_group(group)]   # one group
    assert outcomes == [None, "Conflict", None, None, "DuplicateEvent"]
    assert {e.event_id for e in store.labelled_events()} == {"first", "g1", "g3", "g4"}
    rows = list(store.audit_rows())
    assert len(rows) == 4 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    assert [store.get(u).version for u in ("carol", "dan", "erin", "fay", "gus")] == [1, 1, 1, 1, 0]


def test_context_reads_ip_activity_and_counts_together(store: ProfileStore) -> None:
    store.commit(change("a1", user="alice", at=AT - 60, success=False))
    store.commit(change("b1", user="bob", at=AT - 30, learned={"ip": IP, "country": "SE"}))
    activity, counts = store.context(IP, AT, {"ip": IP, "country": "NO"})
    assert activity == store.ip_activity(IP, AT) and (activity.failures, activity.distinct_users) == (1, 2)
    assert counts == store.global_counts({"ip": IP, "country": "NO"})
    assert (counts["ip"].count, counts["country"].count, counts["country"].distinct) == (2, 1, 2)


def test_an_erasure_in_one_process_reaches_the_other_processes_secret_cache(two_processes) -> None:
    a, b = two_processes
    secret = a.user_secret("alice", "key-alice", create=True)
    assert b.user_secret("alice", "key-alice", create=True) == secret          # now cached in b as well
    b.erase_user("alice", "key-alice", {"kind": "erasure", "subject": "s"})
    deadline = time.monotonic() + 5                                             # Redis: told at once;
    while a.user_secret("alice", "key-alice", create=False) is not None:       # SQLite: within the TTL
        assert time.monotonic() < deadline, "the other process kept the erased user's secret"
        time.sleep(0.05)
    fresh = a.user_secret("alice", "key-alice", create=True)
    assert fresh is not None and fresh != secret


def test_a_burst_of_one_users_events_on_the_event_loop_is_decided_once_each_in_turn(store: ProfileStore) -> None:
    """40 events of one user at once on the service's loop: with the Redis store each awaits its
    context read off the loop, so they must take turns; none may be decided twice (a Conflict retry)."""
    import asyncio

    decided = []

    class Counting(Engine):
        def _decide(self, *args: Any) -> Any:
            decided.append(1)
            return super()._decide(*args)

    engine = Counting(store, Enricher(), audit_key=AUDIT_KEY)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(engine.score(event(n, at=T0 + timedelta(seconds=30 * n)))
                                      for n in range(40)))

    decisions = asyncio.run(burst())
    assert [d.decision for d in decisions] == ["allow"] * 40
    assert len(decided) == 40                                   # each decided once: no retry
    assert store.get("alice").events == 40
    assert len(list(store.labelled_events())) == 40
    rows = list(store.audit_rows())
    assert len(rows) == 40 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []


def test_redis_that_lost_its_scripts_is_given_them_again(tmp_path) -> None:
    """A Redis restarted without persistence, or SCRIPT FLUSHed, has no scripts: the next commit
    and context read load them again instead of failing, and apply nothing twice."""
    store = open_store(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:12]}:", audit_key=AUDIT_KEY)
    try:
        store.commit(change("s1", user="alice", version=0, learned={"ip": IP}))
        redis.Redis.from_url(REDIS_URL).script_flush()
        store.commit(change("s2", user="alice", version=1, events=2, learned={"ip": IP}))
        redis.Redis.from_url(REDIS_URL).script_flush()
        activity, counts = store.context(IP, AT + 1, {"ip": IP})
        assert (activity.distinct_users, counts["ip"].count) == (1, 2)
        assert store.get("alice").events == 2 and store.get("alice").version == 2
        rows = list(store.audit_rows())
        assert len(rows) == 2 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    finally:
        store.clear()
        store.close()


def test_reads_made_in_one_turn_of_the_loop_each_get_their_own_context(store: ProfileStore) -> None:
    """The service's reads of one loop turn are made together (SQLite: one statement at the end of
    the turn; Redis: one pipeline); each must still get exactly what it would have read alone."""
    import asyncio

    store.commit(change("a1", user="alice", at=AT - 60, success=False, learned={"ip": IP, "country": "SE"}))
    store.commit(change("b1", user="bob", ip="198.51.100.1", at=AT - 30, learned={"ip": "198.51.100.1"}))
    reads = [(IP, AT, {"ip": IP, "country": "NO"}), ("198.51.100.1", AT, {}), ("192.0.2.99", AT, {"os": "Plan 9"}),
             (IP, AT - 61, {"country": "SE", "browser": "Lynx"}), ("198.51.100.1", AT, {"ip": "198.51.100.1"})]

    async def one_turn() -> list[Any]:
        return await asyncio.gather(*(store.context_async(ip, at, values) for ip, at, values in reads))

    together = asyncio.run(one_turn())
    assert together == [store.context(ip, at, values) for ip, at, values in reads]
    assert [(a.failures, a.distinct_users) for a, _ in together] == [(1, 1), (0, 1), (0, 0), (0, 0), (0, 1)]
    assert (together[0][1]["country"].count, together[0][1]["country"].distinct) == (0, 1)
    assert together[3][1]["country"].count == 1 and together[0][1]["ip"].count == 1
    assert together[2][1]["os"].count == 0 and together[1][1] == {}


def test_fractional_timestamps_are_kept_exactly(store: ProfileStore) -> None:
    """Times go to SQLite inside JSON: each must come back as the same double, and the hour's
    window must end exactly at the event, to the microsecond."""
    at = AT + 0.123457
    store.commit(change("f1", user="alice", at=at - 3600, success=False))         # exactly an hour: out
    store.commit(change("f2", user="bob", at=at - 3599.999999, success=False))    # a microsecond inside
    store.commit(change("f3", user="carol", at=at, success=False))                # at the event: in
    store.commit(change("f4", user="dave", at=at + 0.000001, success=False))      # a microsecond after: out
    assert store.ip_activity(IP, at).failures == 2
    stored = {e.event_id: e.at for e in store.labelled_events()}
    assert stored == {"f1": at - 3600, "f2": at - 3599.999999, "f3": at, "f4": at + 0.000001}


def test_when_each_payee_was_added_is_kept_by_every_store(store: ProfileStore, enricher) -> None:
    """``payee_added_h`` reads it back: a store that dropped it would make a minutes-old payee settled."""
    from riskengine.profiles import learned

    profile = UserProfile("alice")
    for n, payee in enumerate(("grocer", "someone-new")):
        profile = learned(profile, enricher.enrich(event(n, action="add_payee", payee_id=payee,
                                                         at=T0 + timedelta(minutes=3 * n))), 180 * 86400.0)
    store.commit(Commit("alice", 0, profile, IP, "key-alice", AT, True, {"ip": IP}, stored_event("e1"), None))
    kept = store.get("alice")
    assert kept.payees_added == {"grocer": AT, "someone-new": AT + 180.0} == profile.payees_added
    assert kept.payee_added_at("someone-new") == AT + 180.0


def test_the_loop_never_waits_for_a_commit_held_up_by_the_disk(tmp_path) -> None:
    """Another process holds SQLite's write lock (as a slow fsync would hold the writer): the
    group waits on the store's writer thread, not answered (not durable), while the event loop
    goes on turning with no stall; it commits, and the caller hears, once the lock is let go."""
    import asyncio

    store = open_store(f"sqlite:///{tmp_path}/profiles.db", audit_key=AUDIT_KEY)
    other = sqlite3.connect(tmp_path / "profiles.db", isolation_level=None)
    HELD_S = 1.0                                                 # how long the other process holds the lock

    async def main() -> float:
        await store.submit_async(change("w0"))
        other.execute("BEGIN IMMEDIATE")
        committed = store.submit_async(change("w1", version=1))
        read = asyncio.ensure_future(store.context_async(IP, AT, {"ip": IP}))   # WAL: reads go on beside the writer
        longest, last, started = 0.0, time.monotonic(), time.monotonic()
        while time.monotonic() - started < HELD_S:
            await asyncio.sleep(0.005)
            longest, last = max(longest, time.monotonic() - last), time.monotonic()
        assert not committed.done() and read.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(committed, 10)
        return longest

    try:
        # a loop that waited on the lock would stall for all of HELD_S; a busy machine's scheduler
        # can hold a runnable process off its core for a tenth of a second (seen in CI at load 3.5)
        assert asyncio.run(main()) < HELD_S / 2                  # the loop was never stuck
        assert {e.event_id for e in store.labelled_events()} == {"w0", "w1"}
        assert store.get("alice").version == 2
        rows = list(store.audit_rows())
        assert len(rows) == 2 and verify(rows, AUDIT_KEY, store.audit_anchors()) == []
    finally:
        other.close()
        store.close()


@pytest.fixture(params=["sqlite", *REDIS_TOPOLOGIES])
def shared_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[ProfileStore]:
    """The stores that keep data outside the process (the ones a value can be refused by)."""
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path}/profiles.db", synchronous="NORMAL", audit_key=AUDIT_KEY)
    else:
        opened = open_store(redis_url(request, request.param), prefix=f"test-{uuid.uuid4().hex[:12]}:",
                            audit_key=AUDIT_KEY)
    try:
        yield opened
    finally:
        opened.clear()
        opened.close()


def test_one_poisoned_item_fails_alone_and_its_group_of_30_goes_ahead(shared_store: ProfileStore) -> None:
    """An integer no store can hold (beyond 64 bits) in one event of a loop turn's group: that
    event gets ``Refused`` and leaves nothing behind; the 30 others are durable and the trail whole."""
    import asyncio

    poisoned = change("poison", user="mallory")
    poisoned.event = dataclasses.replace(poisoned.event, request={**poisoned.event.request,
                                                                  "attributes": {"n": 2 ** 70}})

    async def main() -> list[Any]:
        turn = [shared_store.submit_async(change(f"ok{i}", user=f"u{i}")) for i in range(15)]
        turn.append(shared_store.submit_async(poisoned))
        turn += [shared_store.submit_async(change(f"ok{i}", user=f"u{i}")) for i in range(15, 30)]
        return await asyncio.gather(*turn, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[15], Refused) and "2361183241434822606848" not in str(outcomes[15])
    assert outcomes[:15] + outcomes[16:] == [None] * 30
    assert shared_store.find_event("poison") is None and shared_store.get("mallory").version == 0
    assert {e.event_id for e in shared_store.labelled_events()} == {f"ok{i}" for i in range(30)}
    assert [shared_store.get(f"u{i}").version for i in range(30)] == [1] * 30
    rows = list(shared_store.audit_rows())
    assert len(rows) == 30 and verify(rows, AUDIT_KEY, shared_store.audit_anchors()) == []
    assert shared_store.ip_activity(IP, AT).distinct_users == 30


def test_a_far_future_event_never_prunes_the_shared_ip_window(store: ProfileStore) -> None:
    """Entries go at most two windows before the server's clock: one event dated in 9999 cannot
    empty the per-IP window the credential-stuffing signals read."""
    now = time.time()
    for i in range(3):
        store.commit(change(f"f{i}", user=f"u{i}", at=now - 60, success=False))
    inner = backend(store)
    if isinstance(inner, SQLiteStore):
        inner._commits = 511                                  # the next commit prunes (every 512)
    store.commit(change("future", user="mallory", at=253402300799.0, success=False))
    activity = store.ip_activity(IP, now)
    assert (activity.failures, activity.distinct_users) == (3, 3)


def test_sqls_payment_totals_agree_with_the_python_rule(store: ProfileStore) -> None:
    """policy/payments.py's rule is the definition; SQLite's SQL form (and every store's selection
    of a window) must give the same totals on a varied history."""
    import random

    rng = random.Random(7)
    for n in range(120):
        request = {"action": rng.choice(["payment", "add_payee", "login"]), "currency": rng.choice(["EUR", "GBP"]),
                   **({"amount": round(rng.uniform(0, 500), 2)} if rng.random() < 0.9 else {})}
        event_ = StoredEvent(f"p{n}", f"u{n % 7}", AT + rng.uniform(-3, 3) * 86400, request,
                             {"decision": rng.choice(["allow", "step_up", "deny"])}, {})
        store.commit(Commit(event_.user_id, store.get(event_.user_id).version, None, IP, "k", event_.at, True,
                            {}, event_, None))
        if rng.random() < 0.5:
            store.record_outcome(event_.event_id, rng.choice([*EXECUTED_OUTCOMES, "step_up_failed"]), {"kind": "f"})
    events = list(store.labelled_events())
    for actions, currency, since, until in [(("payment",), "EUR", AT - 86400, AT + 86400),
                                            (("payment", "add_payee"), "GBP", AT - 3 * 86400, AT),
                                            (("login",), "EUR", AT, AT + 3 * 86400)]:
        expected = payment_totals(((e.request, e.decision, e.outcome) for e in events if since <= e.at < until),
                                  actions, currency)
        got = store.payment_totals(actions, currency, since, until)
        assert (got.count, got.fraud_count) == (expected.count, expected.fraud_count)
        assert got.amount == pytest.approx(expected.amount) and got.fraud_amount == pytest.approx(expected.fraud_amount)
    assert store.payment_totals(("payment",), "EUR", AT - 86400, AT + 86400).count > 0


def test_features_import_no_store() -> None:
    """The signals are pure: features.py imports no store (the types it reads live in it)."""
    import ast

    import riskengine.features

    tree = ast.parse(Path(riskengine.features.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | \
        {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported and not {m for m in imported if m and m.startswith("riskengine.stores")}
