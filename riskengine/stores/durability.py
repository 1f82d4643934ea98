"""What a ``200`` promises on Redis: the server's persistence settings, read once at start.

API.md promises that a ``200`` is durable; on Redis that holds only as far as the server persists
what it acknowledged. ``durability`` reads ``appendonly``, ``appendfsync`` and ``save`` and names
the guarantee; the service logs it, shows it in ``/health``, and refuses to start on a server that
keeps nothing unless the operator says so (``RISKENGINE_REDIS_DURABILITY=none``).

>>> guarantee({"appendonly": "yes", "appendfsync": "always", "save": ""}).name
'fsync_always'
>>> guarantee({"appendonly": "no", "appendfsync": "everysec", "save": "3600 1"}).name
'snapshots'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Guarantee:
    name: str
    durable: bool          # does an acknowledged write survive a Redis restart at all?
    meaning: str


GUARANTEES = {g.name: g for g in (
    Guarantee("fsync_always", True, "every write is fsynced before Redis answers: a 200 survives a crash or "
              "power loss of the Redis host"),
    Guarantee("fsync_everysec", True, "writes are fsynced every second: a 200 survives a Redis crash; up to "
              "about 1 s of answers can be lost if the host loses power"),
    Guarantee("os_flush", True, "the append-only file is flushed when the OS decides: a 200 survives a Redis "
              "crash; up to about 30 s can be lost if the host loses power"),
    Guarantee("snapshots", False, "RDB snapshots only: everything since the last snapshot (minutes) is lost "
              "when Redis restarts"),
    Guarantee("none", False, "no persistence: a Redis restart loses every profile, event and audit record"),
    Guarantee("unknown", False, "the server does not allow CONFIG GET (managed Redis): its persistence could "
              "not be read; check your provider's settings"),
)}


class NotDurable(RuntimeError):
    """The Redis server keeps nothing and the operator did not say that is acceptable."""


def guarantee(config: dict[str, str]) -> Guarantee:
    if config.get("appendonly") == "yes":
        return GUARANTEES[{"always": "fsync_always", "everysec": "fsync_everysec"}.get(
            config.get("appendfsync", ""), "os_flush")]
    return GUARANTEES["snapshots" if config.get("save", "").strip() else "none"]


def durability(client: Any) -> Guarantee:
    """``client``: a redis-py client. A server that refuses CONFIG (managed services) is ``unknown``."""
    import redis

    try:
        config: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save"):
            config.update({k if isinstance(k, str) else k.decode(): v if isinstance(v, str) else v.decode()
                           for k, v in client.config_get(name).items()})
    except redis.ResponseError:
        return GUARANTEES["unknown"]
    return guarantee(config)


def check(found: Guarantee, required: str) -> None:
    """``required``: ``check`` (refuse a server that keeps nothing) or ``none`` (accept it: tests, caches)."""
    if required == "none":
        return
    if found.name == "none":
        raise NotDurable("Redis keeps nothing (appendonly no, no save points): a 200 would not be durable. "
                         "Enable the append-only file (appendonly yes, appendfsync always or everysec), or set "
                         "RISKENGINE_REDIS_DURABILITY=none to accept it")
