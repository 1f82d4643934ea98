"""Step 7 of the flow: the tamper-evident audit trail.

Each record is sealed with ``sha256(previous hash + canonical JSON)`` and carries
its chain and sequence number, so ``verify`` finds an edited byte, a deleted,
inserted or reordered record and names where. Users appear only as keyed
pseudonyms: erasing a user's key leaves the chain verifiable but anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(body: dict[str, Any]) -> str:
    """The exact bytes that get hashed: sorted keys, no spaces, UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def seal(prev_hash: str, body: dict[str, Any]) -> str:
    """Chain one record onto the previous one.

    >>> seal(GENESIS, {"seq": 1}) == seal(GENESIS, {"seq": 1}) != seal(GENESIS, {"seq": 2})
    True
    """
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()


def pseudonym(user_key: bytes, user_id: str) -> str:
    """A stable, unlinkable-without-the-key name for a user in audit records."""
    return hmac.new(user_key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored record: its chain, position, body (as stored text) and hashes."""

    chain: str
    seq: int
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    seq: int
    what: str

    def __str__(self) -> str:
        return f"chain {self.chain} record {self.seq}: {self.what}"


def verify(rows: Iterable[AuditRow]) -> list[Problem]:
    """Check every chain end to end; rows may come in any chain order but by seq within one."""
    problems: list[Problem] = []
    heads: dict[str, tuple[int, str]] = {}
    for row in rows:
        expected_seq, expected_prev = heads.get(row.chain, (1, GENESIS))
        try:
            body = json.loads(row.body)
        except ValueError:
            problems.append(Problem(row.chain, row.seq, "record is not valid JSON (edited)"))
            heads[row.chain] = (row.seq + 1, row.hash)
            continue
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
        if seal(row.prev_hash, body) != row.hash or canonical(body) != row.body:
            problems.append(Problem(row.chain, row.seq, "content does not match its hash (edited)"))
        heads[row.chain] = (row.seq + 1, row.hash)
    return problems
