"""The embedded default backend: one SQLite file under RISKENGINE_HOME, WAL mode.

``BEGIN IMMEDIATE`` serialises writers across threads and processes, and the profile row's
version column turns a lost update into a ``Conflict`` to retry. A group of scored events is one
transaction (batching.py runs it on the store's writer thread): one COMMIT, and with FULL one
fsync, for many events. Ids are bound as SQL parameters, so they round-trip byte for byte (a
JSON path cuts text at U+0000). Deleted content is overwritten (``secure_delete``) and an erasure
checkpoints and truncates the write-ahead log, so nothing of an erased user stays in any file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from riskengine.audit.chain import GENESIS, HEAD, START, Anchor, AuditRow, seal_records
from riskengine.features import GlobalCount, IpActivity
from riskengine.policy.payments import EXECUTED_OUTCOMES, PaymentTotals
from riskengine.profiles import UserProfile
from riskengine.stores.base import (IP_WINDOW_S, Commit, Conflict, ContextRead, DuplicateEvent, StoredEvent,
                                    StoreUnavailable, dumps, prune_before)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, version INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ip_events (ip TEXT NOT NULL, user_key TEXT NOT NULL, at REAL NOT NULL, success INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ip_events_ip_at ON ip_events (ip, at);
CREATE INDEX IF NOT EXISTS ip_events_user ON ip_events (user_key);
CREATE TABLE IF NOT EXISTS global_counts (attribute TEXT NOT NULL, value TEXT NOT NULL, count REAL NOT NULL,
    PRIMARY KEY (attribute, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS global_totals (attribute TEXT PRIMARY KEY, total REAL NOT NULL, distinct_values REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, at REAL NOT NULL,
    request TEXT NOT NULL, decision TEXT NOT NULL, features TEXT NOT NULL, outcome TEXT);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS user_secrets (user_key TEXT PRIMARY KEY, secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit (chain TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (chain, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_anchors (chain TEXT NOT NULL, kind TEXT NOT NULL, seq INTEGER NOT NULL,
    hash TEXT NOT NULL, mac TEXT NOT NULL, PRIMARY KEY (chain, kind)) WITHOUT ROWID;
-- totals follow the counts inside SQLite: one executemany per event instead of two statements a value
CREATE TRIGGER IF NOT EXISTS global_totals_on_new AFTER INSERT ON global_counts BEGIN
    INSERT OR IGNORE INTO global_totals VALUES (NEW.attribute, 0, 0);
    UPDATE global_totals SET total=total+NEW.count, distinct_values=distinct_values+1 WHERE attribute=NEW.attribute;
END;
CREATE TRIGGER IF NOT EXISTS global_totals_on_more AFTER UPDATE OF count ON global_counts BEGIN
    UPDATE global_totals SET total=total+NEW.count-OLD.count WHERE attribute=NEW.attribute;
END;
"""

_PUT_PROFILE = ("INSERT INTO profiles VALUES (?, ?, ?)"
                " ON CONFLICT(user_id) DO UPDATE SET version=excluded.version, data=excluded.data")
_ADD_COUNT = ("INSERT INTO global_counts VALUES (?, ?, ?)"
              " ON CONFLICT(attribute, value) DO UPDATE SET count=count+excluded.count")
_PUT_IP_EVENT = "INSERT INTO ip_events VALUES (?, ?, ?, ?)"
_PUT_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, NULL)"
_PUT_AUDIT = "INSERT INTO audit VALUES (?, ?, ?, ?, ?)"
# PSD2 executed payments (policy/payments.py's rule, in SQL for speed; the contract suite checks the two agree)
_PAYMENTS = """
SELECT COUNT(*), COALESCE(SUM(amount), 0), COALESCE(SUM(outcome = 'confirmed_fraud'), 0),
       COALESCE(SUM(CASE WHEN outcome = 'confirmed_fraud' THEN amount ELSE 0 END), 0) FROM (
  SELECT CAST(json_extract(request, '$.amount') AS REAL) AS amount, outcome,
         json_extract(decision, '$.decision') AS verdict FROM events
  WHERE at >= ? AND at < ? AND json_extract(request, '$.action') IN ({actions})
    AND json_extract(request, '$.currency') = ? AND json_extract(request, '$.amount') IS NOT NULL)
WHERE verdict = 'allow' OR (verdict = 'step_up' AND outcome IN ({outcomes}))
"""
# Per read (in :reads: keyed ip, after, until) failures and distinct users, per (attribute, keyed
# value) in :pairs its count, then every attribute's totals; each part one JSON value, in the order given. The
# keys are hex HMACs (batching.py), so reading them through JSON is exact.
_CONTEXT = """
SELECT
  (SELECT json_group_array(json((SELECT json_array(COALESCE(SUM(success = 0), 0), COUNT(DISTINCT user_key))
                                 FROM ip_events WHERE ip = r.value ->> 0 AND at > r.value ->> 1 AND at <= r.value ->> 2)))
   FROM json_each(:reads) AS r),
  (SELECT json_group_array(COALESCE(c.count, 0))
   FROM json_each(:pairs) AS q LEFT JOIN global_counts AS c ON c.attribute = q.value ->> 0 AND c.value = q.value ->> 1),
  (SELECT json_group_object(attribute, json_array(total, distinct_values)) FROM global_totals)
"""
_PRUNE_EVERY = 512
_BUSY_MS = 30000                # how long a thread waits for another process's write lock
_MMAP_BYTES = 256 << 20
_CHECKPOINT_PAGES = 8000        # WAL up to ~32 MB between checkpoints (SQLite's default: 1000 pages)


class SQLiteStore:
    """Thread-safe: one connection per thread, transactions short and immediate."""

    def __init__(self, path: Path, synchronous: str = "FULL", chain: str = "main",
                 audit_key: bytes | None = None) -> None:
        self.path = Path(path)
        self.audit_key = audit_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.chain = chain
        self._local = threading.local()
        self._commits = 0
        self._connections: list[sqlite3.Connection] = []
        self._db().executescript(_SCHEMA)     # executescript manages its own transaction

    # -- connection handling ----------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
                db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
                db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")            # reads without a syscall a page
                db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")  # hot pages copied once, not each time
                db.execute("PRAGMA secure_delete=ON")                    # deleted rows are zeroed, not left behind
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite store {self.path.name}: {exc}") from exc
            self._local.db = db
            self._connections.append(db)
        return db

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db())

    # -- reads --------------------------------------------------------------
    def get(self, user_id: str) -> UserProfile:
        row = self._db().execute("SELECT version, data FROM profiles WHERE user_id=?", (user_id,)).fetchone()
        if row is None:
            return UserProfile(user_id=user_id)
        profile = UserProfile.from_json(row[1])
        profile.version = row[0]
        return profile

    def changed_profiles(self, probes: list[tuple[str, int]]) -> list[UserProfile | None]:
        """Each probe's version compared in SQL: an unchanged profile's data is not even read."""
        changed: list[UserProfile | None] = []
        for user_id, version in probes:
            row = self._db().execute("SELECT version, CASE WHEN version <> ? THEN data END FROM profiles "
                                     "WHERE user_id=?", (version, user_id)).fetchone()
            stored = row[0] if row else 0
            if stored == version:
                changed.append(None)
            elif row is None:
                changed.append(UserProfile(user_id=user_id))
            else:
                profile = UserProfile.from_json(row[1])
                profile.version = stored
                changed.append(profile)
        return changed

    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        """Each read's per-IP activity and counts from one statement and one row (``_CONTEXT``)."""
        pairs = [(k, a, v) for k, (_, _, values) in enumerate(reads) for a, v in values.items()]
        try:
            # named, not ?1/?2: numbered placeholders with a sequence warn from Python 3.12, fail from 3.14
            activity, counts, totals = self._db().execute(_CONTEXT, {
                "reads": dumps([(ip, at - IP_WINDOW_S, at) for ip, at, _ in reads]),
                "pairs": dumps([(a, v) for _, a, v in pairs])}).fetchone()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite read failed: {exc}") from exc
        context: list[tuple[IpActivity, dict[str, GlobalCount]]] = [
            (IpActivity(int(failures), int(users)), {}) for failures, users in json.loads(activity)]
        totals = json.loads(totals)
        for (k, attribute, _), count in zip(pairs, json.loads(counts)):
            total, distinct = totals.get(attribute, (0.0, 0.0))
            context[k][1][attribute] = GlobalCount(float(count), float(total), float(distinct))
        return context

    def find_event(self, event_id: str) -> StoredEvent | None:
        row = self._db().execute("SELECT event_id, user_id, at, request, decision, features, outcome "
                                 "FROM events WHERE event_id=?", (event_id,)).fetchone()
        return _stored(row) if row else None

    def labelled_events(self) -> Iterator[StoredEvent]:
        rows = self._db().execute("SELECT event_id, user_id, at, request, decision, features, outcome "
                                  "FROM events ORDER BY at")
        for row in rows:
            yield _stored(row)

    def audit_rows(self) -> Iterator[AuditRow]:
        for chain, seq, body, prev, digest in self._db().execute(
                "SELECT chain, seq, body, prev_hash, hash FROM audit ORDER BY chain, seq"):
            yield AuditRow(chain, seq, body, prev, digest)

    def audit_anchors(self) -> list[Anchor]:
        return [Anchor(chain, kind, seq, digest, mac) for chain, kind, seq, digest, mac in self._db().execute(
            "SELECT chain, kind, seq, hash, mac FROM audit_anchors ORDER BY chain, kind")]

    def payment_totals(self, actions: tuple[str, ...], currency: str, since: float, until: float) -> PaymentTotals:
        sql = _PAYMENTS.format(actions=",".join("?" * len(actions)), outcomes=",".join("?" * len(EXECUTED_OUTCOMES)))
        row = self._db().execute(sql, (since, until, *actions, currency, *EXECUTED_OUTCOMES)).fetchone()
        return PaymentTotals(int(row[0]), float(row[1]), int(row[2]), float(row[3]))

    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None:
        db = self._db()
        row = db.execute("SELECT secret FROM user_secrets WHERE user_key=?", (user_key,)).fetchone()
        if row is not None or not create:
            return row[0] if row else None
        with self._tx() as tx:
            tx.execute("INSERT OR IGNORE INTO user_secrets VALUES (?, ?)", (user_key, os.urandom(32)))
            return tx.execute("SELECT secret FROM user_secrets WHERE user_key=?", (user_key,)).fetchone()[0]

    # -- writes -------------------------------------------------------------
    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        """One transaction for the whole group, each table written by one ``executemany``.

        Versions and event ids are checked first, inside the transaction (the write lock is held,
        so they cannot move); a refused change writes nothing and the rest go ahead. A value
        SQLite (or JSON) refuses fails the transaction: batching.py then tries each change alone.
        """
        with self._tx() as db:
            outcomes = self._check_group(db, changes)
            accepted = [c for c, refused in zip(changes, outcomes) if refused is None]
            db.executemany(_PUT_PROFILE, [(c.user_id, c.expected_version + 1, c.profile.to_json(c.expected_version + 1))
                                          for c in accepted if c.profile is not None])
            self._count(db, [item for c in accepted if c.profile is not None for item in c.learned_values.items()])
            db.executemany(_PUT_IP_EVENT, [(c.ip, c.user_key, c.at, int(c.success)) for c in accepted])
            db.executemany(_PUT_EVENT, [(e.event_id, e.user_id, e.at, dumps(e.request), dumps(e.decision),
                                         dumps(e.features)) for c in accepted if (e := c.event) is not None])
            self._append_many(db, [c.audit for c in accepted if c.audit is not None])
            before, self._commits = self._commits, self._commits + len(accepted)
            if accepted and before // _PRUNE_EVERY != self._commits // _PRUNE_EVERY:
                db.execute("DELETE FROM ip_events WHERE at < ?", (prune_before(accepted[-1].at),))
        return outcomes

    @staticmethod
    def _check_group(db: sqlite3.Connection, changes: list[Commit]) -> list[BaseException | None]:
        """Conflict where the profile is no longer at the version the decision read,
        DuplicateEvent where the event id is recorded (or comes twice in the group)."""
        users = list({c.user_id for c in changes})
        ids = list({c.event.event_id for c in changes if c.event is not None})
        versions: dict[str, int] = dict(db.execute(
            f"SELECT user_id, version FROM profiles WHERE user_id IN ({','.join('?' * len(users))})", users))
        seen: set[str] = {row[0] for row in db.execute(
            f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(ids))})", ids)}
        outcomes: list[BaseException | None] = []
        for c in changes:
            if versions.get(c.user_id, 0) != c.expected_version:
                outcomes.append(Conflict("the profile's version moved"))   # no user id: exceptions end up in logs
            elif c.event is not None and c.event.event_id in seen:
                outcomes.append(DuplicateEvent(c.event.event_id))
            else:
                outcomes.append(None)
                if c.profile is not None:
                    versions[c.user_id] = c.expected_version + 1
                if c.event is not None:
                    seen.add(c.event.event_id)
        return outcomes

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        with self._tx() as db:
            self._put_profile(db, user_id, expected_version, profile)
            self._count(db, learned_values.items())
            if audit is not None:
                self._append(db, audit)

    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool:
        with self._tx() as db:
            if db.execute("UPDATE events SET outcome=? WHERE event_id=?", (outcome, event_id)).rowcount == 0:
                return False
            self._append(db, audit)
            return True

    def append_audit(self, audit: dict[str, Any]) -> None:
        with self._tx() as db:
            self._append(db, audit)

    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        """Delete the user's rows (zeroed in place: ``secure_delete``), then copy the WAL into the
        main file and truncate it, so neither file keeps the old pages."""
        with self._tx() as db:
            found = db.execute("DELETE FROM profiles WHERE user_id=?", (user_id,)).rowcount
            found += db.execute("DELETE FROM events WHERE user_id=?", (user_id,)).rowcount
            found += db.execute("DELETE FROM user_secrets WHERE user_key=?", (user_key,)).rowcount
            db.execute("DELETE FROM ip_events WHERE user_key=?", (user_key,))
            self._append(db, audit)
        self._truncate_wal()
        return found > 0

    def _truncate_wal(self) -> None:
        """``wal_checkpoint(TRUNCATE)`` until it completes: a reader in another process may hold an
        old snapshot for a moment; the busy timeout waits for it."""
        for _ in range(50):
            busy, _, _ = self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
        raise StoreUnavailable("SQLite store busy: the write-ahead log could not be truncated after an erasure")

    def _put_profile(self, db: sqlite3.Connection, user_id: str, expected: int, profile: UserProfile) -> None:
        data = profile.to_json(expected + 1)
        if expected == 0:
            cursor = db.execute("INSERT OR IGNORE INTO profiles VALUES (?, ?, ?)", (user_id, 1, data))
        else:
            cursor = db.execute("UPDATE profiles SET version=?, data=? WHERE user_id=? AND version=?",
                                (expected + 1, data, user_id, expected))
        if cursor.rowcount != 1:
            raise Conflict("the profile's version moved")     # no user id: exceptions end up in logs
        profile.version = expected + 1

    @staticmethod
    def _count(db: sqlite3.Connection, pairs: Iterable[tuple[str, str]]) -> None:
        """(attribute, value) pairs seen once more each, a group's repeats added up first (the same
        country, browser or OS comes many times in one group); the totals follow by trigger."""
        db.executemany(_ADD_COUNT, [(attribute, value, n) for (attribute, value), n in Counter(pairs).items()])

    def _append(self, db: sqlite3.Connection, body: dict[str, Any]) -> None:
        self._append_many(db, [body])

    def _append_many(self, db: sqlite3.Connection, bodies: list[dict[str, Any]]) -> None:
        """Seal each record onto the one before, starting from the head anchor (not from whatever
        row is last: a deleted tail stays a visible gap), and move the anchor once."""
        if not bodies:
            return
        row = db.execute("SELECT seq, hash FROM audit_anchors WHERE chain=? AND kind=?", (self.chain, HEAD)).fetchone()
        if row is None:
            row = db.execute("SELECT seq, hash FROM audit WHERE chain=? ORDER BY seq DESC LIMIT 1",
                             (self.chain,)).fetchone()
        seq, prev = row if row else (0, GENESIS)
        rows, head = seal_records(bodies, self.chain, seq, prev, self.audit_key)
        db.executemany(_PUT_AUDIT, [(r.chain, r.seq, r.body, r.prev_hash, r.hash) for r in rows])
        self._anchor(db, head)

    @staticmethod
    def _anchor(db: sqlite3.Connection, anchor: Anchor) -> None:
        db.execute("INSERT INTO audit_anchors VALUES (?, ?, ?, ?, ?) ON CONFLICT(chain, kind) DO UPDATE SET "
                   "seq=excluded.seq, hash=excluded.hash, mac=excluded.mac",
                   (anchor.chain, anchor.kind, anchor.seq, anchor.hash, anchor.mac))

    def prune_audit(self, chain: str, through_seq: int, audit: dict[str, Any]) -> int:
        """Drop ``chain``'s records up to ``through_seq`` (never its last), anchor where it now starts,
        and record the pruning, in one transaction."""
        with self._tx() as db:
            last = db.execute("SELECT MAX(seq) FROM audit WHERE chain=?", (chain,)).fetchone()[0]
            row = db.execute("SELECT hash FROM audit WHERE chain=? AND seq=?", (chain, through_seq)).fetchone()
            if row is None or last is None or through_seq >= last:
                return 0
            pruned = db.execute("DELETE FROM audit WHERE chain=? AND seq<=?", (chain, through_seq)).rowcount
            self._anchor(db, Anchor.make(START, chain, through_seq + 1, row[0], self.audit_key))
            self._append(db, audit)
            return pruned

    # -- housekeeping -------------------------------------------------------
    def ping(self) -> None:
        self._db().execute("SELECT 1").fetchone()

    def clear(self) -> None:
        with self._tx() as db:
            for table in ("profiles", "ip_events", "global_counts", "global_totals", "events",
                          "user_secrets", "audit", "audit_anchors"):
                db.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        """Close every thread's connection (the store's threads have stopped: batching.py)."""
        for db in self._connections:
            db.close()
        self._connections.clear()
        self._local = threading.local()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is taken up front, so no upgrade deadlocks."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite store busy or unavailable: {exc}") from exc
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise StoreUnavailable(f"SQLite commit failed: {error}") from error
        else:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            if issubclass(exc_type, sqlite3.OperationalError):     # the disk or the lock, not the values
                raise StoreUnavailable(f"SQLite store unavailable: {exc}") from exc


def _stored(row: tuple) -> StoredEvent:
    event_id, user_id, at, request, decision, features, outcome = row
    return StoredEvent(event_id, user_id, at, json.loads(request), json.loads(decision),
                       json.loads(features), outcome)
