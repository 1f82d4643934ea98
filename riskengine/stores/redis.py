"""The shared store: several service processes or machines keep profiles, counters,
events and audit chains in one Redis, so no replica holds state another needs.

Three deployments, one store: a single primary (``redis://``, ``rediss://``, ``unix://``), a primary
found through Sentinel (``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``), and Redis Cluster
(``redis+cluster://HOST:PORT[,HOST:PORT...]``). A single primary and Sentinel run the same scripts
(one atomic script per write). Cluster refuses a script whose keys span hash slots, so there each write
is cut along slots (see "Cluster" below and the README).

Every write is one Lua script, so Redis runs it as a single atomic step; a profile's
version turns a lost update into a ``Conflict`` to retry, as in the SQLite store. A group's
scripts go in one pipeline (one round trip) from the store's writer thread (batching.py), each
with its own reply, so one refused item fails alone. Keys and arguments are bytes-exact strings:
two distinct ids are two distinct keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
from riskengine.stores.durability import Durability, server_durability, weakest
from riskengine.stores.redis_scripts import (CHAIN_LUA, COMMIT_LUA, CONTEXT_LUA, ERASE_LUA, FENCED_LUA, OUTCOME_LUA, PROBE_LUA,
                                             POPULATION_LUA, PRUNE_LUA, QUARANTINE_LUA, SECRET_LUA, UNWRITE_LUA,
                                             USER_COMMIT_LUA, USER_ERASE_LUA)

#: errors that mean "Redis cannot answer now" (down, restarting, loading, failed over, full):
#: the service answers 503 and a later request finds it back
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
                redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
                redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError,
                redis.exceptions.SlotNotCoveredError, redis.exceptions.ClusterError,
                redis.exceptions.AskError)      # MOVED/ASK mid-failover: the slot's new owner is not known yet
_log = logging.getLogger("riskengine.store")
_IP_TTL_S = int(2 * IP_WINDOW_S)          # an IP idle for two windows holds nothing a read could count
_USER_IPS_TTL_S = 7 * 86400               # outlives the IP entries it points at, so erasure finds them
_HEAD_RETRIES = 5
_CHUNK = 500
_MARKER_TTL_S = 86400                     # Cluster: an operation's population counts are applied once within this
#: Cluster: a pending part younger than this is left to the write that made it (in flight, not crashed)
OWED_GRACE_S = 30.0
#: Cluster: how often a serving process sweeps for parts owed by writes whose process crashed
OWED_SWEEP_EVERY_S = 300.0
_OPS_KEPT = 100_000                       # Cluster: a chain remembers its last this many operations (applied once)
#: Cluster: an erased generation's fences refuse its late parts this long (a sweep or retry that read
#: an owed entry before the erasure applies it within seconds; a day is the population marker's span)
_FENCE_TTL_S = _MARKER_TTL_S
_OWED_MAX_BYTES = 1 << 20                 # Cluster: a pending entry larger than this is not one we wrote
_OWED_MAX_POP = 1024                      # ... nor one counting more attributes than this
_USER_TAG = re.compile(r"\{u[0-9a-f]{24}\}")     # Cluster: a user's hash tag, as ``_user`` makes it
_slot_tags: list[str] = []                # Cluster: a short hash tag for each of the 16384 slots (built once)
_slot_tags_lock = threading.Lock()


def connect(url: str, socket_timeout: float = 1.0) -> Any:
    """A redis-py client for any of the store's URLs. Two quick retries let a pooled connection
    reconnect after a restart or a failover; more would only hold a request that should get its 503 now."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2)
    options = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+cluster", "rediss+cluster"):
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(host, int(port)) for host, _, port in
                 (hp.rpartition(":") for hp in rest.split("/")[0].split(",") if hp)]
        return RedisCluster(startup_nodes=nodes, ssl=scheme.startswith("rediss"), retry=retry, **options)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        from redis.sentinel import Sentinel

        hosts, _, path = rest.partition("/")
        service, _, db = path.partition("/")
        if not service:
            raise ValueError("RISKENGINE_STORE: a Sentinel URL names its service: redis+sentinel://HOST:PORT/SERVICE")
        addresses = [(host, int(port)) for host, _, port in (hp.rpartition(":") for hp in hosts.split(",") if hp)]
        sentinel = Sentinel(addresses, sentinel_kwargs=options, **options)
        return sentinel.master_for(service, db=int(db or 0), retry=retry, ssl=scheme.startswith("rediss"))
    return redis.Redis.from_url(url, retry=retry, **options)


class RedisStore:
    """Thread-safe; one audit chain per store (so per process), appended under a local lock."""

    def __init__(self, url: str, chain: str | None = None, prefix: str = "re:",
                 socket_timeout: float = 1.0, audit_key: bytes | None = None,
                 wait_replicas: int = 0, wait_timeout_ms: int = 500) -> None:
        self.prefix = prefix
        # WAIT: a write is answered only once this many replicas have it (0: not waited for)
        self.wait_replicas, self.wait_timeout_ms = wait_replicas, wait_timeout_ms
        self._wait_keys: dict[str, str] = {}
        self.chain = chain or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.audit_key = audit_key
        self.cluster = url.startswith(("redis+cluster://", "rediss+cluster://"))
        if self.cluster and any(c in prefix + self.chain for c in "{}"):
            raise ValueError("a Redis Cluster store's key prefix and chain id hold no braces (they pick hash slots)")
        self._redis = connect(url, socket_timeout)
        if self.cluster:
            _slot_tag("")             # the fences' slot table (about 0.3 s), built at start, not on a first write
        self._lock_timeout = 4 * socket_timeout + 1
        self._commit = self._redis.register_script(COMMIT_LUA)
        self._outcome = self._redis.register_script(OUTCOME_LUA)
        self._erase = self._redis.register_script(ERASE_LUA)
        self._prune = self._redis.register_script(PRUNE_LUA)
        self._secret = self._redis.register_script(SECRET_LUA)
        self._context = self._redis.register_script(CONTEXT_LUA)
        self._probe = self._redis.register_script(PROBE_LUA)
        self._user_commit = self._redis.register_script(USER_COMMIT_LUA)
        self._population = self._redis.register_script(POPULATION_LUA)
        self._chain_append = self._redis.register_script(CHAIN_LUA)
        self._user_erase = self._redis.register_script(USER_ERASE_LUA)
        self._fenced = self._redis.register_script(FENCED_LUA)
        self._unwrite = self._redis.register_script(UNWRITE_LUA)
        self._quarantine = self._redis.register_script(QUARANTINE_LUA)
        self._audit_lock = threading.Lock()
        self._head: tuple[int, str] | None = None      # this chain's (seq, hash); None: read it first
        self._watcher: Any = None                      # the erasure subscription's thread, if watched
        self._sweeper: threading.Thread | None = None  # Cluster: the owed-writes sweep, if started
        self._stop_sweeping = threading.Event()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    # Key names. A single primary keeps the names it always had. Cluster puts a user's keys in the
    # user's slot (hash tag: a digest of the user id, so no id's braces can split them), each chain's
    # keys in the chain's slot, population counts in one slot, and the rest (an IP's entries, the
    # event id -> user index, the time and payment indexes) each in its own.
    def _user(self, kind: str, user_id: str, name: str) -> str:
        if not self.cluster:
            return self._key(kind, name)
        tag = hashlib.blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
        return f"{self.prefix}{kind}:{{u{tag}}}{'' if name == user_id else name}"

    def _chain_key(self, kind: str, chain: str) -> str:
        return f"{self.prefix}{kind}:{{c:{chain}}}" if self.cluster else self._key(kind, chain)

    def _pop(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{{pop}}{name}" if self.cluster else self._key(kind, name)

    def _fence(self, key: str, generation: str) -> str:
        """Cluster: the key in ``key``'s slot that refuses the owed parts of an erased user generation.
        Named by the slot and the generation (random), never by the key: an event id can name its user."""
        return f"{self.prefix}x:{{{_slot_tag(key)}}}{generation}"

    # -- reads --------------------------------------------------------------
    def get(self, user_id: str) -> UserProfile:
        with _available():
            version, data = self._redis.hmget(self._user("p", user_id, user_id), ["v", "d"])
        if data is None:
            return UserProfile(user_id=user_id)
        profile = UserProfile.from_json(data)
        profile.version = int(version)
        return profile

    def changed_profiles(self, probes: list[tuple[str, int]]) -> list[UserProfile | None]:
        """One probe script per user, all in one pipeline; only a changed profile is sent back."""
        if not probes:
            return []
        replies = self._execute(lambda pipe: [pipe.evalsha(self._probe.sha, 1, self._user("p", user_id, user_id), version)
                                              for user_id, version in probes])
        changed: list[UserProfile | None] = []
        for (user_id, _), reply in zip(probes, replies):
            if isinstance(reply, Exception):
                raise reply
            if reply is None:
                changed.append(None)
                continue
            version, data = reply
            profile = UserProfile.from_json(data) if data is not None else UserProfile(user_id=user_id)
            profile.version = int(version) if version is not None else 0
            changed.append(profile)
        return changed

    def read_contexts(self, reads: list[ContextRead]) -> list[tuple[IpActivity, dict[str, GlobalCount]]]:
        """One context script per read, all in one pipeline. Cluster: two, the IP's slot's and the
        population's (the IP slot of the second is an empty key there, which counts nothing)."""
        def queue(pipe: Any) -> None:
            for ip, at, values in reads:
                window = (f"({at - IP_WINDOW_S!r}", repr(at))
                pairs = [item for pair in values.items() for item in pair]
                counts = [self._pop("gt"), *(self._pop("gc", a) for a in values)]
                if self.cluster:
                    pipe.evalsha(self._context.sha, 1, self._key("ip", ip), *window)
                    pipe.evalsha(self._context.sha, len(counts) + 1, self._pop("none"), *counts, *window, *pairs)
                else:
                    pipe.evalsha(self._context.sha, len(counts) + 1, self._key("ip", ip), *counts, *window, *pairs)

        replies = self._execute(queue)
        if (failed := next((r for r in replies if isinstance(r, Exception)), None)) is not None:
            raise failed
        if self.cluster:      # (failures, users) from the IP's slot, the counts from the population's
            replies = [[*replies[i][:2], *replies[i + 1][2:]] for i in range(0, len(replies), 2)]
        answers = []
        for (_, _, values), (failures, users, *counts) in zip(reads, replies):
            answers.append((IpActivity(int(failures), int(users)),
                            {a: GlobalCount(*(float(n or 0) for n in counts[3 * i:3 * i + 3]))
                             for i, a in enumerate(values)}))
        return answers

    def find_event(self, event_id: str) -> StoredEvent | None:
        if self.cluster:
            (fields,) = self._events([event_id], None)
            if fields and self._pending(fields[b"user_id"].decode(), event_id):
                (fields,) = self._events([event_id], None)
            return _stored(event_id, fields) if fields else None
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
        """Each event's fields (all, or ``fields``); an unknown or erased one: empty (or Nones).
        Cluster: the event lives in its user's slot, found through the event id -> user index."""
        if not ids:
            return []
        keys = [self._key("e", event_id) for event_id in ids]
        with _available():
            if self.cluster:
                pipe = self._redis.pipeline(transaction=False)
                for event_id in ids:
                    pipe.get(self._key("ei", event_id))
                users = pipe.execute()
                keys = [self._user("e", user.decode(), event_id) if user else self._key("e", event_id)
                        for user, event_id in zip(users, ids)]
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                if fields:
                    pipe.hmget(key, fields)
                else:
                    pipe.hgetall(key)
            return pipe.execute()

    def audit_rows(self) -> Iterator[AuditRow]:
        for chain in self._chains():
            start = 0
            while True:
                with _available():
                    items = self._redis.lrange(self._chain_key("ar", chain), start, start + _CHUNK - 1)
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
                pipe.hmget(self._chain_key("ah", chain), ["seq", "hash", "mac"])
                pipe.hmget(self._chain_key("as", chain), ["seq", "hash", "mac"])
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
        key = self._user("s", user_id, user_key)
        if not create:
            with _available():
                return self._redis.get(key)
        with _available():
            secret = self._secret(keys=[key], args=[os.urandom(32)])
        self._replicated()
        return secret

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
        if self.cluster:
            return self._commit_group_cluster(changes)
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
        return self._replicated_outcomes(outcomes)

    # -- Cluster: each write cut along hash slots -------------------------------------------------
    # A user's write runs in the user's slot (version check, duplicate check, profile, event) and
    # leaves beside it, in the same script, what it owes the other slots: the IP's entry, population
    # counts, the event id -> user, time and payment indexes, the audit record. Those are then applied,
    # each idempotent by the operation's id (the event id): a ZADD of the same member, SETs, the
    # population script's once-only marker, and the chain's applied set of this process. Only when all
    # are applied is the write durable (the 200); a failure in between answers 503, and the retry of the
    # event (DUP in the user's slot) or its lookup (``find_event``) applies what is still owed.
    def _commit_group_cluster(self, changes: list[Commit]) -> list[BaseException | None]:
        return self._cluster_writes([_UserWrite(c.user_id, c.expected_version, c.profile, c.event, c.ip, c.at,
                                                c.learned_values, f"{int(c.success)}:{{}}:{c.user_key}", c.audit)
                                     for c in changes])

    def _cluster_writes(self, writes: list["_UserWrite"]) -> list[BaseException | None]:
        ops = [w.event.event_id if w.event else f"op:{secrets.token_hex(12)}" for w in writes]
        owed = [self._owed(w, op) for w, op in zip(writes, ops)]
        # An event id is claimed for its user in the id's own slot first (SET NX GET), so that the same id
        # sent for another user is a duplicate here too, as in one primary. The claim expires in a day unless
        # the owed parts make it the event's index (SET, no TTL): a claim whose write was refused or never
        # made (a crash) names no user for good, where erasure could not find it. (Meanwhile the same
        # user's retry goes on, another user's gets DuplicateEvent.)
        outcomes: list[BaseException | None] = [None] * len(writes)
        claimed = [i for i, w in enumerate(writes) if w.event is not None]
        if claimed:
            with _available():
                pipe = self._redis.pipeline(transaction=False)
                for i in claimed:
                    pipe.set(self._key("ei", ops[i]), writes[i].user_id, nx=True, get=True, ex=_MARKER_TTL_S)
                for i, owner in zip(claimed, pipe.execute(raise_on_error=False)):
                    outcomes[i] = _reply_error(owner)
                    if outcomes[i] is None and owner is not None and owner.decode() != writes[i].user_id:
                        outcomes[i] = DuplicateEvent(ops[i])
        going = [i for i, failed in enumerate(outcomes) if failed is None]

        def queue(pipe: Any) -> None:
            for w, op, o in ((writes[i], ops[i], owed[i]) for i in going):
                event, profile = w.event, w.profile
                keys = [self._user("p", w.user_id, w.user_id), self._user("e", w.user_id, op),
                        self._user("ue", w.user_id, w.user_id), self._user("uip", w.user_id, w.user_id),
                        self._user("pd", w.user_id, w.user_id)]
                pipe.evalsha(self._user_commit.sha, len(keys), *keys,
                             event.event_id if event else "", "1" if profile is not None else "0", w.expected_version,
                             profile.to_json(w.expected_version + 1) if profile is not None else "",
                             w.ip, _USER_IPS_TTL_S, "1" if event else "0", w.user_id, repr(w.at),
                             dumps(event.request) if event else "", dumps(event.decision) if event else "",
                             dumps(event.features) if event else "", o["cur"], op, dumps(o), secrets.token_hex(8))

        owing: list[tuple[int, str, str, dict[str, Any]]] = []
        for i, reply in zip(going, self._execute(queue) if going else []):
            w, op, o = writes[i], ops[i], owed[i]
            outcomes[i] = _reply_error(reply)
            if outcomes[i] is not None:
                continue
            if reply[0] == b"DUP":
                outcomes[i] = DuplicateEvent(op)
                # an earlier try left something owed: apply it now (an entry that is not ours: set aside)
                if reply[1] and (earlier := self._readable_owed(w.user_id, op, reply[1])) is not None:
                    owing.append((i, w.user_id, op, earlier))
            elif reply[0] == b"CONFLICT":
                outcomes[i] = Conflict("the profile's version moved")
            else:
                owing.append((i, w.user_id, op, {**o, "g": reply[1].decode()}))
        for (i, *_), failed in zip(owing, self._apply_owed([item[1:] for item in owing])):
            if failed is not None:
                outcomes[i] = failed
        return self._replicated_outcomes(outcomes)

    def _owed(self, w: "_UserWrite", op: str) -> dict[str, Any]:
        learned = list(w.learned.items()) if w.profile is not None else []
        # u, w: whose write it is and when it was made, for a sweep that finds it without its retry
        return {"u": w.user_id, "w": time.time(),
                "ip": w.ip, "m": w.member.format(self._token(op)[:16]) if w.member else "", "at": w.at,
                "trim": f"({prune_before(w.at)!r}",
                "e": w.event.event_id if w.event else "", "cur": _payment_currency(w.event.request) if w.event else "",
                "pop": learned, "audit": w.audit, "ch": self.chain}

    def _token(self, op: str) -> str:
        """An operation's name in keys and IP entries outside the user's slot: a keyed digest, since an
        event id can name its user (erasure must leave nothing that does)."""
        return hmac.digest(self.audit_key or b"", op.encode("utf-8", "surrogatepass"), "sha256").hex()[:32]

    def _apply_owed(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[BaseException | None]:
        """What each (user, operation) still owes the other slots, applied (idempotent), then forgotten."""
        if not items:
            return []
        spans: list[int] = []

        def queue(pipe: Any) -> None:
            spans.clear()
            for user_id, op, o in items:
                before = len(pipe)
                # the parts naming the user go through their slot's fence for the user's generation: once
                # that generation is erased, a part applied late (read before the erasure) is refused
                generation = o.get("g") or "-"    # '-': an entry from before generations, never fenced

                def fenced(key: str, *args: Any) -> None:
                    pipe.evalsha(self._fenced.sha, 2, self._fence(key, generation), key, *args)

                if o["ip"]:
                    fenced(self._key("ip", o["ip"]), "ip", o["at"], o["m"], o["trim"], _IP_TTL_S)
                if o["pop"]:
                    keys = [self._pop("pm", self._token(op)), self._pop("gt"),
                            *(self._pop("gc", a) for a, _ in o["pop"])]
                    pipe.evalsha(self._population.sha, len(keys), *keys, _MARKER_TTL_S,
                                 *(item for pair in o["pop"] for item in pair))
                if o["e"]:
                    fenced(self._key("ei", o["e"]), "set", user_id)
                    fenced(self._key("events"), "z", o["at"], o["e"])
                    if o["cur"]:
                        fenced(self._key("pay", o["cur"]), "z", o["at"], o["e"])
                spans.append(len(pipe) - before)

        replies, start, outcomes = self._execute(queue), 0, []
        for span in spans:
            outcomes.append(next((_reply_error(r) for r in replies[start:start + span] if _reply_error(r)), None))
            start += span
        chains: dict[str, list[int]] = {}              # each record on the chain its first try began on
        for i, ((_, _, o), failed) in enumerate(zip(items, outcomes)):
            if failed is None and o["audit"]:
                chains.setdefault(o.get("ch") or self.chain, []).append(i)
        for chain, indexes in chains.items():
            try:
                self._append_chain([(items[i][1], items[i][2]["audit"]) for i in indexes], chain)
            except (StoreUnavailable, Refused) as failed:
                for i in indexes:
                    outcomes[i] = failed
        done = [(user_id, op) for (user_id, op, _), failed in zip(items, outcomes) if failed is None]
        try:
            with _available():
                pipe = self._redis.pipeline(transaction=False)
                for user_id, op in done:
                    pipe.hdel(self._user("pd", user_id, user_id), op)
                pipe.execute()
        except StoreUnavailable:
            pass                               # all applied: a later retry finds each part done already
        return outcomes

    def _pending(self, user_id: str, op: str) -> bool:
        """Apply what ``op`` still owes, if anything (raises StoreUnavailable when it cannot)."""
        with _available():
            raw = self._redis.hget(self._user("pd", user_id, user_id), op)
        if raw is None or (owed := self._readable_owed(user_id, op, raw)) is None:
            return False
        (failed,) = self._apply_owed([(user_id, op, owed)])
        if failed is not None:
            raise failed
        return True

    def sweep_owed(self, min_age_s: float = OWED_GRACE_S) -> int:
        """Cluster: apply what writes left owed to other slots and nobody retried (their process
        crashed between the user's slot and the rest, and the client never came back): every pending
        entry on every primary older than ``min_age_s``, applied as a retry would (idempotent, then
        forgotten); how many were applied. Entries from before ``u`` was kept are left to their retry;
        one that is not an entry this store wrote (not JSON, wrong types, another user's) is logged and
        set aside (``_readable_owed``). A user erased after the entry was read keeps nothing: the parts
        naming the user are refused by the erased generation's fences."""
        if not self.cluster:
            return 0
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix) + "pd:*"
        now, items = time.time(), []
        with _available():
            for key in self._redis.scan_iter(match=pattern, count=1000):
                for op_bytes, raw in self._redis.hgetall(key).items():
                    op = op_bytes.decode("utf-8", "surrogatepass")
                    owed = self._readable_owed(None, op, raw, key.decode("utf-8", "surrogatepass"))
                    if owed is not None and now - owed["w"] >= min_age_s:
                        items.append((owed["u"], op, owed))
        applied = 0
        for start in range(0, len(items), 256):
            applied += sum(failed is None for failed in self._apply_or_set_aside(items[start:start + 256]))
        return applied

    def _apply_or_set_aside(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[BaseException | None]:
        """``_apply_owed``; an entry Redis refuses (its values, not the store's state) is tried again
        alone (a refused audit record fails its chain's group), and set aside if refused alone too: it
        would fail every sweep and erasure after."""
        outcomes = self._apply_owed(items)
        for i, failed in enumerate(outcomes):
            if isinstance(failed, Refused):
                (outcomes[i],) = self._apply_owed([items[i]]) if len(items) > 1 else (failed,)
                if isinstance(outcomes[i], Refused):
                    self._set_aside(items[i][0], items[i][1], None, "refused by Redis")
        return outcomes

    def _readable_owed(self, user_id: str | None, op: str, raw: bytes,
                       key: str | None = None) -> dict[str, Any] | None:
        """A pending entry as this store wrote it, or None: one that is not (tampered, garbage, too big,
        another user's, a key that is not a user's) is logged by its operation's keyed token only (no
        user id, IP or event id) and moved aside in its user's slot, where erasure finds it. Entries
        without ``u`` (from before the sweep) are left as they are when the user is unknown."""
        problem: str | None = None
        owed: Any = None
        if len(raw) > _OWED_MAX_BYTES:
            problem = "too big"
        else:
            try:
                owed = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError):
                problem = "not JSON"
        if problem is None and isinstance(owed, dict) and "u" not in owed:   # written before entries named
            if user_id is None:                   # their user and time: the sweep leaves it to its retry,
                return None                       # which knows the user
            owed.update(u=user_id, w=0.0)
        if problem is None:
            problem = _owed_problem(owed, user_id, op)
        if problem is None and key is not None and self._user("pd", owed["u"], owed["u"]) != key:
            problem = "not this user's"
        if problem is None:
            return owed
        self._set_aside(user_id, op, raw, problem, key)
        return None

    def _set_aside(self, user_id: str | None, op: str, raw: bytes | None, problem: str,
                   key: str | None = None) -> None:
        """Move a pending entry that cannot be applied to its user's quarantine hash, beside it under the
        same user tag (erasure drops it with the user); one under a key that is no user's is dropped, as
        no erasure would find it there. Best effort: a failure is logged, and the next sweep tries again."""
        pending = key or self._user("pd", user_id or "", user_id or "")
        tag = pending[len(self.prefix) + 3:]
        done = "moved to quarantine" if _USER_TAG.fullmatch(tag) else "dropped: not a user's pending entries"
        try:
            with _available():
                if not _USER_TAG.fullmatch(tag):
                    moved = bool(self._redis.hdel(pending, op))
                else:
                    if raw is None:
                        raw = self._redis.hget(pending, op)
                    moved = raw is not None and self._run(self._quarantine, [pending, self.prefix + "pq:" + tag],
                                                          [op, raw]) == 1
        except (StoreUnavailable, redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            moved = False
            _log.warning("could not set aside an owed entry (%s)", type(exc).__name__)
        _log.warning("owed entry %s skipped: %s%s", self._token(op)[:16], problem, f" ({done})" if moved else "")

    def sweep_owed_every(self, interval_s: float | None = None, min_age_s: float | None = None) -> None:
        """Cluster: ``sweep_owed`` now (a crash before this process started) and every ``interval_s``
        (``OWED_SWEEP_EVERY_S``, entries older than ``OWED_GRACE_S``), on a daemon thread stopped by
        ``close``; an unavailable store is tried again next time, and nothing a sweep meets stops the next."""
        if not self.cluster or self._sweeper is not None:
            return
        interval_s = OWED_SWEEP_EVERY_S if interval_s is None else interval_s
        age_s = OWED_GRACE_S if min_age_s is None else min_age_s

        def sweep() -> None:
            while not self._stop_sweeping.is_set():
                try:
                    if applied := self.sweep_owed(age_s):
                        _log.warning("applied %d write(s) a crashed process left owed to other slots", applied)
                except (StoreUnavailable, Refused) as exc:
                    _log.warning("sweep for owed writes failed, next in %.0f s: %s", interval_s, type(exc).__name__)
                except Exception as exc:          # noqa: BLE001 - the message could hold stored data
                    _log.error("sweep for owed writes failed, next in %.0f s: %s", interval_s, type(exc).__name__)
                if self._stop_sweeping.wait(interval_s):
                    return

        self._sweeper = threading.Thread(target=sweep, name="riskengine-owed-sweep", daemon=True)
        self._sweeper.start()

    def _append_chain(self, items: list[tuple[str | None, dict[str, Any]]], chain: str | None = None) -> None:
        """Audit records onto a chain (this store's, or the one an earlier try of an operation began on)
        in the chain's slot, one pipeline, each sealed onto the one before. An operation's record goes
        on once: the script remembers the chain's recent operations (``_OPS_KEPT``) and answers DONE
        for one it has, so a retry after a lost reply, from any process, appends nothing twice."""
        if not items:
            return
        chain = chain or self.chain
        own = chain == self.chain
        if not self._audit_lock.acquire(timeout=self._lock_timeout):
            raise StoreUnavailable("Redis store busy: the audit chain lock was not free in time")
        try:
            keys = [self._chain_key("ah", chain), self._chain_key("ar", chain), self._chain_key("ao", chain)]
            head = self._head if own else None
            if head is None:                   # first use, or after a failure: make sure the chain is listed
                with _available():
                    self._redis.sadd(self._key("chains"), chain)
            for _ in range(_HEAD_RETRIES):
                seq, prev = head or self._read_head(chain)
                afters: list[tuple[int, str]] = []

                def queue(pipe: Any) -> None:
                    s, p = seq, prev
                    afters.clear()
                    for op, audit in items:
                        args, p = self._sealed(audit, s, p, chain)
                        s += 1
                        afters.append((s, p))
                        pipe.evalsha(self._chain_append.sha, len(keys), *keys, *args,
                                     self._token(op) if op else "", _OPS_KEPT)

                try:
                    replies = self._execute(queue)
                    failed = next((_reply_error(r) for r in replies if _reply_error(r)), None)
                    if failed is not None:
                        raise failed
                except (StoreUnavailable, Refused):
                    if own:
                        self._head = None      # the scripts may or may not have run: re-read the head
                    raise
                finished, head = 0, None
                for i, reply in enumerate(replies):
                    if reply[0] == b"HEAD":    # the chain moved (another writer, a failover): seal the rest again
                        head = (int(reply[1]), reply[2].decode())
                        break
                    finished = i + 1
                    if reply[0] == b"OK":
                        head = afters[i]
                if own:
                    self._head = head
                if finished == len(items):
                    return
                items = items[finished:]
            raise StoreUnavailable("the audit chain head kept moving: does another writer use this chain id?")
        finally:
            self._audit_lock.release()

    def _erase_cluster(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        """(1) What the user's slot still owes the other slots is applied first (so population counts and
        audit records of a write that crashed half-way count once, as the sweep would have made them);
        (2) the other slots forget the user (the event indexes, the IPs' entries), each in one step with
        a fence for the user's generation there, which refuses any part of that generation applied later
        (a sweep or retry that read an owed entry before this erasure: nothing comes back); (3) the
        user's slot drops everything, owed and quarantined entries included, unless an event, address
        or owed entry came in or the generation changed meanwhile (then again); (4) the audit record.
        Each step can be redone: a retried erasure finishes what a failed one began."""
        user_keys = [self._user(kind, user_id, name) for kind, name in
                     (("p", user_id), ("s", user_key), ("ue", user_id), ("uip", user_id), ("pd", user_id),
                      ("pq", user_id))]
        for _ in range(_HEAD_RETRIES):
            with _available():
                pipe = self._redis.pipeline(transaction=False)
                pipe.smembers(user_keys[2])
                pipe.smembers(user_keys[3])
                pipe.hgetall(user_keys[4])
                pipe.hget(user_keys[0], "g")
                event_members, ip_members, pending, generation = pipe.execute()
                event_ids, ips = [m.decode() for m in event_members], [m.decode() for m in ip_members]
            owed = [(user_id, op.decode("utf-8", "surrogatepass"), o) for op, raw in pending.items()
                    if (o := self._readable_owed(user_id, op.decode("utf-8", "surrogatepass"), raw)) is not None]
            for failed in self._apply_or_set_aside(owed):
                if failed is not None and not isinstance(failed, Refused):    # refused: set aside, dropped below
                    raise failed
            with _available():
                event_keys = [self._user("e", user_id, event_id) for event_id in event_ids]
                pipe = self._redis.pipeline(transaction=False)
                for key in event_keys:
                    pipe.hget(key, "pay")
                currencies = pipe.execute() if event_keys else []
            paid: dict[str, list[str]] = {}
            for event_id, currency in zip(event_ids, currencies):
                if currency:
                    paid.setdefault(currency.decode(), []).append(event_id)
            fence = generation.decode() if generation else None
            every_ip = sorted({*ips, *(o["ip"] for _, _, o in owed if o["ip"])})

            def queue(pipe: Any) -> None:
                def unwrite(key: str, *args: Any) -> None:
                    pipe.evalsha(self._unwrite.sha, 2, self._fence(key, fence or "-"), key, _FENCE_TTL_S,
                                 "1" if fence else "0", *args)

                for event_id in event_ids:
                    unwrite(self._key("ei", event_id), "del")
                for start in range(0, len(event_ids), _CHUNK):
                    unwrite(self._key("events"), "z", *event_ids[start:start + _CHUNK])
                for currency, ids in paid.items():
                    for start in range(0, len(ids), _CHUNK):
                        unwrite(self._key("pay", currency), "z", *ids[start:start + _CHUNK])
                for ip in every_ip:
                    unwrite(self._key("ip", ip), "ip", user_key)

            for reply in self._execute(queue) if event_ids or every_ip else []:
                if (failed := _reply_error(reply)) is not None:
                    raise failed
            status = self._run(self._user_erase, user_keys + event_keys,
                               [len(ips), fence or "", *pending])
            if status[0] == b"OK":
                break
        else:
            raise StoreUnavailable("the user kept changing while being erased")
        self._append_chain([(None, audit)])
        self._replicated()
        with _available():
            self._redis.publish(self._key("erased"), user_key)
        return int(status[1]) > 0

    def _sealed(self, audit: dict[str, Any], seq: int, prev: str,
                chain: str | None = None) -> tuple[list[Any], str]:
        """The write scripts' chain arguments (ARGV[1..7]) for ``audit`` sealed onto (seq, prev), and its seal."""
        chain = chain or self.chain
        (row,), head = seal_records([audit], chain, seq, prev, self.audit_key)
        return ["1", seq, prev, row.hash, f"{row.seq}\t{prev}\t{row.hash}\t{row.body}", chain, head.mac], row.hash

    def update_profile(self, user_id: str, expected_version: int, profile: UserProfile,
                       learned_values: dict[str, str], audit: dict[str, Any] | None) -> None:
        if self.cluster:
            outcome = self._cluster_writes([_UserWrite(user_id, expected_version, profile, None, "", 0.0,
                                                       learned_values, None, audit)])[0]
            if outcome is not None:
                raise outcome
            profile.version = expected_version + 1
            return
        learned = list(learned_values.items())
        keys = [self._key("p", user_id), *self._unused(7), *(self._key("gc", a) for a, _ in learned)]
        keys[6] = self._key("gt")                # KEYS[10]: the totals the learned values add to
        args = ["", "1", expected_version, profile.to_json(expected_version + 1), "0", "", "0", "", 0,
                "", 0, "0", "", "", "", "", "", *(item for pair in learned for item in pair)]
        _raise_refusal(self._write(self._commit, keys, args, audit))
        profile.version = expected_version + 1

    def record_outcome(self, event_id: str, outcome: str, audit: dict[str, Any]) -> bool:
        if self.cluster:          # the event's slot, then the audit record on the chain's (a retry redoes both)
            with _available():
                user = self._redis.get(self._key("ei", event_id))
            if user is None:
                return False
            key = self._user("e", user.decode(), event_id)
            status = self._run(self._outcome, [key] * 4, ["0", 0, "", "", "", "", "", outcome])
            if status[0] == b"OK":
                self._append_chain([(None, audit)])
                self._replicated()
            return status[0] == b"OK"
        return self._write(self._outcome, [self._key("e", event_id)], [outcome], audit)[0] == b"OK"

    def append_audit(self, audit: dict[str, Any]) -> None:
        if self.cluster:
            self._append_chain([(None, audit)])
            self._replicated()
            return
        args = ["", "0", 0, "", "0", "", "0", "", 0, "", 0, "0", "", "", "", "", ""]
        self._write(self._commit, self._unused(8), args, audit)

    def erase_user(self, user_id: str, user_key: str, audit: dict[str, Any]) -> bool:
        if self.cluster:
            return self._erase_cluster(user_id, user_key, audit)
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
        rows = self._chain_key("ar", chain)
        with _available():
            first = self._redis.lindex(rows, 0)
            first_seq = _audit_row(chain, 1, first.decode(errors="replace")).seq if first else 0
            index = through_seq - first_seq
            cut = self._redis.lindex(rows, index) if first and index >= 0 else None
        if cut is None:
            return 0
        cut_hash = _audit_row(chain, 0, cut.decode(errors="replace")).hash
        start = Anchor.make(START, chain, through_seq + 1, cut_hash, self.audit_key)
        if self.cluster:          # the pruned chain's slot, then the record of it on this store's chain
            status = self._run(self._prune, [rows] * 4 + [self._chain_key("as", chain)],
                               ["0", 0, "", "", "", "", "", index, through_seq, cut_hash, start.mac])
            if status[0] == b"OK":
                self._append_chain([(None, audit)])
                self._replicated()
            return int(status[1]) if status[0] == b"OK" and len(status) > 1 else 0
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
            status = self._run(script, chain_keys + keys, ["0", 0, "", "", "", self.chain, "", *args])
            if status[0] == b"OK":
                self._replicated()
            return status
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
                    self._replicated()
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
            if (down := next((r for r in replies if isinstance(r, _UNAVAILABLE)), None)) is not None:
                # a Cluster pipeline answers per node: one node down fails the group (what it did apply
                # is found again by a retry: DUP, pending, HEAD)
                raise StoreUnavailable(f"Redis store unavailable ({type(down).__name__})") from down
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                return replies
            if attempt:
                raise StoreUnavailable("Redis refused the store's scripts")
            with _available():
                for script in (self._commit, self._context, self._probe, self._user_commit, self._population,
                               self._chain_append, self._fenced, self._unwrite):
                    self._redis.script_load(script.script)
        raise AssertionError("unreachable")

    def _read_head(self, chain: str | None = None) -> tuple[int, str]:
        with _available():
            seq, digest = self._redis.hmget(self._chain_key("ah", chain or self.chain), ["seq", "hash"])
        return (int(seq), digest.decode()) if seq is not None else (0, GENESIS)

    def _run(self, script: Script, keys: list[str], args: Sequence[Any]) -> list[bytes]:
        with _available():
            return script(keys=keys, args=list(args))

    # -- housekeeping -------------------------------------------------------
    def ping(self) -> None:
        with _available():
            self._redis.ping()

    def durability(self) -> Durability:
        """What the primary (Cluster: the weakest primary) keeps across a restart or power loss, and
        how many replicas a write waits for."""
        with _available():
            if self.cluster:
                found = weakest(server_durability(self._redis.get_redis_connection(node))
                                for node in self._redis.get_primaries())
            else:
                found = server_durability(self._redis)
        return replace(found, replicas=self.wait_replicas)

    def clear(self) -> None:
        """Delete this prefix's keys only: other stores (and tests) may share the server."""
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix) + "*"
        with _available():
            batch: list[bytes] = []
            for key in self._redis.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self._unlink(batch)
                    batch.clear()
            if batch:
                self._unlink(batch)
        self._head = None

    def _replicated(self) -> None:
        """WAIT for ``wait_replicas`` replicas to hold every write made so far (on a Cluster, on each
        primary): an increment of a key of ours on that primary, then WAIT on the same connection,
        which covers everything the primary wrote before. Raises StoreUnavailable (503) when too few
        replicas acknowledge within ``wait_timeout_ms``: the write may be lost in a failover."""
        if not self.wait_replicas:
            return
        with _available():
            targets = ([(self._redis.get_redis_connection(node), self._wait_key(node))
                        for node in self._redis.get_primaries()] if self.cluster else [(self._redis, self._key("w"))])
            for client, key in targets:
                pipe = client.pipeline(transaction=False)
                pipe.incr(key)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                acknowledged = pipe.execute()[-1]
                if acknowledged < self.wait_replicas:
                    raise StoreUnavailable(f"only {acknowledged} of {self.wait_replicas} replicas acknowledged "
                                           f"the write within {self.wait_timeout_ms} ms")

    def _replicated_outcomes(self, outcomes: list[BaseException | None]) -> list[BaseException | None]:
        if any(outcome is None for outcome in outcomes):
            try:
                self._replicated()
            except StoreUnavailable as unsure:
                return [unsure if outcome is None else outcome for outcome in outcomes]
        return outcomes

    def _wait_key(self, node: Any) -> str:
        """A key of ours in a slot ``node`` serves (Cluster), found once per node."""
        if node.name not in self._wait_keys:
            self._wait_keys[node.name] = next(
                key for key in (f"{self.prefix}w:{{{i}}}" for i in range(1_000_000))
                if self._redis.get_node_from_key(key).name == node.name)
        return self._wait_keys[node.name]

    def _unlink(self, keys: list[bytes]) -> None:
        if not self.cluster:
            self._redis.unlink(*keys)
            return
        pipe = self._redis.pipeline(transaction=False)     # Cluster: one key a command (keys span slots)
        for key in keys:
            pipe.unlink(key)
        pipe.execute()

    def close(self) -> None:
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
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


@dataclass(slots=True)
class _UserWrite:
    """Cluster: one write of a user's slot (a scored event, or a profile update)."""
    user_id: str
    expected_version: int
    profile: UserProfile | None
    event: StoredEvent | None
    ip: str                           # keyed; '' for none
    at: float
    learned: dict[str, str]
    member: str | None                # the IP entry, '{}' standing for the operation's token
    audit: dict[str, Any] | None


def _reply_error(reply: Any) -> BaseException | None:
    """A pipelined command's own failure as the outcome its item gets; None when it answered."""
    if not isinstance(reply, Exception):
        return None
    if isinstance(reply, _UNAVAILABLE):
        return StoreUnavailable(f"Redis store unavailable ({type(reply).__name__})")
    return Refused(f"Redis refused this item ({type(reply).__name__})")


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


def _slot_tag(key: str) -> str:
    """A short hash tag that puts a key in the same Cluster slot as ``key`` (a table of one per slot,
    built on first use, by a Cluster store's constructor: about 0.3 s once per process)."""
    from redis.crc import key_slot

    if not _slot_tags:
        with _slot_tags_lock:
            if not _slot_tags:
                found: dict[int, str] = {}
                n = 0
                while len(found) < 16384:
                    found.setdefault(key_slot(str(n).encode()), str(n))
                    n += 1
                _slot_tags.extend(found[slot] for slot in range(16384))
    return _slot_tags[key_slot(key.encode("utf-8", "surrogatepass"))]


def _score(text: str) -> bool:
    """Whether Redis reads ``text`` as a sorted-set score."""
    try:
        return not math.isnan(float(text))
    except ValueError:
        return False


def _owed_problem(owed: Any, user_id: str | None, op: str) -> str | None:
    """Why a decoded pending entry cannot be applied (tampered, or not written by this store), or None.
    ``user_id``: the user whose slot it was found in, when known."""
    def text(value: Any, limit: int = 4096) -> bool:
        return isinstance(value, str) and len(value) <= limit

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300

    if not isinstance(owed, dict):
        return "not an object"
    if not text(owed.get("u")) or (user_id is not None and owed["u"] != user_id):
        return "not this user's"
    if not number(owed.get("w")) or not number(owed.get("at")):
        return "bad times"
    if not all(text(owed.get(name)) for name in ("ip", "m", "e", "cur", "trim", "ch")):
        return "bad fields"
    if owed["e"] not in ("", op):
        return "another operation's event"
    if owed["ip"] and not (owed["m"] and owed["trim"].startswith("(") and _score(owed["trim"][1:])):
        return "bad IP entry"
    if any(c in owed["ch"] for c in "{}"):
        return "bad chain"
    pop = owed.get("pop")
    if not isinstance(pop, list) or len(pop) > _OWED_MAX_POP or not all(
            isinstance(pair, list) and len(pair) == 2 and text(pair[0], 256) and text(pair[1]) for pair in pop):
        return "bad counts"
    if owed.get("audit") is not None and not isinstance(owed["audit"], dict):
        return "bad audit record"
    if "g" in owed and not (text(owed["g"], 64) and owed["g"].isalnum()):
        return "bad generation"
    return None
