"""Operator tools over the audit trail (step 7): export an auditor's extract, and retention.

Retention keeps the trail verifiable: pruning drops the oldest records of a chain
(never its last one) in one transaction that also writes a keyed ``start`` anchor
(the seal the first kept record links to) and appends a ``retention`` record, so
``riskengine audit verify`` checks each chain from its anchor on and the trail
itself says what was pruned, when and up to where.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import IO, Any

from riskengine.audit.chain import AuditRow
from riskengine.events import format_timestamp, parse_timestamp

FORMATS = ("jsonl", "csv")
#: CSV columns in this order; whatever else a record holds goes to ``details`` as JSON
COLUMNS = ("chain", "seq", "kind", "at", "recorded_at", "client", "subject", "event_id", "event_ref", "action",
           "risk_score", "risk_level", "decision", "shadowed", "shadow_decision", "required_acr", "max_age",
           "exemption", "amr", "reasons", "failure", "outcome", "model_version", "policy_version", "details", "hash")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time, or a date meaning its midnight UTC.

    >>> parse_time("2026-03-01").isoformat(), parse_time("2026-03-01T10:00:00+01:00").isoformat()
    ('2026-03-01T00:00:00+00:00', '2026-03-01T09:00:00+00:00')
    """
    text = text.strip()
    if len(text) == 10:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return parse_timestamp(text)


def _at(body: dict[str, Any]) -> datetime | None:
    try:
        return parse_timestamp(body["at"])
    except (KeyError, TypeError, ValueError):
        return None


def select(rows: Iterable[AuditRow], since: datetime | None = None, until: datetime | None = None,
           event_ids: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Records whose ``at`` is in [since, until), with their seal; ``event_ids`` maps refs back to ids."""
    for row in rows:
        try:
            body = json.loads(row.body)
        except ValueError:
            body = {"kind": "unreadable", "chain": row.chain, "seq": row.seq}
        at = _at(body)
        if (since is not None or until is not None) and at is None:
            continue
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        record = {**body, "chain": row.chain, "seq": row.seq, "hash": row.hash}
        if event_ids is not None and "event_ref" in body:
            record["event_id"] = event_ids.get(body["event_ref"])     # None once the user is erased
        yield record


def write(records: Iterable[dict[str, Any]], out: IO[str], fmt: str) -> int:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    count = 0
    if fmt == "jsonl":
        for count, record in enumerate(records, 1):
            out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        return count
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for count, record in enumerate(records, 1):
        details = {k: v for k, v in record.items() if k not in COLUMNS}
        writer.writerow([_cell(details if c == "details" and details else record.get(c)) for c in COLUMNS])
    return count


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def positive_days(value: float | str) -> float:
    """A retention period: a positive, finite number of days (``--days -5`` would prune the future).

    >>> positive_days("30"), positive_days(0.5)
    (30.0, 0.5)
    """
    try:
        days = float(value)
    except (TypeError, ValueError):
        days = math.nan
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"retention must be a positive number of days, got {value!r}")
    return days


def retention_plan(rows: Iterable[AuditRow], cutoff: datetime) -> dict[str, int]:
    """Per chain, the last record to prune: the oldest run of records whose time ``at`` is before
    ``cutoff`` (the time ``export --since/--until`` selects by), stopping at the first newer one
    (a chain only loses its beginning) and never its last record."""
    plan: dict[str, int] = {}
    stopped: set[str] = set()
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for row in rows:
        first.setdefault(row.chain, row.seq)
        last[row.chain] = row.seq
        if row.chain in stopped:
            continue
        try:
            body = json.loads(row.body)
            at = parse_timestamp(body["at"])
        except (KeyError, TypeError, ValueError):
            stopped.add(row.chain)                  # an unreadable record is evidence: keep it and what follows
            continue
        if at < cutoff:
            plan[row.chain] = row.seq
        else:
            stopped.add(row.chain)
    capped = {chain: min(seq, last[chain] - 1) for chain, seq in plan.items()}
    return {chain: seq for chain, seq in capped.items() if seq >= first[chain]}


def prune(store: Any, retention_days: float, now: datetime | None = None) -> int:
    """Drop records whose ``at`` is more than ``retention_days`` ago; returns how many."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=positive_days(retention_days))
    pruned = 0
    for chain, through in retention_plan(store.audit_rows(), cutoff).items():
        stamp = format_timestamp(now)
        pruned += store.prune_audit(chain, through, {
            "kind": "retention", "at": stamp, "recorded_at": stamp, "pruned_chain": chain,
            "pruned_through_seq": through, "at_before": format_timestamp(cutoff),
            "retention_days": retention_days})
    return pruned
