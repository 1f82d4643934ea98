"""What a ``200`` carries on a Redis store: read from the server's own persistence settings at start.

API.md promises that a ``200`` means the event is durably recorded. With Redis that depends on how
the server persists (``CONFIG GET appendonly appendfsync save``), so the service reads it at start,
says it in the log and in ``/health``, and refuses to start on a Redis that keeps nothing unless the
operator accepts it (``RISKENGINE_REDIS_DURABILITY=none``). Cluster: the weakest primary counts.

Levels, weakest first (the README has the table):

- ``none``: no AOF, no RDB snapshots: a Redis restart loses every 200.
- ``snapshot``: RDB ``save`` rules only: a restart loses what came after the last snapshot.
- ``aof-no``: ``appendonly yes``, ``appendfsync no``: survives a Redis crash; a power loss of the
  primary loses what the OS had not written yet (typically up to 30 s).
- ``aof-everysec``: survives a Redis crash; a power loss of the primary loses up to about 1 s.
- ``aof-always``: every write is fsynced before Redis answers: survives a power loss of the primary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

log = logging.getLogger("riskengine.store")

LEVELS = ("none", "snapshot", "aof-no", "aof-everysec", "aof-always")

GUARANTEES = {
    "none": "a 200 is lost when Redis restarts (no AOF, no RDB snapshots)",
    "snapshot": "a 200 is lost when Redis restarts before its next RDB snapshot (no AOF)",
    "aof-no": "a 200 survives a Redis crash; a power loss of the primary loses what the OS had not flushed "
              "(appendfsync no, typically up to 30 s)",
    "aof-everysec": "a 200 survives a Redis crash; a power loss of the primary loses up to about 1 s "
                    "(appendfsync everysec)",
    "aof-always": "a 200 survives a crash or power loss of the Redis primary (appendfsync always)",
}


class NotDurable(RuntimeError):
    """The store keeps less than the service was told to require: it does not start."""


@dataclass(frozen=True)
class Durability:
    level: str                    # one of LEVELS
    detail: str                   # the settings read, e.g. "appendonly=yes appendfsync=everysec save=''"
    replicas: int = 0             # replicas each write waits for (WAIT; RISKENGINE_REDIS_WAIT_REPLICAS)

    @property
    def guarantee(self) -> str:
        if not self.replicas:
            return GUARANTEES[self.level]
        return (f"{GUARANTEES[self.level]}; and it is on {self.replicas} replica(s) before it is answered (WAIT), "
                "so a failover keeps it")

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "guarantee": self.guarantee, "settings": self.detail,
                "wait_replicas": str(self.replicas)}


def level_of(config: dict[str, str]) -> str:
    """The level of one server's ``CONFIG GET appendonly appendfsync save`` answer.

    >>> level_of({"appendonly": "yes", "appendfsync": "always", "save": ""})
    'aof-always'
    >>> level_of({"appendonly": "no", "appendfsync": "everysec", "save": "3600 1 300 100"})
    'snapshot'
    >>> level_of({"appendonly": "no", "appendfsync": "everysec", "save": ""})
    'none'
    """
    if config.get("appendonly", "no").lower() == "yes":
        return {"always": "aof-always", "everysec": "aof-everysec"}.get(config.get("appendfsync", "").lower(),
                                                                        "aof-no")
    return "snapshot" if config.get("save", "").strip() else "none"


def server_durability(client: Any) -> Durability:
    """One server's level. A Redis that refuses CONFIG (managed services often rename it) is judged by
    ``INFO persistence``: AOF on counts as ``aof-no`` (its fsync policy cannot be seen), off as ``none``."""
    import redis

    try:
        raw = client.config_get("appendonly") | client.config_get("appendfsync") | client.config_get("save")
        config = {_text(k): _text(v) for k, v in raw.items()}
        return Durability(level_of(config), " ".join(f"{k}={config.get(k, '')!r}"
                                                     for k in ("appendonly", "appendfsync", "save")))
    except redis.ResponseError:
        info = client.info("persistence")
        aof = str(info.get("aof_enabled", 0)) == "1"
        return Durability("aof-no" if aof else "none", f"CONFIG refused; INFO persistence aof_enabled={int(aof)}")


def weakest(found: Iterable[Durability]) -> Durability:
    """A cluster is as durable as its weakest primary."""
    found = list(found)
    low = min(found, key=lambda d: LEVELS.index(d.level))
    if len(found) > 1 and any(d.level != low.level for d in found):
        return Durability(low.level, f"weakest of {len(found)} primaries: {low.detail}")
    return low


def require(durability: Durability, required: str) -> None:
    """Refuse a store weaker than ``required`` (a level name; ``none`` accepts anything)."""
    if required not in LEVELS:
        raise ValueError(f"RISKENGINE_REDIS_DURABILITY: {required!r} is not one of {', '.join(LEVELS)}")
    if LEVELS.index(durability.level) < LEVELS.index(required):
        raise NotDurable(
            f"the Redis store keeps too little for a 200 to mean 'durably recorded': {durability.guarantee} "
            f"({durability.detail}). Turn on persistence (appendonly yes, appendfsync everysec or always: "
            f"see the README's durability table), or set RISKENGINE_REDIS_DURABILITY={durability.level} "
            "to accept it knowingly.")


def check_store(store: Any, required: str) -> dict[str, str] | None:
    """At the service's start: what a 200 carries on ``store`` (None: not a Redis store), said in the
    log; a store weaker than ``required`` is closed and refused (``NotDurable``)."""
    measure = getattr(store, "durability", None)
    if measure is None:
        return None
    try:
        found = measure()
        require(found, required)
    except Exception:
        store.close()
        raise
    (log.warning if found.level in ("none", "snapshot") else log.info)(
        "Redis store durability: %s: %s (%s)", found.level, found.guarantee, found.detail)
    return found.as_dict()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
