"""Profile stores: one interface (base.py), three homes for the state."""

from __future__ import annotations

from pathlib import Path

from riskengine.stores.base import (Commit, Conflict, DuplicateEvent, GlobalCount, IpActivity,
                                    ProfileStore, StoredEvent, StoreUnavailable)
from riskengine.stores.cached import CachedStore
from riskengine.stores.memory import MemoryStore
from riskengine.stores.sqlite import SQLiteStore

__all__ = ["CachedStore", "Commit", "Conflict", "DuplicateEvent", "GlobalCount", "IpActivity", "MemoryStore",
           "ProfileStore", "SQLiteStore", "StoreUnavailable", "StoredEvent", "open_store"]


def open_store(url: str, home: Path | None = None, **options) -> ProfileStore:
    """``memory://``, ``sqlite`` (file under home), ``sqlite:///path`` or ``redis://...``; the shared
    stores come behind a read cache (cached.py)."""
    if url.startswith("memory"):
        return MemoryStore(audit_key=options.get("audit_key"))     # SQLite's file options do not apply
    if url == "sqlite":
        return CachedStore(SQLiteStore((home or Path(".")) / "var" / "profiles.db", **options))
    if url.startswith("sqlite:///"):
        return CachedStore(SQLiteStore(Path(url.removeprefix("sqlite:///")), **options))
    if url.startswith(("redis://", "rediss://", "unix://")):
        from riskengine.stores.redis import RedisStore

        return CachedStore(RedisStore(url, **options))
    raise ValueError(f"RISKENGINE_STORE: unknown store {url!r}; use sqlite, sqlite:///PATH, memory:// or redis://HOST:PORT/DB")
