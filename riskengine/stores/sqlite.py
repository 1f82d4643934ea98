"""The embedded default store: one SQLite file under RISKENGINE_HOME, WAL mode.

``BEGIN IMMEDIATE`` serialises writers across threads and processes, and the
profile row's version column turns a lost update into a ``Conflict`` to retry.
Scored events are committed in groups (group.py): a turn of the service's event
loop, on the loop itself while no other process holds the lock, else on the
writer thread with what else arrived meanwhile, so a busy service pays one COMMIT
(and, with FULL, one fsync) for many events; ``commit`` returns, and
``submit``'s future resolves, only once its group is durable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from collections import Counter
from typing import Any, Iterable, Iterator

from riskengine.audit.chain import GENESIS, HEAD, START, Anchor, AuditRow, canonical, seal
from riskengine.profiles import UserProfile
from riskengine.stores.base import (EXECUTED_OUTCOMES, IP_WINDOW_S, Commit, Conflict, DuplicateEvent, Follow,
                                    GlobalCount, IpActivity, PaymentTotals, StoredEvent, StoreUnavailable, dumps)
from riskengine.stores.batching import GroupCommit, LoopBudget, LoopTurns, resolve

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

# A group's rows go in as one JSON parameter per table, one statement each, and reads come back as
# one row: SQLite releases the GIL once per step, and an executemany steps once per row (taking the
# GIL back each time from a busy event loop was most of the cost). JSON numbers parse back to the
# same doubles (tested); ``->`` gives a nested object back as the very text orjson wrote, so
# profiles and events go in as objects, not as JSON strings escaped again.
_CHECK = ("SELECT (SELECT json_group_array(json_array(user_id, version)) FROM profiles"
          "         WHERE user_id IN (SELECT value FROM json_each(?1))),"
          "       (SELECT json_group_array(event_id) FROM events WHERE event_id IN (SELECT value FROM json_each(?2)))")
_PUT_PROFILES = ("INSERT INTO profiles SELECT value ->> 0, value ->> 1, value -> 2 FROM json_each(?) WHERE true"
                 " ON CONFLICT(user_id) DO UPDATE SET version=excluded.version, data=excluded.data")
_ADD_COUNTS = ("INSERT INTO global_counts SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?) WHERE true"
               " ON CONFLICT(attribute, value) DO UPDATE SET count=count+excluded.count")
_PUT_IP_EVENTS = "INSERT INTO ip_events SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?)"
_PUT_EVENTS = ("INSERT INTO events SELECT value ->> 0, value ->> 1, value ->> 2, value -> 3, value -> 4, value -> 5,"
               " NULL FROM json_each(?)")
_PUT_AUDIT = "INSERT INTO audit SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?)"
# Per read (in ?1: ip, after, until) failures and distinct users, per (attribute, value) in ?2 its
# count, then every attribute's totals; each part one JSON value, in the order given.
_CONTEXT = """
SELECT
  (SELECT json_group_array(json((SELECT json_array(COALESCE(SUM(success = 0), 0), COUNT(DISTINCT user_key))
                                 FROM ip_events WHERE ip = r.value ->> 0 AND at > r.value ->> 1 AND at <= r.value ->> 2)))
   FROM json_each(?1) AS r),
  (SELECT json_group_array(COALESCE(c.count, 0))
   FROM json_each(?2) AS q LEFT JOIN global_counts AS c ON c.attribute = q.value ->> 0 AND c.value = q.value ->> 1),
  (SELECT json_group_object(attribute, json_array(total, distinct_values)) FROM global_totals)
"""
_PRUNE_EVERY = 512
_BUSY_MS = 30000                # how long a thread waits for another process's write lock
_LOOP_COMMIT_S = 0.002          # commits slower than this (a slow disk's fsync) go to the writer thread
_MMAP_BYTES = 256 << 20
_CHECKPOINT_PAGES = 8000        # WAL up to ~32 MB between checkpoints (SQLite's default: 1000 pages)
_GROUP_MAX = 64                 # events per transaction at most: bounds how long one COMMIT holds the lock


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
        self._db().executescript(_SCHEMA)     # executescript manages its own transaction
        self._group = GroupCommit(self._commit_group, f"riskengine-sqlite-{self.path.name}", _GROUP_MAX,
                                  on_loop=self._commit_on_loop)
        self._loop_budget = LoopBudget(_LOOP_COMMIT_S)
        self._reads = LoopTurns(self._read_turn)

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
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite store {self.path.name}: {exc}") from exc
            self._local.db = db
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

    def ip_activity(self, ip: str, at: float) -> IpActivity:
        return self.context(ip, at, {})[0]

    def global_counts(self, values: dict[str, str]) -> dict[str, GlobalCount]:
        return self.context("", 0.0, values)[1] if values else {}

    def context(self, ip: str, at: float, values: dict[str, str]) -> tuple[IpActivity, dict[str, GlobalCount]]:
        return self._read_group([(ip, at, values)])[0]

    def context_async(self, ip: str, at: float, values: dict[str, str]) -> asyncio.Future:
        """``context`` on the event loop, read with every other event's of this turn of the loop
        in one statement at its end (``_read_turn``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._reads.add(loop, ((ip, at, values), future))
        return future

    def _read_turn(self, turn: list[tuple[tuple[str, float, dict[str, str]], asyncio.Future]]) -> None:
        """On the loop, not on a reader thread: one statement is one release of the GIL, and taking
        it back from a busy loop cost a reader thread more than the read itself."""
        try:
            outcomes: list[Any] = self._read_group([read for read, _ in turn])
        except sqlite3.Error as exc:
            outcomes = [StoreUnavailable(f"SQLite read failed: {exc}")] * len(turn)
        except StoreUnavailable as exc:
            outcomes = [exc] * len(turn)
        resolve([(future, outcome) for (_, future), outcome in zip(turn, outcomes)])

    def _read_group(self, reads: list[tuple[str, float, dict[str, str]]]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        """Each read's per-IP activity and counts from one statement and one row (``_CONTEXT``)."""
        pairs = [(k, a, v) for k, (_, _, values) in enumerate(reads) for a, v in values.items()]
        activity, counts, totals = self._db().execute(_CONTEXT, (
            dumps([(ip, at - IP_WINDOW_S, at) for ip, at, _ in reads]),
            dumps([(a, v) for _, a, v in pairs]))).fetchone()
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
        marks = ",".join("?" * len(actions))
        outcomes = ",".join("?" * len(EXECUTED_OUTCOMES))
        row = self._db().execute(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0), COALESCE(SUM(outcome = 'confirmed_fraud'), 0), "
            "COALESCE(SUM(CASE WHEN outcome = 'confirmed_fraud' THEN amount ELSE 0 END), 0) FROM ("
            "  SELECT CAST(json_extract(request, '$.amount') AS REAL) AS amount, outcome,"
            "         json_extract(decision, '$.decision') AS verdict FROM events"
            f"  WHERE at >= ? AND at < ? AND json_extract(request, '$.action') IN ({marks})"
            "   AND json_extract(request, '$.currency') = ? AND json_extract(request, '$.amount') IS NOT NULL)"
            f" WHERE verdict = 'allow' OR (verdict = 'step_up' AND outcome IN ({outcomes}))",
            (since, until, *actions, currency, *EXECUTED_OUTCOMES)).fetchone()
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
    def commit(self, change: Commit) -> None:
        self._group.submit(change).result()

    def submit(self, change: Commit, follow: Follow | None = None) -> Future:
        """``commit`` without waiting: the future resolves once the change's group is durable."""
        return self._group.submit(change, follow)

    def submit_async(self, change: Commit, follow: Follow | None = None) -> asyncio.Future:
        return self._group.submit_async(change, follow)

    def _commit_on_loop(self, changes: list[Commit]) -> list[BaseException | None] | None:
        """The group committed on the event loop itself, when that cannot wait: no lock held by
        another process (busy_timeout 0 for this one BEGIN) and commits (fsync included) taking
        under ``_LOOP_COMMIT_S`` lately (``LoopBudget``). Each hop to and from a writer thread, and its fight for the
        GIL with a busy loop, cost more than the commit (a third of a /score's CPU); a slow disk
        or a contended lock leaves the group to the thread, so the loop never waits long."""
        if not self._loop_budget.allows():
            return None
        db = self._db()
        db.execute("PRAGMA busy_timeout=0")
        started = time.perf_counter()
        try:
            outcomes = self._commit_group(changes)
            self._loop_budget.spent(started)
            return outcomes
        except StoreUnavailable as exc:
            if _busy(exc.__cause__):
                return None                  # another process is writing: the thread waits for it
            raise
        finally:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")

    def _commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        """One transaction and one statement per table for the whole group.

        Versions and event ids are checked first, inside the transaction (the write lock is held,
        so they cannot move); a refused change writes nothing and the rest go ahead. Few
        statements matter more than it seems: each releases the GIL, and a thread switch per
        statement was most of a busy service's time.
        """
        with self._tx() as db:
            outcomes = self._check_group(db, changes)
            accepted = [c for c, refused in zip(changes, outcomes) if refused is None]
            for c in accepted:
                if c.profile is not None:
                    c.profile.version = c.expected_version + 1
            db.execute(_PUT_PROFILES, (dumps([(c.user_id, c.profile.version, c.profile.to_dict())
                                              for c in accepted if c.profile is not None]),))
            self._count(db, [item for c in accepted if c.profile is not None for item in c.learned_values.items()])
            db.execute(_PUT_IP_EVENTS, (dumps([(c.ip, c.user_key, c.at, int(c.success)) for c in accepted]),))
            db.execute(_PUT_EVENTS, (dumps([(e.event_id, e.user_id, e.at, e.request, e.decision, e.features)
                                            for c in accepted if (e := c.event) is not None]),))
            self._append_many(db, [c.audit for c in accepted if c.audit is not None])
            before, self._commits = self._commits, self._commits + len(accepted)
            if accepted and before // _PRUNE_EVERY != self._commits // _PRUNE_EVERY:
                db.execute("DELETE FROM ip_events WHERE at < ?", (accepted[-1].at - 2 * IP_WINDOW_S,))
        return outcomes

    @staticmethod
    def _check_group(db: sqlite3.Connection, changes: list[Commit]) -> list[BaseException | None]:
        """Conflict where the profile is no longer at the version the decision read,
        DuplicateEvent where the event id is recorded (or comes twice in the group)."""
        users = list({c.user_id for c in changes})
        ids = [c.event.event_id for c in changes if c.event is not None]
        found, recorded = db.execute(_CHECK, (dumps(users), dumps(ids))).fetchone()
        versions: dict[str, int] = dict(json.loads(found))
        seen: set[str] = set(json.loads(recorded))
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
        with self._tx() as db:
            found = db.execute("DELETE FROM profiles WHERE user_id=?", (user_id,)).rowcount
            found += db.execute("DELETE FROM events WHERE user_id=?", (user_id,)).rowcount
            found += db.execute("DELETE FROM user_secrets WHERE user_key=?", (user_key,)).rowcount
            db.execute("DELETE FROM ip_events WHERE user_key=?", (user_key,))
            self._append(db, audit)
            return found > 0

    def _put_profile(self, db: sqlite3.Connection, user_id: str, expected: int, profile: UserProfile) -> None:
        profile.version = expected + 1
        if expected == 0:
            cursor = db.execute("INSERT OR IGNORE INTO profiles VALUES (?, ?, ?)",
                                (user_id, profile.version, profile.to_json()))
        else:
            cursor = db.execute("UPDATE profiles SET version=?, data=? WHERE user_id=? AND version=?",
                                (profile.version, profile.to_json(), user_id, expected))
        if cursor.rowcount != 1:
            raise Conflict("the profile's version moved")     # no user id: exceptions end up in logs

    @staticmethod
    def _count(db: sqlite3.Connection, pairs: Iterable[tuple[str, str]]) -> None:
        """(attribute, value) pairs seen once more each, a group's repeats added up first (the same
        country, browser or OS comes many times in one group); the totals follow by trigger."""
        db.execute(_ADD_COUNTS, (dumps([(attribute, value, n) for (attribute, value), n in Counter(pairs).items()]),))

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
        rows = []
        for body in bodies:
            seq += 1
            sealed = {**body, "chain": self.chain, "seq": seq}
            digest = seal(prev, sealed, self.audit_key)
            rows.append((self.chain, seq, canonical(sealed), prev, digest))
            prev = digest
        db.execute(_PUT_AUDIT, (dumps(rows),))
        self._anchor(db, Anchor.make(HEAD, self.chain, seq, prev, self.audit_key))

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
        self._group.close()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


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
        elif self.db.in_transaction:
            self.db.execute("ROLLBACK")


def _busy(error: BaseException | None) -> bool:
    """SQLITE_BUSY: another connection holds the write lock (``sqlite_errorcode`` is 3.11+)."""
    return isinstance(error, sqlite3.OperationalError) and (
        getattr(error, "sqlite_errorcode", None) == 5 or "database is locked" in str(error))


def _stored(row: tuple) -> StoredEvent:
    event_id, user_id, at, request, decision, features, outcome = row
    return StoredEvent(event_id, user_id, at, json.loads(request), json.loads(decision),
                       json.loads(features), outcome)
