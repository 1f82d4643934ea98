"""Step 7 of the flow: the tamper-evident audit trail.

Each record is sealed with ``HMAC-SHA256(audit key, previous seal + canonical JSON)``
(plain SHA-256 when a store has no key, e.g. training replays) and carries its
chain and sequence number. Each chain also has two keyed anchors: its head (the
last record, so a truncated end shows) and, once retention pruned it, its start
(the seal the first kept record links to). ``verify`` finds an edited byte and a
deleted, inserted, forged or reordered record, and names the chain and record.
Users appear only as keyed pseudonyms: erasing a user's secret leaves the chain
verifiable but anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
HEAD, START = "head", "start"


#: what ``json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` builds on
#: every call, built once (an encoder keeps no state between calls; every record is encoded)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(body: dict[str, Any]) -> str:
    """The exact bytes that get hashed: sorted keys, no spaces, UTF-8."""
    return _CANONICAL.encode(body)


def seal(prev_hash: str, body: dict[str, Any], key: bytes | None = None) -> str:
    """Chain one record onto the previous one; with a key, only its holder can make a valid seal.

    >>> seal(GENESIS, {"seq": 1}) == seal(GENESIS, {"seq": 1}) != seal(GENESIS, {"seq": 2})
    True
    >>> seal(GENESIS, {"seq": 1}, b"k") != seal(GENESIS, {"seq": 1}, b"other key")
    True
    """
    return _seal_text(prev_hash, canonical(body), key)


def _seal_text(prev_hash: str, text: str, key: bytes | None) -> str:
    """``seal`` of a body already in its canonical form."""
    data = (prev_hash + text).encode()
    return hmac.digest(key, data, "sha256").hex() if key else hashlib.sha256(data).hexdigest()


def pseudonym(user_key: bytes, user_id: str) -> str:
    """A stable, unlinkable-without-the-key name for a user in audit records."""
    # hmac.new, not hmac.digest: the one-shot form releases the GIL around every call, and on the
    # event loop each release let a store thread take the interpreter in the middle of a request
    return hmac.new(user_key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


class KeyedHash:
    """HMAC-SHA256 under one fixed key, keyed once: each call copies the prepared state, so it
    neither looks the digest up nor hashes the key again (``hmac.digest`` does both, ~4 µs, and
    releases the GIL around it), and its values equal ``hmac.digest(key, data, "sha256")``'s."""

    __slots__ = ("_prepared",)

    def __init__(self, key: bytes) -> None:
        self._prepared = hmac.new(key, digestmod=hashlib.sha256)

    def hex(self, data: bytes) -> str:
        mac = self._prepared.copy()
        mac.update(data)
        return mac.hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored record: its chain, position, body (as stored text) and hashes."""

    chain: str
    seq: int
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Anchor:
    """A keyed mark of where a chain ends (``head``: seq and seal of its last record) or, after
    retention pruned its oldest records, where it now starts (``start``: seq of the first kept
    record and the seal it links to)."""

    chain: str
    kind: str
    seq: int
    hash: str
    mac: str

    @classmethod
    def make(cls, kind: str, chain: str, seq: int, digest: str, key: bytes | None) -> "Anchor":
        return cls(chain, kind, seq, digest, _anchor_mac(kind, chain, seq, digest, key))

    def valid(self, key: bytes | None) -> bool:
        return hmac.compare_digest(self.mac, _anchor_mac(self.kind, self.chain, self.seq, self.hash, key))


def _anchor_mac(kind: str, chain: str, seq: int, digest: str, key: bytes | None) -> str:
    data = f"riskengine-audit-{kind}:{chain}:{seq}:{digest}".encode()
    return hmac.digest(key, data, "sha256").hex() if key else hashlib.sha256(data).hexdigest()


def seal_records(bodies: list[dict[str, Any]], chain: str, seq: int, prev: str,
                 key: bytes | None) -> tuple[list[AuditRow], Anchor]:
    """Seal ``bodies`` onto a chain whose head is (``seq``, ``prev``): each record carries its chain
    and position and links to the one before; the new head anchor marks the last. Every store
    appends through this, so a record is sealed the same way wherever it is kept.

    >>> rows, head = seal_records([{"kind": "a"}, {"kind": "b"}], "main", 0, GENESIS, b"k")
    >>> [r.seq for r in rows], rows[1].prev_hash == rows[0].hash, (head.seq, head.hash) == (2, rows[1].hash)
    ([1, 2], True, True)
    >>> verify(rows, b"k", [head])
    []
    """
    rows = []
    for body in bodies:
        seq += 1
        sealed = {**body, "chain": chain, "seq": seq}
        text = canonical(sealed)                  # encoded once: what is sealed is what is kept
        digest = _seal_text(prev, text, key)
        rows.append(AuditRow(chain, seq, text, prev, digest))
        prev = digest
    return rows, Anchor.make(HEAD, chain, seq, prev, key)


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int
    what: str

    def __str__(self) -> str:
        return f"chain {self.chain} record {self.seq}: {self.what}"


def verify(rows: Iterable[AuditRow], key: bytes | None = None,
           anchors: Iterable[Anchor] | None = None, seals: bool = True) -> list[Problem]:
    """Check every chain end to end; rows may come in any chain order but by seq within one.

    With ``anchors`` (a store's heads and starts) a chain must end at its head and begin
    at its start anchor (or at record 1); without, only the links between records are checked.
    ``seals=False`` (an auditor without the audit key) checks links and positions only.
    """
    problems: list[Problem] = []
    heads: dict[str, Anchor] = {}
    starts: dict[str, Anchor] = {}
    for anchor in anchors or ():
        if seals and not anchor.valid(key):
            problems.append(Problem(anchor.chain, anchor.seq, f"the chain's {anchor.kind} anchor is not sealed "
                                    "with the audit key (forged or edited)"))
        (heads if anchor.kind == HEAD else starts)[anchor.chain] = anchor
    expected: dict[str, tuple[int, str]] = {}
    for row in rows:
        if row.chain not in expected:
            start = starts.get(row.chain)
            expected[row.chain] = (start.seq, start.hash) if start is not None else (1, GENESIS)
        expected_seq, expected_prev = expected[row.chain]
        try:
            body = json.loads(row.body)
        except ValueError:
            problems.append(Problem(row.chain, row.seq, "record is not valid JSON (edited)"))
            expected[row.chain] = (row.seq + 1, row.hash)
            continue
        if not isinstance(body, dict):
            body = {}
        if body.get("seq") != row.seq or body.get("chain") != row.chain:
            problems.append(Problem(row.chain, row.seq, "position inside the record does not match "
                                    f"where it is stored (seq {body.get('seq')}): moved or swapped"))
        if row.seq != expected_seq:
            what = (f"records {expected_seq}..{row.seq - 1} are missing (deleted)" if row.seq > expected_seq
                    else f"unexpected record after {expected_seq - 1} (inserted or duplicated)")
            problems.append(Problem(row.chain, row.seq, what))
        if row.prev_hash != expected_prev:
            problems.append(Problem(row.chain, row.seq, "does not link to the record before it "
                                    "(a record was deleted, inserted or reordered)"))
        if seals and (not hmac.compare_digest(seal(row.prev_hash, body, key), row.hash) or canonical(body) != row.body):
            problems.append(Problem(row.chain, row.seq, "content does not match its seal (edited, or forged "
                                    "without the audit key)"))
        expected[row.chain] = (row.seq + 1, row.hash)
    if anchors is not None:
        problems += _check_ends(expected, heads)
    return problems


def _check_ends(expected: dict[str, tuple[int, str]], heads: dict[str, Anchor]) -> list[Problem]:
    problems = []
    for chain, (next_seq, last_hash) in expected.items():
        head = heads.get(chain)
        last = next_seq - 1
        if head is None:
            problems.append(Problem(chain, last, "the chain has no head anchor (deleted)"))
        elif last < head.seq:
            problems.append(Problem(chain, last + 1, f"records {last + 1}..{head.seq} at the end of the chain "
                                    "are missing (deleted)"))
        elif last > head.seq:
            problems.append(Problem(chain, head.seq + 1, f"records {head.seq + 1}..{last} come after the chain's "
                                    "head (inserted)"))
        elif last_hash != head.hash:
            problems.append(Problem(chain, last, "the last record is not the one the head anchor sealed (replaced)"))
    for chain, head in heads.items():
        if chain not in expected:
            problems.append(Problem(chain, head.seq, f"all records of the chain up to {head.seq} are missing (deleted)"))
    return problems
