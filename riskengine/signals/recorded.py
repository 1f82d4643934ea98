"""What the engine tells its listeners once an event or its label is durably recorded (no I/O, no deps)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the engine durably recorded: a decision (``outcome`` None) or a label for one."""

    event_id: str
    user_id: str
    action: str
    at: str                                   # RFC 3339 event time
    decision: str
    risk_level: str
    risk_score: float
    reasons: tuple[str, ...] = ()
    outcome: str | None = None
