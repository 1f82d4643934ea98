"""Signed heads: an anchor of the audit trail kept outside the store, by an auditor.

A store's own anchors live in the store, so whoever can delete its rows can delete them too
(an emptied trail verifies as "0 records"). ``riskengine audit head --out head.json`` writes,
per chain, the last record's seq and seal and a SHA-256 over the records it covers, signed with
the Ed25519 signing key (or, without one, keyed with the audit key). ``verify --head`` then fails
when the trail no longer reaches that head, has fewer records, or differs in what it covered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from riskengine.audit import signing
from riskengine.audit.chain import AuditRow, canonical
from riskengine.events import format_timestamp

FORMAT = "riskengine-audit-head/1"
HMAC = "hmac-sha256"
_Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class HeadError(ValueError):
    """A head file that cannot be read as one."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ChainMark(_Strict):
    """Where one chain stood: its records ``first_seq..seq``, the last one's seal, their digest."""

    first_seq: int = Field(ge=1)
    seq: int = Field(ge=1)
    hash: _Hex
    sha256: _Hex


class Signature(_Strict):
    alg: str = Field(pattern=f"^({signing.ALGORITHM}|{HMAC})$")
    key_id: str | None = None
    value: str = Field(min_length=1, max_length=512)


class Head(_Strict):
    format: str = Field(pattern=f"^{FORMAT}$")
    taken_at: str
    records: int = Field(ge=0)
    chains: dict[str, ChainMark]
    signature: Signature

    def signed_bytes(self) -> bytes:
        return canonical(self.model_dump(mode="json", exclude={"signature"})).encode()


def _line(row: AuditRow) -> bytes:
    return (canonical([row.chain, row.seq, row.body, row.prev_hash, row.hash]) + "\n").encode()


def take(rows: Iterable[AuditRow], taken_at: datetime, private: Ed25519PrivateKey | None,
         audit_key: bytes | None) -> Head:
    """The trail's head now, signed with ``private`` or else keyed with ``audit_key``."""
    marks: dict[str, dict] = {}
    digests: dict[str, Any] = {}                 # chain -> its running sha256
    count = 0
    for row in rows:
        count += 1
        mark = marks.setdefault(row.chain, {"first_seq": row.seq})
        mark["seq"], mark["hash"] = row.seq, row.hash
        digests.setdefault(row.chain, hashlib.sha256()).update(_line(row))
    chains = {chain: ChainMark(**mark, sha256=digests[chain].hexdigest()) for chain, mark in marks.items()}
    body = {"format": FORMAT, "taken_at": format_timestamp(taken_at), "records": count,
            "chains": {chain: mark.model_dump() for chain, mark in chains.items()}}
    data = canonical(body).encode()
    if private is not None:
        signature = Signature(alg=signing.ALGORITHM, key_id=signing.key_id(private.public_key()),
                              value=signing.sign(private, data))
    elif audit_key:
        signature = Signature(alg=HMAC, value=_mac(audit_key, data))
    else:
        raise HeadError("a head needs the signing key or the audit key to be signed")
    return Head(format=FORMAT, taken_at=body["taken_at"], records=count, chains=chains, signature=signature)


def _mac(audit_key: bytes, data: bytes) -> str:
    return hmac.digest(audit_key, b"riskengine-audit-head-file:" + data, "sha256").hex()


def write(head: Head, path: Path) -> None:
    Path(path).write_text(json.dumps(head.model_dump(mode="json"), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read(path: Path) -> Head:
    """Parse a head file (JSON only: nothing in it runs); raises ``HeadError`` naming what is wrong."""
    try:
        return Head.model_validate(json.loads(Path(path).read_bytes()))
    except OSError as exc:
        raise HeadError(f"{path}: cannot read the head file ({exc.strerror or exc})") from None
    except ValueError as exc:                    # JSON or ValidationError: both are ValueErrors
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]) \
            if isinstance(exc, ValidationError) else f"not JSON ({exc})"
        raise HeadError(f"{path}: not a riskengine audit head file: {detail}") from None


def check(head: Head, rows: Iterable[AuditRow], public: Ed25519PublicKey | None,
          audit_key: bytes | None) -> list[str]:
    """Problems between the head and the trail now, each a sentence; empty: the trail reaches the head.

    With ``public`` the head must carry a valid Ed25519 signature by that key (an HMAC head is
    refused: it would let whoever holds the audit key make one); without, the signing key it names
    must be given, or an HMAC head is checked with ``audit_key``.
    """
    problem = _signature_problem(head, public, audit_key)
    if problem is not None:
        return [problem]
    kept: dict[str, dict[int, AuditRow]] = {}
    for row in rows:
        kept.setdefault(row.chain, {})[row.seq] = row
    problems = []
    for chain, mark in head.chains.items():
        records = kept.get(chain, {})
        if not records:
            problems.append(f"chain {chain}: records {mark.first_seq}..{mark.seq} the head names are all missing "
                            "(the trail was deleted or emptied)")
            continue
        last, first = max(records), min(records)
        if last < mark.seq:
            problems.append(f"chain {chain}: ends at record {last}, short of record {mark.seq} the head names "
                            f"(records {last + 1}..{mark.seq} deleted: the trail has fewer records than the head)")
            continue
        if mark.seq in records and not hmac.compare_digest(records[mark.seq].hash, mark.hash):
            problems.append(f"chain {chain}: record {mark.seq} is not the one the head sealed (replaced)")
        if first <= mark.first_seq:              # nothing the head covers was pruned since: compare it all
            missing = [s for s in range(mark.first_seq, mark.seq + 1) if s not in records]
            digest = hashlib.sha256()
            for seq in range(mark.first_seq, mark.seq + 1):
                if seq in records:
                    digest.update(_line(records[seq]))
            if missing:
                problems.append(f"chain {chain}: records the head covers are missing ({_ranges(missing)})")
            elif not hmac.compare_digest(digest.hexdigest(), mark.sha256):
                problems.append(f"chain {chain}: records {mark.first_seq}..{mark.seq} differ from what the head "
                                "sealed (edited)")
    return problems


def _signature_problem(head: Head, public: Ed25519PublicKey | None, audit_key: bytes | None) -> str | None:
    data = head.signed_bytes()
    alg = head.signature.alg
    if public is not None:
        if alg != signing.ALGORITHM:
            return f"the head is not signed with Ed25519 ({alg}), so the public key cannot vouch for it"
        if not signing.valid(public, data, head.signature.value):
            return (f"the head's Ed25519 signature is not valid for public key {signing.key_id(public)} "
                    "(edited, or signed with another key)")
        return None
    if alg == signing.ALGORITHM:
        return "the head is signed with Ed25519: give --public-key (or configure the signing key) to check it"
    if not audit_key or not hmac.compare_digest(_mac(audit_key, data), head.signature.value):
        return "the head's HMAC does not match the audit key (edited, or made with another key)"
    return None


def describe(head: Head) -> str:
    signer = f"Ed25519 key {head.signature.key_id}" if head.signature.alg == signing.ALGORITHM else "the audit key"
    return f"head taken {head.taken_at} ({head.records} records in {len(head.chains)} chain(s)), signed by {signer}"


def _ranges(seqs: list[int]) -> str:
    """Sequence numbers as runs.

    >>> _ranges([1, 2, 3, 7])
    '1..3, 7'
    """
    parts, start = [], seqs[0]
    for prev, seq in zip(seqs, seqs[1:] + [None]):
        if seq != (prev + 1 if prev is not None else None):
            parts.append(f"{start}..{prev}" if prev != start else str(start))
            start = seq
    return ", ".join(parts)
