"""The shared store: several service processes or machines keep profiles, counters,
events and audit chains in one Redis, so no replica holds state another needs.

Every write is one Lua script, so Redis runs it as a single atomic step; a profile's
version turns a lost update into a ``Conflict`` to retry, as in the SQLite store. A group's
scripts go in one pipeline (one round trip) from the store's writer thread (batching.py), each
with its own reply, so one refused item fails alone. Keys and arguments are bytes-exact strings:
two distinct ids are two distinct keys.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import Script
from redis.retry import Retry

from riskengine.audit.chain import GENESIS, HEAD, START, Anchor, AuditRow, seal_records
from riskengine.features import GlobalCount, IpActivity
from riskengine.policy.payments import PaymentTotals, payment_totals
from riskengine.profiles import UserProfile
from riskengine.stores.base import (IP_WINDOW_S, Commit, Conflict, ContextRead, DuplicateEvent, Refused, StoredEvent,
                                    StoreUnavailable, dumps, prune_before)
from riskengine.stores.redis_scripts import COMMIT_LUA, CONTEXT_LUA, ERASE_LUA, OUTCOME_LUA, PRUNE_LUA, SECRET_LUA

#: errors that mean "Redis cannot answer now" (down, restarting, loading, failed over, full):
#: the service answers 503 and a later request finds it back
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
                redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
_IP_TTL_S = int(2 * IP_WINDOW_S)          # an IP idle for two windows holds nothing a read could count
_USER_IPS_TTL_S = 7 * 86400               # outlives the IP entries it points at, so erasure finds them
_HEAD_RETRIES = 5
_CHUNK = 500


class RedisStore:
    """Thread-safe; one audit chain per store (so per process), appended under a local lock."""

    def __init__(self, url: str, chain: str | None = None, prefix: str = "re:",
                 socket_timeout: float = 1.0, audit_key: bytes | None = None) -> None:
        self.prefix = prefix
        self.chain = chain or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.audit_key = audit_key
        # Two quick retries let a pooled connection reconnect after a Redis restart;
        # more would only hold a request that should get its 503 now.
        self._redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2))
        self._lock_timeout = 4 * socket_timeout + 1
        self._commit = self._redis.register_script(COMMIT_LUA)
        self._outcome = self._redis.register_script(OUTCOME_LUA)
        self._erase = self._redis.register_script(ERASE_LUA)
        self._prune = self._redis.register_script(PRUNE_LUA)
        self._secret = self._redis.register_script(SECRET_LUA)
        self._context = self._redis.register_script(CONTEXT_LUA)
        self._audit_lock = threading.Lock()
        self._head: tuple[int, str] | None = None      # this chain's (seq, hash); None: read it first
        self._watcher: Any = None                      # the erasure subscription's thread, if watched

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    # -- reads --------------------------------------------------------------
    def get(self, user_id: str) -> UserProfile:
        with _available():
            version, data = self._redis.hmget(self._key("p", user_id), ["v", "d"])
        if data is None:
            return UserProfile(user_id=user_id)
        profile = UserProfile.from_json(data)
        profile.version = int(version)
        return profile

    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        """One context script per read, all in one pipeline."""
        def queue(pipe: Any) -> None:
            for ip, at, values in reads:
                ip_key = self._key("ip", ip)
                keys = [ip_key, self._key("gt"), *(self._key("gc", a) for a in values)]
                pipe.evalsha(self._context.sha, len(keys), *keys, f"({at - IP_WINDOW_S!r}", repr(at),
                             *(item for pair in values.items() for item in pair))

        answers = []
        for (_, _, values), (failures, users, *counts) in zip(reads, self._execute(queue)):
            answers.append((IpActivity(int(failures), int(users)),
                            {a: GlobalCount(*(float(n or 0) for n in counts[3 * i:3 * i + 3]))
                             for i, a in enumerate(values)}))
        return answers

    def find_event(self, event_id: str) -> StoredEvent | None:
        with _available():
            fields = self._redis.hgetall(self._key("e", event_id))
        return _stored(event_id, fields) if fields else None

    def labelled_events(self) -> Iterator[StoredEvent]:
        """In time order, a chunk at a time: an offline job's history need not fit in memory."""
        start = 0
        while True:
            with _available():
                ids = self._redis.zrange(self._key("events"), start, start + _CHUNK - 1)
                fields = self._events([i.decode() for i in ids], None)
            if not ids:
                return
            for event_id, row in zip(ids, fields):
                if row:                          # erased since the index was read
                    yield _stored(event_id.decode(), row)
            start += len(ids)

    def payment_totals(self, actions: tuple[str, ...], currency: str, since: float,
                       until: float) -> PaymentTotals:
        """Scans only this currency's payments in the window (an index kept by ``commit_group``)."""
        return payment_totals(self._payments(currency, since, until), actions, currency)

    def _payments(self, currency: str, since: float,
                  until: float) -> Iterator[tuple[dict[str, Any], dict[str, Any], str | None]]:
        offset = 0
        while True:
            with _available():
                ids = self._redis.zrangebyscore(self._key("pay", currency), repr(since), f"({until!r}",
                                                start=offset, num=_CHUNK)
                rows = self._events([i.decode() for i in ids], [b"request", b"decision", b"outcome"])
            for request, decision, outcome in rows:
                if request is not None:          # erased since the index was read
                    yield json.loads(request), json.loads(decision), outcome.decode() if outcome else None
            if len(ids) < _CHUNK:
                return
            offset += len(ids)

    def _events(self, ids: list[str], fields: list[bytes] | None) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for event_id in ids:
            if fields:
                pipe.hmget(self._key("e", event_id), fields)
            else:
                pipe.hgetall(self._key("e", event_id))
        return pipe.execute() if ids else []

    def audit_rows(self) -> Iterator[AuditRow]:
        for chain in self._chains():
            start = 0
            while True:
                with _available():
                    items = self._redis.lrange(self._key("ar", chain), start, start + _CHUNK - 1)
                if not items:
                    break
                for position, item in enumerate(items, start + 1):
                    yield _audit_row(chain, position, item.decode(errors="replace"))
                start += len(items)

    def audit_anchors(self) -> list[Anchor]:
        chains = self._chains()
        with _available():
            pipe = self._redis.pipeline(transaction=False)
            for chain in chains:
                pipe.hmget(self._key("ah", chain), ["seq", "hash", "mac"])
                pipe.hmget(self._key("as", chain), ["seq", "hash", "mac"])
            replies = pipe.execute()
        anchors = []
        for i, chain in enumerate(chains):
            for kind, (seq, digest, mac) in ((HEAD, replies[2 * i]), (START, replies[2 * i + 1])):
                if seq is not None:
                    anchors.append(Anchor(chain, kind, int(seq), (digest or b"").decode(), (mac or b"").decode()))
        return anchors

    def _chains(self) -> list[str]:
        with _available():
            return sorted(c.decode() for c in self._redis.smembers(self._key("chains")))

    def user_secret(self, user_id: str, user_key: str, create: bool) -> bytes | None:
        key = self._key("s", user_key)
        with _available():
            return self._secret(keys=[key], args=[os.urandom(32)]) if create else self._redis.get(key)

    # -- writes -------------------------------------------------------------
    def _commit_one(self, change: Commit) -> None:
        keys, args = self._commit_call(change)
        _raise_refusal(self._write(self._commit, keys, args, change.audit), change.event)

    def _commit_call(self, change: Commit) -> tuple[list[str], list[Any]]:
        """The write script's keys and arguments for one scored event (its audit record aside)."""
        event, profile = change.event, change.profile
        learned = list(change.learned_values.items()) if profile is not None else []
        currency = _payment_currency(event.request) if event else ""
        keys = [self._key("p", change.user_id), self._key("e", event.event_id if event else "-"),
                self._key("events"), self._key("ue", change.user_id), self._key("ip", change.ip),
                self._key("uip", change.user_key), self._key("gt"), self._key("pay", currency or "-"),
                *(self._key("gc", attribute) for attribute, _ in learned)]
        # member: success flag, a unique suffix (two entries never merge), then the user key
        member = f"{int(change.success)}:{secrets.token_hex(8)}:{change.user_key}"
        args = [event.event_id if event else "",
                "1" if profile is not None else "0", change.expected_version,
                profile.to_json(change.expected_version + 1) if profile is not None else "",
                "1", member, repr(change.at), f"({prune_before(change.at)!r}", _IP_TTL_S,
                change.ip, _USER_IPS_TTL_S,
                "1" if event else "0", change.user_id,
                dumps(event.request) if event else "", dumps(event.decision) if event else "",
                dumps(event.features) if event else "", currency,
                *(item for pair in learned for item in pair)]
        return keys, args

    def commit_group(self, changes: list[Commit]) -> list[BaseException | None]:
        """The group's scripts in one pipeline (one round trip), each record sealed onto the one
        before. A refused change (DUP, CONFLICT, a script error) leaves the records after it sealed
        onto a head that never was: the script answers HEAD for those before writing anything, and
        they go again alone."""
        outcomes: list[BaseException | None] = []
        again: list[int] = []
        chain_keys = [self._key("ah", self.chain), self._key("ar", self.chain), self._key("chains")]
        if not self._audit_lock.acquire(timeout=self._lock_timeout):
            raise StoreUnavailable("Redis store busy: the audit chain lock was not free in time")
        try:
            calls = [self._commit_call(change) for change in changes]
            heads: list[tuple[int, str]] = []

            def queue(pipe: Any) -> None:      # sealed afresh if it must be sent again
                seq, prev = self._head or self._read_head()
                heads.clear()
                for change, (keys, args) in zip(changes, calls):
                    if change.audit is None:
                        chain_args: list[Any] = ["0", 0, "", "", "", self.chain, ""]
                    else:
                        chain_args, digest = self._sealed(change.audit, seq, prev)
                        seq, prev = seq + 1, digest
                    heads.append((seq, prev))
                    pipe.evalsha(self._commit.sha, len(chain_keys) + len(keys), *chain_keys, *keys, *chain_args, *args)

            replies = self._execute(queue)
            for i, (change, reply, after) in enumerate(zip(changes, replies, heads)):
                outcomes.append(None)
                if isinstance(reply, redis.ResponseError):    # the script failed on this one's values alone
                    outcomes[i] = Refused(f"Redis refused this item ({type(reply).__name__})")
                    self._head = None
                    continue
                if reply[0] == b"HEAD":              # sealed behind a refusal (or Redis lost data): it wrote
                    again.append(i)                  # nothing, and goes again on its own
                    self._head = None
                    continue
                try:
                    _raise_refusal(reply, change.event)
                    if change.audit is not None:
                        self._head = after
                except (Conflict, DuplicateEvent) as refused:
                    outcomes[i] = refused
        except StoreUnavailable:
            self._head = None                    # the scripts may or may not have run: re-read the head
            raise
        finally:
            self._audit_lock.release()
        for i in again:
            try:
                self._commit_one(changes[i])
            except (Conflict, DuplicateEvent, StoreUnavailable) as refused:
                outcomes[i] = refused
        return outcomes

    def _sealed(self, audit: dict[str, Any], seq: int, prev: str) -> tuple[list[Any], str]:
        """The write scripts' chain arguments (ARGV[1..7]) for ``audit`` sealed onto (seq, prev), and its seal."""
        (row,), head = seal_records([audit], self.chain, seq, prev, self.audit_key)
        return ["1", seq, prev, row.hash, f"{row.seq}\t{prev}\t{row.hash}\t{row.body}", self.chain, head.mac], row.hash

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        learned = list(learned_values.items())
        keys = [self._key("p", user_id), *self._unused(7), *(self._key("gc", a) for a, _ in learned)]
        keys[6] = self._key("gt")                # KEYS[10]: the totals the learned values add to
        args = ["", "1", expected_version, profile.to_json(expected_version + 1), "0", "", "0", "", 0,
                "", 0, "0", "", "", "", "", "", *(item for pair in learned for item in pair)]
        _raise_refusal(self._write(self._commit, keys, args, audit))
        profile.version = expected_version + 1

    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool:
        return self._write(self._outcome, [self._key("e", event_id)], [outcome], audit)[0] == b"OK"

    def append_audit(self, audit: dict[str, Any]) -> None:
        args = ["", "0", 0, "", "0", "", "0", "", 0, "", 0, "0", "", "", "", "", ""]
        self._write(self._commit, self._unused(8), args, audit)

    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        keys = [self._key("p", user_id), self._key("s", user_key), self._key("ue", user_id),
                self._key("uip", user_key), self._key("events")]
        status = self._write(self._erase, keys, [self.prefix, user_key], audit)
        with _available():
            self._redis.publish(self._key("erased"), user_key)   # other processes drop what they cached
        return len(status) < 2 or int(status[1]) > 0

    def watch_erasures(self, erased: Callable[[str], None], unsure: Callable[[], None]) -> None:
        """``erased(user_key)`` whenever any process erases a user; ``unsure()`` when the
        subscription broke (messages may have been missed) — it resubscribes by itself."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{self._key("erased"): lambda message: erased(message["data"].decode())})

        def broken(error: BaseException, *_: Any) -> None:
            unsure()
            time.sleep(0.5)

        self._watcher = pubsub.run_in_thread(sleep_time=1.0, daemon=True, exception_handler=broken)

    def prune_audit(self, chain: str, through_seq: int, audit: dict[str, Any]) -> int:
        """Drop ``chain``'s records up to ``through_seq`` (never its last), anchor where it now
        starts, and record the pruning on this store's chain, in one script."""
        rows = self._key("ar", chain)
        with _available():
            first = self._redis.lindex(rows, 0)
            first_seq = _audit_row(chain, 1, first.decode(errors="replace")).seq if first else 0
            index = through_seq - first_seq
            cut = self._redis.lindex(rows, index) if first and index >= 0 else None
        if cut is None:
            return 0
        cut_hash = _audit_row(chain, 0, cut.decode(errors="replace")).hash
        start = Anchor.make(START, chain, through_seq + 1, cut_hash, self.audit_key)
        status = self._write(self._prune, [rows, self._key("as", chain)],
                             [index, through_seq, cut_hash, start.mac], audit)
        return int(status[1]) if status[0] == b"OK" and len(status) > 1 else 0

    def _unused(self, n: int) -> list[str]:
        """Placeholder keys for a script's unused slots (the write script's KEYS[4..])."""
        return [self._key("unused")] * n

    def _write(self, script: Script, keys: list[str], args: list[Any],
               audit: dict[str, Any] | None) -> list[bytes]:
        """Run one write script, sealing ``audit`` onto this store's chain inside it."""
        chain_keys = [self._key("ah", self.chain), self._key("ar", self.chain), self._key("chains")]
        if audit is None:
            return self._run(script, chain_keys + keys, ["0", 0, "", "", "", self.chain, "", *args])
        # One append at a time per chain: each record is sealed onto the one before it.
        if not self._audit_lock.acquire(timeout=self._lock_timeout):
            raise StoreUnavailable("Redis store busy: the audit chain lock was not free in time")
        try:
            for _ in range(_HEAD_RETRIES):
                seq, prev = self._head or self._read_head()
                chain_args, digest = self._sealed(audit, seq, prev)
                try:
                    status = self._run(script, chain_keys + keys, [*chain_args, *args])
                except StoreUnavailable:
                    self._head = None            # the script may or may not have run: re-read the head
                    raise
                if status[0] == b"HEAD":
                    self._head = (int(status[1]), status[2].decode())
                    if self._head == (seq + 1, digest):
                        return [b"OK"]           # a reconnect retry of this very call had applied it
                    continue                     # the chain moved: Redis lost its data, or a shared chain id
                if status[0] == b"OK":
                    self._head = (seq + 1, digest)
                return status
            raise StoreUnavailable("the audit chain head kept moving: does another writer use this chain id?")
        finally:
            self._audit_lock.release()

    def _execute(self, queue: Callable[[Any], None]) -> list[Any]:
        """One pipeline, one round trip; a script's error is its own reply (``raise_on_error=False``)
        so the rest of the group keeps its outcomes. Scripts go by EVALSHA: redis-py's own script
        objects would first ask SCRIPT EXISTS, a second round trip per pipeline. A Redis that lost
        its scripts (restarted, flushed) is given them again and the pipeline sent once more; the
        write script refuses what it already did (DUP, HEAD), so nothing is applied twice."""
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            queue(pipe)
            with _available():
                replies = pipe.execute(raise_on_error=False)
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                return replies
            if attempt:
                raise StoreUnavailable("Redis refused the store's scripts")
            with _available():
                for script in (self._commit, self._context):
                    self._redis.script_load(script.script)
        raise AssertionError("unreachable")

    def _read_head(self) -> tuple[int, str]:
        with _available():
            seq, digest = self._redis.hmget(self._key("ah", self.chain), ["seq", "hash"])
        return (int(seq), digest.decode()) if seq is not None else (0, GENESIS)

    def _run(self, script: Script, keys: list[str], args: Sequence[Any]) -> list[bytes]:
        with _available():
            return script(keys=keys, args=list(args))

    # -- housekeeping -------------------------------------------------------
    def ping(self) -> None:
        with _available():
            self._redis.ping()

    def clear(self) -> None:
        """Delete this prefix's keys only: other stores (and tests) may share the server."""
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix) + "*"
        with _available():
            batch: list[bytes] = []
            for key in self._redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._redis.unlink(*batch)
                    batch.clear()
            if batch:
                self._redis.unlink(*batch)
        self._head = None

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self._redis.close()


@contextmanager
def _available() -> Iterator[None]:
    """Redis down, restarting or failed over -> StoreUnavailable (503); redis-py reconnects later."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"Redis store unavailable ({type(exc).__name__})") from exc


def _payment_currency(request: dict[str, Any]) -> str:
    """The currency under which ``payment_totals`` finds this event, or '' when it moved no money."""
    currency = request.get("currency")
    return str(currency) if request.get("amount") is not None and currency else ""


def _raise_refusal(status: list[bytes], event: StoredEvent | None = None) -> None:
    """A write script's refusal as the exception the store interface promises."""
    if status[0] == b"DUP":
        raise DuplicateEvent(event.event_id if event else "")
    if status[0] == b"CONFLICT":
        raise Conflict("the profile's version moved")     # no user id: exceptions end up in logs
    if status[0] == b"HEAD":
        raise StoreUnavailable("the audit chain head moved: does another writer use this chain id?")


def _stored(event_id: str, fields: dict[bytes, bytes]) -> StoredEvent:
    outcome = fields.get(b"outcome")
    return StoredEvent(event_id, fields[b"user_id"].decode(), float(fields[b"at"]),
                       json.loads(fields[b"request"]), json.loads(fields[b"decision"]),
                       json.loads(fields[b"features"]), outcome.decode() if outcome else None)


def _audit_row(chain: str, position: int, item: str) -> AuditRow:
    """``seq TAB prev TAB hash TAB body``; an entry edited out of shape still becomes a row verify flags."""
    parts = item.split("\t", 3)
    if len(parts) != 4 or not parts[0].isdigit():
        return AuditRow(chain, position, item, "", "")
    return AuditRow(chain, int(parts[0]), parts[3], parts[1], parts[2])
