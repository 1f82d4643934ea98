"""API keys: who is calling, for which tenant, allowed to do what.

Entries are ``client_name:key[:tenant[:scope+scope...]]`` (API.md), from ``RISKENGINE_API_KEYS``
and from ``RISKENGINE_API_KEYS_FILE`` (one entry a line, ``#`` comments), which is read again when
its modification time changes, so keys rotate without a restart. Only SHA-256 digests of keys are
kept; a presented key is compared against every digest in constant time; keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from riskengine.events import DEFAULT_TENANT

log = logging.getLogger("riskengine.api")
SCOPES = ("score", "feedback", "erase", "metrics")


@dataclass(frozen=True, slots=True)
class Client:
    """The caller an API key stands for."""

    name: str
    tenant: str = DEFAULT_TENANT
    scopes: frozenset[str] = frozenset(SCOPES)


def parse_entries(text: str, source: str, separator: str) -> list[tuple[Client, bytes]]:
    """``(client, digest of its key)`` for each entry; ValueError naming the entry (never the key)."""
    entries = []
    for number, line in enumerate((x.strip() for x in text.split(separator)), start=1):
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(":")]
        if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
            raise ValueError(f"{source} entry {number}: expected client_name:key[:tenant[:scope+scope]]")
        tenant = parts[2] if len(parts) > 2 and parts[2] else DEFAULT_TENANT
        if not tenant.isprintable() or len(tenant) > 64:
            raise ValueError(f"{source} entry {number}: a tenant is 1 to 64 printable characters")
        scopes = frozenset(s.strip() for s in parts[3].split("+") if s.strip()) if len(parts) > 3 else frozenset()
        if unknown := scopes - set(SCOPES):
            raise ValueError(f"{source} entry {number}: unknown scope {sorted(unknown)[0]!r} "
                             f"(known: {', '.join(SCOPES)})")
        entries.append((Client(parts[0], tenant, scopes or frozenset(SCOPES)), _digest(parts[1])))
    return entries


class KeyRing:
    """The configured keys; the file's entries are re-read when the file changes."""

    def __init__(self, pairs: str, keys_file: Path | None = None) -> None:
        self._fixed = parse_entries(pairs, "RISKENGINE_API_KEYS", ",")
        self._file, self._file_mtime = keys_file, None
        self._from_file: list[tuple[Client, bytes]] = []
        if keys_file is not None:
            self._reload(strict=True)

    def __len__(self) -> int:
        self._reload()
        return len(self._fixed) + len(self._from_file)

    def client_for_header(self, authorization: str) -> Client | None:
        """The client an ``Authorization: Bearer <key>`` header names, or None."""
        scheme, _, key = authorization.partition(" ")
        return self.client_for(key.strip()) if scheme.lower() == "bearer" and key.strip() else None

    def client_for(self, key: str) -> Client | None:
        """Compare against every key, always, so timing does not tell which one nearly matched."""
        self._reload()
        digest, found = _digest(key), None
        for client, expected in self._fixed + self._from_file:
            if hmac.compare_digest(digest, expected):
                found = client
        return found

    def _reload(self, strict: bool = False) -> None:
        """A ``stat`` per request: a changed file is parsed again; a broken one keeps the old keys."""
        if self._file is None:
            return
        try:
            mtime = os.stat(self._file).st_mtime_ns
        except OSError:
            if strict:
                raise ValueError("RISKENGINE_API_KEYS_FILE cannot be read") from None
            return
        if mtime == self._file_mtime:
            return
        try:
            entries = parse_entries(self._file.read_text(), "RISKENGINE_API_KEYS_FILE", "\n")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if strict:
                raise ValueError(str(exc) if isinstance(exc, ValueError) else "RISKENGINE_API_KEYS_FILE "
                                 "cannot be read") from None
            log.error("API keys file refused, keeping the previous keys: %s", exc if isinstance(exc, ValueError)
                      else type(exc).__name__)
            self._file_mtime = mtime
            return
        self._from_file, self._file_mtime = entries, mtime
        log.info("API keys file loaded: %d keys", len(entries))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
