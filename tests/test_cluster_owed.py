"""Redis Cluster: a write whose process crashed between the user's slot and the other slots.

The cluster store writes a user's profile and event in the user's slot, with what it owes the other
slots (the IP's entry, population counts, the event indexes) kept beside them, then applies those.
Here a real process dies (``os._exit``) right after the user's slot was written, and nobody ever
retries the event: the sweep a serving process runs at start applies what it owed, once.

Erasure meets those entries too: it applies what its user's slot still owes, then fences the user's
generation in each other slot it cleans, so a sweep or retry that read an entry before the erasure
brings nothing of the user back. Entries that are not ours (tampered, garbage) are set aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings

import pytest
from fastapi.testclient import TestClient

from riskengine.api import create_app
from riskengine.profiles import UserProfile
from riskengine.stores import redis as redis_store
from riskengine.stores.base import Commit, DuplicateEvent, StoredEvent
from riskengine.stores.redis import RedisStore, connect
from tests.redis_servers import within

#: the child: one event committed through the real store, killed where the owed parts would be applied
CRASHING_WRITER = textwrap.dedent("""
    import hashlib, os, sys
    from riskengine.profiles import UserProfile
    from riskengine.stores.base import Commit, StoredEvent
    from riskengine.stores.redis import RedisStore

    url, prefix = sys.argv[1], sys.argv[2]
    user, event_id = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else ("owed-user", "owed-ev-1")
    RedisStore._apply_owed = lambda self, items: os._exit(17)      # the crash: after the user's slot only
    store = RedisStore(url, prefix=prefix, audit_key=b"k" * 32)
    event = StoredEvent(event_id, user, 1_800_000_000.0, {"action": "payment", "ip": "198.51.100.7",
                                                          "amount": 5, "currency": "EUR"}, {"decision": "allow"}, {})
    store.commit_group([Commit(user, 0, UserProfile(user_id=user), f"ip-key-{user}", f"user-key-{user}",
                               1_800_000_000.0, True, {"country": "NO"}, event,
                               {"kind": "score", "subject": hashlib.sha256(user.encode()).hexdigest()[:16]})])
""")


def crash_a_writer(url: str, prefix: str, user: str = "owed-user", event_id: str = "owed-ev-1") -> None:
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITER, url, prefix, user, event_id],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 17, crashed.stderr


def test_a_crashed_write_is_completed_by_the_sweep_once(redis_cluster) -> None:
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    crash_a_writer(redis_cluster.url, prefix)
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    try:
        read = [("ip-key-owed-user", 1_800_000_001.0, {"country": "NO"})]
        (activity, counts), = store.read_contexts(read)
        assert activity.distinct_users == 0 and counts["country"].count == 0      # owed, not applied
        assert store.get("owed-user").version == 1                        # the user's slot was written

        assert store.sweep_owed(min_age_s=3600) == 0                      # a write this young may be in flight
        assert store.sweep_owed(min_age_s=0) == 1
        (activity, counts), = store.read_contexts(read)
        assert activity.distinct_users == 1 and counts["country"].count == 1
        assert store.sweep_owed(min_age_s=0) == 0                          # forgotten once applied
        (activity, counts), = store.read_contexts(read)
        assert activity.distinct_users == 1 and counts["country"].count == 1       # and never counted twice
    finally:
        store.clear()
        store.close()


def test_the_background_sweep_applies_it_without_any_request(redis_cluster) -> None:
    """The sweep ``open_engine`` starts for a serving process: at once, then every interval."""
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    crash_a_writer(redis_cluster.url, prefix)
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    try:
        store.sweep_owed_every(interval_s=0.2, min_age_s=0)
        deadline = time.monotonic() + 120
        while True:
            (activity, _), = store.read_contexts([("ip-key-owed-user", 1_800_000_001.0, {})])
            if activity.distinct_users == 1:
                break
            assert time.monotonic() < deadline, "the sweep never applied the owed write"
            time.sleep(0.1)
    finally:
        store.clear()
        store.close()


# -- erasure and the owed entries ------------------------------------------------------------------

def _kept(url: str, prefix: str) -> bytes:
    """Every key under ``prefix`` on every primary, with its value."""
    client = connect(url)
    kept = b""
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            kind = client.type(key)
            value = {b"string": lambda: client.get(key), b"hash": lambda: client.hgetall(key),
                     b"list": lambda: client.lrange(key, 0, -1), b"set": lambda: client.smembers(key),
                     b"zset": lambda: client.zrange(key, 0, -1)}[kind]()
            kept += key + b"=" + repr(value).encode() + b"\n"
    finally:
        client.close()
    return kept


def _assert_nothing_of(store: RedisStore, url: str, user: str, event_id: str) -> None:
    """No key or value names the user, the user's key, IP key, hash tag or event (the generation's fences,
    named by a random generation, are all that may stay: they expire within a day)."""
    kept = _kept(url, store.prefix)
    tag = store._user("p", user, user).split("{", 1)[1].split("}", 1)[0]
    for needle in (user, f"user-key-{user}", f"ip-key-{user}", tag, event_id):
        assert needle.encode() not in kept, f"{needle!r} outlived the erasure:\n{kept.decode(errors='replace')}"
    client = connect(url)
    try:
        for key in client.scan_iter(match=f"{store.prefix}x:*", count=1000):
            assert client.get(key) == b"1" and 0 < client.ttl(key) <= 86400
    finally:
        client.close()


def _counted(store: RedisStore, user: str) -> tuple[int, float, int]:
    """(distinct users on the user's IP, the population count of country NO, the user's audit records)."""
    (activity, _), (_, counts) = store.read_contexts([(f"ip-key-{user}", 1_800_000_001.0, {}),
                                                      ("another-ip", 1_800_000_001.0, {"country": "NO"})])
    scored = sum(_subject(user) in row.body for row in store.audit_rows())
    return activity.distinct_users, counts["country"].count, scored


def _subject(user: str) -> str:
    """The audit records' stand-in for the user's pseudonym (which erasure makes unlinkable)."""
    return hashlib.sha256(user.encode()).hexdigest()[:16]


def _erase(store: RedisStore, user: str) -> bool:
    return store.erase_user(user, f"user-key-{user}", {"kind": "erasure", "subject": "erased-subject"})


def test_erasing_the_user_of_a_crashed_write_leaves_nothing_for_the_sweep_and_counts_once(redis_cluster) -> None:
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    crash_a_writer(redis_cluster.url, prefix, "erased-user", "erased-ev")
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    try:
        assert _counted(store, "erased-user") == (0, 0, 0)              # owed, not applied
        assert _erase(store, "erased-user")
        assert store.sweep_owed(min_age_s=0) == 0                        # the erasure took the entry with it
        _assert_nothing_of(store, redis_cluster.url, "erased-user", "erased-ev")
        # the population count and the audit record (kept after erasure, as on one primary) count once
        assert _counted(store, "erased-user") == (0, 1, 1)
        assert store.find_event("erased-ev") is None and store.get("erased-user").version == 0
    finally:
        store.clear()
        store.close()


@pytest.mark.parametrize("path", ["sweep", "retry", "lookup", "writer"])
def test_an_owed_entry_read_before_the_erasure_brings_nothing_of_the_user_back(redis_cluster, path) -> None:
    """The window: an applier read what was owed (the sweep scanned it, a retry got it with its DUP, a
    lookup found it, or the writer itself made it), then the user was erased by another process, then
    the applier applied it. The erased generation's fences refuse every part naming the user."""
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    user, event_id = f"raced-{path}", f"raced-ev-{path}"
    if path != "writer":
        crash_a_writer(redis_cluster.url, prefix, user, event_id)
    applier = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    eraser = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    applied: list[int] = []
    apply = applier._apply_owed

    def erased_first(items):                      # the erasure runs between the read and the apply
        if items and not applied:
            assert _erase(eraser, user)
        applied.append(len(items))
        return apply(items)

    applier._apply_owed = erased_first
    try:
        event = StoredEvent(event_id, user, 1_800_000_000.0, {"action": "payment", "ip": "198.51.100.7",
                                                              "amount": 5, "currency": "EUR"}, {"decision": "allow"}, {})
        commit = Commit(user, 0, UserProfile(user_id=user), f"ip-key-{user}", f"user-key-{user}", 1_800_000_000.0,
                        True, {"country": "NO"}, event, {"kind": "score", "subject": _subject(user)})
        if path == "sweep":
            assert applier.sweep_owed(min_age_s=0) == 1
        elif path == "retry":
            (outcome,) = applier.commit_group([commit])
            assert isinstance(outcome, DuplicateEvent)
        elif path == "lookup":
            applier.find_event(event_id)
        else:
            assert applier.commit_group([commit]) == [None]   # recorded, then erased: answered as recorded
        assert applied and applied[0] == 1
        _assert_nothing_of(applier, redis_cluster.url, user, event_id)
        assert applier.sweep_owed(min_age_s=0) == 0
        assert _counted(applier, user) == (0, 1, 1)           # counts and the audit record: once, not twice

        # the user may come back: the new generation's parts are not fenced
        applier._apply_owed = apply
        again = StoredEvent(f"{event_id}-back", user, 1_800_000_000.0, {"action": "login"}, {"decision": "allow"}, {})
        assert applier.commit_group([Commit(user, 0, UserProfile(user_id=user), f"ip-key-{user}",
                                            f"user-key-{user}", 1_800_000_000.0, True, {}, again)]) == [None]
        assert _counted(applier, user)[0] == 1 and applier.find_event(f"{event_id}-back") is not None
        assert [e.event_id for e in applier.labelled_events()] == [f"{event_id}-back"]
    finally:
        applier.clear()
        applier.close()
        eraser.close()


def test_an_event_id_claim_lasts_only_once_its_event_is_indexed(redis_cluster) -> None:
    """The claim (``ei:<event id>`` -> user) is made before the user's slot is written: one whose write
    is refused or never made expires, so no claim naming a user outlives what erasure can find."""
    store = RedisStore(redis_cluster.url, prefix=f"owed-{uuid.uuid4().hex[:8]}:", audit_key=b"k" * 32)
    client = connect(redis_cluster.url)
    try:
        def commit(event_id: str, expected_version: int) -> BaseException | None:
            event = StoredEvent(event_id, "claimer", 1_800_000_000.0, {"action": "login"}, {"decision": "allow"}, {})
            return store.commit_group([Commit("claimer", expected_version, UserProfile(user_id="claimer"), "ip",
                                              "user-key-claimer", 1_800_000_000.0, True, {}, event)])[0]

        assert commit("kept", 0) is None
        assert client.ttl(store._key("ei", "kept")) == -1                # indexed: for good
        assert commit("refused", 0) is not None                           # a stale version: CONFLICT
        assert 0 < client.ttl(store._key("ei", "refused")) <= 86400        # claimed, never written: goes
    finally:
        client.close()
        store.clear()
        store.close()


def _aged(url: str, prefix: str, user: str, seconds: float) -> None:
    """Make the user's owed entries look ``seconds`` old (as if written before a restart)."""
    store = RedisStore(url, prefix=prefix)
    client = connect(url)
    try:
        pending = store._user("pd", user, user)
        for op, raw in client.hgetall(pending).items():
            client.hset(pending, op, json.dumps({**json.loads(raw), "w": time.time() - seconds}))
    finally:
        client.close()
        store.close()


def test_the_service_sweeps_at_start_and_every_interval_and_stops_the_sweep_at_shutdown(
        redis_cluster, settings, monkeypatch, caplog) -> None:
    """``open_engine``'s wiring, through the app's lifespan: an owed entry older than the grace period
    is applied at start, one left while the service runs at the next interval, and the sweep's thread
    is gone once the service has shut down (``close`` wakes and joins it). (Bounds of 120 s: a run on a
    machine paused for a benchmark must not fail on the clock.)"""
    monkeypatch.setattr(redis_store, "OWED_SWEEP_EVERY_S", 0.5)
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    settings = settings.model_copy(update={"store": redis_cluster.url, "redis_prefix": prefix})
    crash_a_writer(redis_cluster.url, prefix, "before-start", "before-start-ev")
    _aged(redis_cluster.url, prefix, "before-start", 3600)
    reader = RedisStore(redis_cluster.url, prefix=prefix)

    def distinct_users(user: str) -> int:
        return reader.read_contexts([(f"ip-key-{user}", 1_800_000_001.0, {})])[0][0].distinct_users

    def sweeps() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "riskengine-owed-sweep" and t.is_alive()]

    assert not sweeps()
    caplog.set_level(logging.WARNING, logger="riskengine.store")
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            with TestClient(create_app(settings)) as client:
                within(120, lambda: distinct_users("before-start") == 1, "the sweep at start")
                assert len(sweeps()) == 1 and client.get("/livez").status_code == 200
                crash_a_writer(redis_cluster.url, prefix, "while-serving", "while-serving-ev")
                assert distinct_users("while-serving") == 0
                _aged(redis_cluster.url, prefix, "while-serving", 3600)
                within(120, lambda: distinct_users("while-serving") == 1, "the sweep at the next interval")
            assert not sweeps()           # without ``close`` waking it, it would go on sweeping every 0.5 s
        assert not [str(w.message) for w in warned], [str(w.message) for w in warned]
        applied = [r.getMessage() for r in caplog.records if "left owed" in r.getMessage()]
        assert applied == ["applied 1 write(s) a crashed process left owed to other slots"] * 2
        assert not any(r.levelno >= logging.ERROR for r in caplog.records if r.name == "riskengine.store")
    finally:
        reader.clear()
        reader.close()


def test_tampered_or_garbage_owed_entries_are_logged_set_aside_and_never_stop_a_sweep(redis_cluster, caplog) -> None:
    """Pending entries are data from a shared store: one that is not what the store writes (not JSON, not
    UTF-8, nested past the parser's depth, wrong types, non-finite or huge numbers, too big, another
    user's, another event's) is logged by its keyed token alone (no user id, IP or event id), moved to
    its user's quarantine hash (which erasure drops; under a key that is no user's: dropped), and the rest
    is applied as usual."""
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    user, ip = "tampered-user", "198.51.100.7"
    crash_a_writer(redis_cluster.url, prefix, user, "tampered-ev")
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    client = connect(redis_cluster.url)
    pending, quarantine = store._user("pd", user, user), store._user("pq", user, user)
    valid = json.loads(client.hget(pending, "tampered-ev"))
    garbage = {
        "bad-json": b"{not json " + ip.encode(),
        "not-utf8": b"\xff\xfe" + user.encode(),
        "deep": b"[" * 200_000,
        "not-an-object": json.dumps([user, ip]),
        "wrong-types": json.dumps({**valid, "w": "yesterday", "m": 7}),
        "nan-time": json.dumps({**valid, "at": float("nan")}),
        "huge-number": json.dumps(valid).replace('"at": ', '"at": 1' + "0" * 400 + ", \"x\": "),
        "huge-entry": json.dumps({**valid, "audit": {"blob": "x" * (2 << 20)}}),
        "many-counts": json.dumps({**valid, "pop": [["country", str(n)] for n in range(5000)]}),
        "bad-trim": json.dumps({**valid, "trim": "(not a score", "e": ""}),
        "another-users": json.dumps({**valid, "u": "someone-else", "e": ""}),
        "another-event": json.dumps({**valid, "e": "someone-elses-event"}),
        "bad-chain": json.dumps({**valid, "ch": "x}{y", "e": ""}),
        # well formed, but Redis refuses it (its IP key is not a sorted set): set aside, not retried forever
        "refused-by-redis": json.dumps({**valid, "ip": "not-a-zset", "e": "", "pop": []}),
    }
    client.set(f"{prefix}ip:not-a-zset", "a string")
    for op, raw in garbage.items():
        client.hset(pending, op, raw)
    stray = f"{prefix}pd:stray-{ip}"                    # a key no user has
    client.hset(stray, "op", json.dumps({**valid, "e": ""}))
    caplog.set_level(logging.WARNING, logger="riskengine.store")
    try:
        assert store.sweep_owed(min_age_s=0) == 1                       # the crashed write's own entry
        assert _counted(store, user)[:2] == (1, 1)
        skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skipped) == len(garbage) + 1, skipped
        assert sum("moved to quarantine" in m for m in skipped) == len(garbage), skipped
        assert sum("dropped: not a user's" in m for m in skipped) == 1, skipped     # no erasure would find it
        for record in caplog.records:
            for needle in (user, ip, "tampered-ev", "someone", "stray", "ip-key", "user-key"):
                assert needle not in record.getMessage(), record.getMessage()
        assert client.hkeys(pending) == [] and sorted(k.decode() for k in client.hkeys(quarantine)) == sorted(garbage)
        assert not client.exists(stray)

        caplog.clear()                                  # set aside once, not logged again every sweep
        assert store.sweep_owed(min_age_s=0) == 0 and not caplog.records

        # a retry of the event whose entry was tampered with: a duplicate as ever, nothing applied twice
        client.hset(pending, "tampered-ev", b"\x00garbage")
        event = StoredEvent("tampered-ev", user, 1_800_000_000.0, {"action": "login"}, {"decision": "allow"}, {})
        (outcome,) = store.commit_group([Commit(user, 1, None, f"ip-key-{user}", f"user-key-{user}",
                                                1_800_000_000.0, True, {}, event)])
        assert isinstance(outcome, DuplicateEvent) and store.find_event("tampered-ev") is not None
        assert _counted(store, user)[:2] == (1, 1) and client.hkeys(pending) == []

        # the background sweep outlives them: a later crashed write is still applied
        client.hset(pending, "later-garbage", b"{")
        store.sweep_owed_every(interval_s=0.2, min_age_s=0)
        crash_a_writer(redis_cluster.url, prefix, "later-user", "later-ev")
        within(120, lambda: _counted(store, "later-user")[0] == 1, "the sweep after garbage")

        assert _erase(store, user)                      # the quarantine goes with the user
        _assert_nothing_of(store, redis_cluster.url, user, "tampered-ev")
    finally:
        client.close()
        store.clear()
        store.close()


def test_an_entry_from_before_entries_named_their_user_is_left_to_its_retry(redis_cluster) -> None:
    """Entries written before ``u``/``w`` (and the generation) were kept: the sweep cannot tell whose
    they are and leaves them; the event's retry, which knows its user, applies them as before."""
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    crash_a_writer(redis_cluster.url, prefix, "old-user", "old-ev")
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    client = connect(redis_cluster.url)
    try:
        pending = store._user("pd", "old-user", "old-user")
        entry = json.loads(client.hget(pending, "old-ev"))
        client.hset(pending, "old-ev", json.dumps({k: v for k, v in entry.items() if k not in ("u", "w", "g")}))
        assert store.sweep_owed(min_age_s=0) == 0 and client.hexists(pending, "old-ev")
        event = StoredEvent("old-ev", "old-user", 1_800_000_000.0, {"action": "login"}, {"decision": "allow"}, {})
        (outcome,) = store.commit_group([Commit("old-user", 0, None, "ip-key-old-user", "user-key-old-user",
                                                1_800_000_000.0, True, {}, event)])
        assert isinstance(outcome, DuplicateEvent) and not client.hexists(pending, "old-ev")
        assert _counted(store, "old-user") == (1, 1, 1)
    finally:
        client.close()
        store.clear()
        store.close()
