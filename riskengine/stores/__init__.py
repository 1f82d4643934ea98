"""Profile stores: backends (memory.py, sqlite.py, redis.py) keep the data; batching.py adapts a
backend for the service (threads, groups, keyed statistics); cached.py reads what it can from memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riskengine.stores.base import (REDIS_SCHEMES, Commit, Conflict, DuplicateEvent, ProfileStore, Refused,
                                    StoredEvent, StoreUnavailable)
from riskengine.stores.batching import Batched
from riskengine.stores.cached import CachedStore
from riskengine.stores.memory import MemoryStore
from riskengine.stores.sqlite import SQLiteStore

__all__ = ["OFFLINE_KEYS", "REDIS_SCHEMES", "Batched", "CachedStore", "Commit", "Conflict", "DuplicateEvent", "MemoryStore",
           "ProfileStore", "Refused", "SQLiteStore", "StoreUnavailable", "StoredEvent", "memory_store", "open_store"]

#: keyed hashes an offline replay remembers (IPs, user agents, networks repeat: a tenth of a backfill's time)
OFFLINE_KEYS = 1 << 16


def memory_store(remember: int = 0, **options: Any) -> Batched:
    """An in-memory store as the engine uses it (training replays, what-if, tests): no threads, no waiting.
    ``remember``: offline replays keep that many recent keyed hashes (batching.py); the service none."""
    return Batched(MemoryStore(**options), options.get("audit_key"), threads=False, remember=remember)


def open_store(url: str, home: Path | None = None, **options: Any) -> ProfileStore:
    """``memory://``, ``sqlite`` (file under home), ``sqlite:///path``, ``redis://...``,
    ``redis+sentinel://HOST:PORT/SERVICE`` or ``redis+cluster://HOST:PORT,...``; the shared
    stores run on their own threads (batching.py) behind a read cache (cached.py). ``audit_key`` seals
    the trail, and also keys the hashes under which per-IP and population statistics are kept."""
    if url.startswith("memory"):
        return memory_store(audit_key=options.get("audit_key"))     # SQLite's file options do not apply
    if url == "sqlite":
        backend: Any = SQLiteStore((home or Path(".")) / "var" / "profiles.db", **options)
    elif url.startswith("sqlite:///"):
        backend = SQLiteStore(Path(url.removeprefix("sqlite:///")), **options)
    elif url.startswith(REDIS_SCHEMES):
        from riskengine.stores.redis import RedisStore

        backend = RedisStore(url, **options)
    else:
        raise ValueError(f"RISKENGINE_STORE: unknown store {url!r}; use sqlite, sqlite:///PATH, memory:// or "
                         "redis://HOST:PORT/DB, redis+sentinel://HOST:PORT/SERVICE or redis+cluster://HOST:PORT")
    return CachedStore(Batched(backend, options.get("audit_key")))
