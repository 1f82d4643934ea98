"""Wiring: an engine from settings, with the home's store, keys, policy and model registry.

The keys live in the home's ``var/`` (or where the settings point): the pseudonym key names users
in the trail and per-IP counts, the audit key seals the trail. The service creates them once;
offline tools never do (a new key would verify nothing and pseudonymise differently).
"""

from __future__ import annotations

import os
from pathlib import Path

from riskengine.engine import Engine
from riskengine.enrich import Enricher
from riskengine.policy.decide import Policy
from riskengine.policy.file import load_policy, resolve
from riskengine.scoring.scorers import Scorer, StatisticalScorer
from riskengine.scoring.registry import ModelRegistry
from riskengine.settings import Settings
from riskengine.stores import REDIS_SCHEMES, ProfileStore, open_store
from riskengine.stores.durability import check_store


class MissingKey(FileNotFoundError):
    """An offline tool found no key where the service keeps it."""


def open_engine(settings: Settings, scorer: Scorer | None = None) -> Engine:
    """The service's engine: a broken policy file stops the start, naming what is wrong; the policy
    file and the registry's champion are then watched and swapped in when they change."""
    settings.var.mkdir(parents=True, exist_ok=True)
    policy_path = resolve(settings.policy)
    policy = load_policy(policy_path)
    store, audit_key = open_configured_store(settings)
    durability = check_store(store, settings.redis_durability)     # Redis: what a 200 carries; too little: no start
    enricher = Enricher(settings.geoip_city_db, settings.geoip_asn_db, settings.lists)
    engine = Engine(store, enricher, scorer, policy, settings.retention_days, pseudonym_key(settings),
                    audit_key=audit_key, fraud_rate_cache_s=settings.fraud_rate_cache_s)
    engine.share_ip_stats = settings.share_ip_stats
    engine.durability = durability
    engine.use_policy(policy, "load")
    if settings.policy is not None:
        engine.watch_policy(policy_path, settings.policy_check_interval)
    if settings.audit_retention_days is not None:
        engine.prune_audit(settings.audit_retention_days)
    if scorer is None:
        engine.watch_models(ModelRegistry.open(settings))
    if hasattr(store, "sweep_owed_every"):          # Redis (a no-op but on a Cluster)
        store.sweep_owed_every()
    return engine


def open_for_audit(settings: Settings, keys: bool = True) -> Engine:
    """An existing home's engine for offline tools (audit, training on recorded events): no policy
    file, no model, nothing recorded on open, no key created (``MissingKey``). ``keys=False`` (an
    auditor holding only a public key) reads the trail without them: the seals cannot be checked."""
    store, audit_key = open_configured_store(settings, create_keys=False, audit_key=keys)
    key = pseudonym_key(settings, create=False) if keys else None
    return Engine(store, Enricher(settings.geoip_city_db, settings.geoip_asn_db), StatisticalScorer(), Policy(),
                  settings.retention_days, key, audit_key=audit_key)


def open_configured_store(settings: Settings, create_keys: bool = True,
                          audit_key: bool = True) -> tuple[ProfileStore, bytes | None]:
    """The configured store, sealing the audit trail with the home's audit key (none: ``audit_key=False``)."""
    key = load_key(settings.audit_key_file or settings.var / "audit.key", create_keys) if audit_key else None
    settings.var.mkdir(parents=True, exist_ok=True)
    options = {"synchronous": settings.sqlite_synchronous} if settings.store.startswith("sqlite") else {}
    if settings.store.startswith(REDIS_SCHEMES):
        options = {"prefix": settings.redis_prefix, "wait_replicas": settings.redis_wait_replicas,
                   "wait_timeout_ms": settings.redis_wait_timeout_ms}
    return open_store(settings.store, settings.home, audit_key=key, **options), key


def pseudonym_key(settings: Settings, create: bool = True) -> bytes:
    return load_key(settings.pseudonym_key_file or settings.var / "pseudonym.key", create)


def load_key(path: Path, create: bool = True) -> bytes:
    """A key file: created once (by the service), readable only by its owner."""
    if path.exists():
        return path.read_bytes()
    if not create:
        raise MissingKey(f"no key at {path}: point RISKENGINE_AUDIT_KEY_FILE / RISKENGINE_PSEUDONYM_KEY_FILE at "
                         "the keys the service uses (offline tools never create keys)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    return path.read_bytes()
