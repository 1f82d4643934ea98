"""Redis Cluster: a write whose process crashed between the user's slot and the other slots.

The cluster store writes a user's profile and event in the user's slot, with what it owes the other
slots (the IP's entry, population counts, the event indexes) kept beside them, then applies those.
Here a real process dies (``os._exit``) right after the user's slot was written, and nobody ever
retries the event: the sweep a serving process runs at start applies what it owed, once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid

from riskengine.stores.redis import RedisStore

#: the child: one event committed through the real store, killed where the owed parts would be applied
CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    from riskengine.profiles import UserProfile
    from riskengine.stores.base import Commit, StoredEvent
    from riskengine.stores.redis import RedisStore

    url, prefix = sys.argv[1], sys.argv[2]
    RedisStore._apply_owed = lambda self, items: os._exit(17)      # the crash: after the user's slot only
    store = RedisStore(url, prefix=prefix, audit_key=b"k" * 32)
    event = StoredEvent("owed-ev-1", "owed-user", 1_800_000_000.0, {"action": "login", "ip": "198.51.100.7"},
                        {"decision": "allow"}, {})
    store.commit_group([Commit("owed-user", 0, UserProfile(user_id="owed-user"), "ip-key-owed", "user-key-owed",
                               1_800_000_000.0, True, {"country": "NO"}, event)])
""")


def test_a_crashed_write_is_completed_by_the_sweep_once(redis_cluster) -> None:
    prefix = f"owed-{uuid.uuid4().hex[:8]}:"
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITER, redis_cluster.url, prefix],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 17, crashed.stderr
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    try:
        read = [("ip-key-owed", 1_800_000_001.0, {"country": "NO"})]
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
    crashed = subprocess.run([sys.executable, "-c", CRASHING_WRITER, redis_cluster.url, prefix],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 17, crashed.stderr
    store = RedisStore(redis_cluster.url, prefix=prefix, audit_key=b"k" * 32)
    try:
        store.sweep_owed_every(interval_s=0.2, min_age_s=0)
        deadline = time.monotonic() + 20
        while True:
            (activity, _), = store.read_contexts([("ip-key-owed", 1_800_000_001.0, {})])
            if activity.distinct_users == 1:
                break
            assert time.monotonic() < deadline, "the sweep never applied the owed write"
            time.sleep(0.1)
    finally:
        store.clear()
        store.close()
