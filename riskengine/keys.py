"""The service's secrets: the audit key (seals the trail), the pseudonym key (user ids -> keyed
hashes) and the registry key (signs model artefacts), created once by ``riskengine init``.

Replicas on a shared store must hold the same audit and pseudonym keys, so ``riskengine serve``
on Redis refuses to start without them rather than make new ones that would silently diverge; a
SQLite home (one machine) still gets its keys on first start (``make serve``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from riskengine.settings import Settings
from riskengine.stores.base import REDIS_SCHEMES

KEY_BYTES = 32
SHARED_STORES = REDIS_SCHEMES          # one primary, Sentinel or Cluster: shared by every process


@dataclass(frozen=True)
class Key:
    name: str          # what it is for
    path: Path
    variable: str      # the setting that moves it


def keys(settings: Settings) -> tuple[Key, ...]:
    """Where this configuration keeps each key (the settings, else ``<home>/var/``)."""
    var = settings.var
    return (Key("audit", settings.audit_key_file or var / "audit.key", "RISKENGINE_AUDIT_KEY_FILE"),
            Key("pseudonym", settings.pseudonym_key_file or var / "pseudonym.key", "RISKENGINE_PSEUDONYM_KEY_FILE"),
            Key("registry", settings.registry_key_file or var / "registry.key", "RISKENGINE_REGISTRY_KEY_FILE"))


def shared_store(settings: Settings) -> bool:
    """Is the store one several processes or hosts share (Redis), rather than this home's own?"""
    return settings.store.startswith(SHARED_STORES)


def missing_for_shared_store(settings: Settings) -> list[Key]:
    """The keys replicas on a shared store must share and that are not there. (The registry key
    guards this home's ``models/`` and is made with its first model, so it is not one of them.)"""
    return [key for key in keys(settings)[:2] if not key.path.is_file()]


def refusal(missing: list[Key]) -> str:
    """Why ``serve`` will not start on a shared store, naming each file and what to do."""
    lines = [f"  {key.name} key: {key.path} does not exist ({key.variable})" for key in missing]
    return ("riskengine serve: the store is shared (Redis), and a key every replica must share is missing:\n"
            + "\n".join(lines) + "\nrun `riskengine init` once, then give every replica the same key files "
            "(mount them and point the variables above at them); a new key here would seal and pseudonymise "
            "differently from the other replicas")


def create(key: Key) -> bool:
    """Write ``key`` (32 random bytes, mode 0600) unless a file is already there; True if written."""
    key.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(key.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(KEY_BYTES))
        handle.flush()
        os.fsync(handle.fileno())
    return True


def create_missing(settings: Settings) -> list[tuple[Key, bool]]:
    """Each key and whether it was created now (False: it was there, and is left untouched)."""
    return [(key, create(key)) for key in keys(settings)]
