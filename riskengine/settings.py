"""Settings from the environment (``RISKENGINE_*``); passed explicitly, never a global."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RISKENGINE_", extra="ignore")

    home: Path = Path(".")
    store: str = "sqlite"                       # sqlite | sqlite:///PATH | memory:// | redis://HOST:PORT/DB |
                                                # redis+sentinel://HOST:PORT/SERVICE | redis+cluster://HOST:PORT
    api_keys: SecretStr = SecretStr("")         # "client:key[:tenant[:scope+scope]],..." (a str, not a dict)
    api_keys_file: Path | None = None           # the same entries, one a line; re-read when it changes
    share_ip_stats: bool = False                # per-IP and population statistics span tenants (default: each its own)
    docs: bool = False                          # serve /docs, /redoc, /openapi.json (without a key)
    geoip_city_db: Path | None = None
    geoip_asn_db: Path | None = None
    lists: Path | None = None                   # a folder of named lists: addresses, CIDRs, ASNs (enrich/lists.py)
    policy: Path | None = None                  # a policy file, or a preset name: default | psd2 | hipaa | gdpr
    policy_check_interval: float = 1.0          # seconds between looks at the policy file for changes
    audit_key_file: Path | None = None          # seals the audit trail; default: <home>/var/audit.key
    audit_signing_key_file: Path | None = None  # Ed25519 key signing audit heads; default: <home>/var/audit-signing.key
    audit_retention_days: float | None = None   # prune older audit records (never below the policy's minimum)
    fraud_rate_cache_s: float = 60.0            # PSD2 TRA: how long one computed fraud rate is reused
    retention_days: float = 180.0
    max_clock_skew_seconds: float = 300.0      # a timestamp or auth_time further ahead of the server's clock: 422
    sqlite_synchronous: str = "FULL"            # FULL: a 200 survives power loss, not just a crash
    redis_prefix: str = "re:"                   # key prefix: several deployments (or test runs) share one Redis
    redis_durability: str = "snapshot"          # the least a Redis store must keep to start: none | snapshot | aof-no |
                                                # aof-everysec | aof-always (stores/durability.py, README table)
    redis_wait_replicas: int = 0                # a write is answered once this many replicas have it (WAIT); 0: not waited
    redis_wait_timeout_ms: int = 500            # ... within this; fewer replicas acknowledging: 503
    max_body_bytes: int = 64 * 1024
    rate_limit_per_second: float = 2000.0       # per API key and per process (N workers: N x this); 0 disables
    rate_limit_burst: float = 4000.0
    read_timeout_seconds: float = 5.0           # a request's body must arrive within this (408); headers: the proxy's
    keep_alive_seconds: int = 5                 # idle keep-alive connections are closed after this
    max_in_flight: int = 1000                   # requests being served per process; more get a quick 503 (0: no cap)
    worker_threads: int = 2                     # threads running the engine per process (bench/README.md); 0: anyio's 40
    pseudonym_key_file: Path | None = None      # default: <home>/var/pseudonym.key
    signals: Path | None = None                 # webhooks and CAEP receivers (riskengine/signals/config.py)
    registry_key_file: Path | None = None       # signs model artefacts; default: <home>/var/registry.key
    workers: int = 1                            # `riskengine serve` processes (--workers overrides)
    log_format: str = "json"                    # json | text: the service's log lines (api/logs.py)
    log_level: str = "INFO"
    access_log: bool = False                    # one line per request: method, route template, status, time
    tracing: bool = False                       # OpenTelemetry spans per request and /score stage ([otel] extra)
    bootstrap_model: bool = True                # serve trains a first model on generated data when none exists
    bootstrap_users: int = 1000
    bootstrap_days: int = 30

    @property
    def var(self) -> Path:
        return self.home / "var"

    @property
    def models(self) -> Path:
        return self.home / "models"
