"""Wire schemas of API.md: strict, ``extra="forbid"``, apart from the core types."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from riskengine.engine import OUTCOMES
from riskengine.events import (DEFAULT_TENANT, Event, SessionInfo, new_event_id, normalize_ip, parse_timestamp,
                               tenant_key, untenanted)
from riskengine.policy.decide import Decision

MAX_ATTRIBUTES = 32
AttributeValue = Annotated[StrictStr, Field(max_length=1024)] | StrictBool | StrictInt | StrictFloat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _rfc3339(value: str | None) -> str | None:
    if value is not None:
        parse_timestamp(value)
    return value


class SessionIn(_Strict):
    acr: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    auth_time: str | None = None

    _check_auth_time = field_validator("auth_time")(_rfc3339)


class ScoreRequest(_Strict):
    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    user_id: Annotated[str, Field(min_length=1, max_length=256)]
    action: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    timestamp: str | None = None
    ip: Annotated[str, Field(min_length=2, max_length=64)]
    user_agent: Annotated[str, Field(max_length=1024)] | None = None
    device_id: Annotated[str, Field(max_length=256)] | None = None
    success: bool = True
    amount: Annotated[float, Field(ge=0)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    payee_id: Annotated[str, Field(max_length=256)] | None = None
    session: SessionIn | None = None
    attributes: dict[Annotated[str, Field(min_length=1, max_length=64)], AttributeValue] | None = None

    _check_timestamp = field_validator("timestamp")(_rfc3339)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return normalize_ip(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None

    @field_validator("amount")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict | None) -> dict | None:
        if value is not None:
            if len(value) > MAX_ATTRIBUTES:
                raise ValueError(f"at most {MAX_ATTRIBUTES} keys")
            if any(isinstance(v, float) and not math.isfinite(v) for v in value.values()):
                raise ValueError("numbers must be finite")
        return value

    def to_event(self, received_at: datetime, tenant: str = DEFAULT_TENANT) -> Event:
        """The core event, its ids made the tenant's own (``tenant_key``)."""
        session = self.session or SessionIn()
        return Event(
            event_id=tenant_key(tenant, self.event_id or new_event_id()),
            user_id=tenant_key(tenant, self.user_id),
            action=self.action,
            timestamp=parse_timestamp(self.timestamp) if self.timestamp else received_at,
            ip=self.ip,
            user_agent=self.user_agent or "",
            device_id=self.device_id,
            success=self.success,
            amount=float(self.amount) if self.amount is not None else None,
            currency=self.currency,
            payee_id=self.payee_id,
            session=SessionInfo(session.acr, parse_timestamp(session.auth_time) if session.auth_time else None),
            attributes=dict(self.attributes or {}),
        )


class ReasonOut(BaseModel):
    code: str
    message: str                                 # for operators: may name places, networks, amounts
    weight: float
    user_message: str = ""                       # addition to API.md v1: safe to show the end user


class ScoreResponse(BaseModel):
    event_id: str
    risk_score: float
    risk_level: Literal["low", "medium", "high"]
    decision: Literal["allow", "step_up", "deny"]
    required_acr: str
    max_age: int | None
    challenge: str | None
    reasons: list[ReasonOut]
    exemption: str | None
    model_version: str
    policy_version: str
    # additions to API.md v1 (new optional fields; older clients ignore them)
    amr: list[str] = []                          # RFC 8176 method references: "rba" when risk analysis decided
    shadow_decision: Literal["allow", "step_up", "deny"] | None = None   # audit-only mode: what would have been
    failure: str | None = None                   # set when no risk could be computed: the policy's on_failure answer

    @classmethod
    def from_decision(cls, decision: Decision, tenant: str = DEFAULT_TENANT) -> "ScoreResponse":
        """The one place a Decision becomes an answer (with the event id as the client sent it)."""
        answer = decision.to_dict()
        return cls(**{**answer, "event_id": untenanted(tenant, answer["event_id"])})


class FeedbackRequest(_Strict):
    event_id: Annotated[str, Field(min_length=1, max_length=128)]
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]


class FeedbackResponse(BaseModel):
    event_id: str
    recorded: bool


class HealthResponse(BaseModel):
    status: str
    model_version: str
    policy_version: str
    model_error: str | None = None     # a refused model (checksum, features, versions): the old one serves
    policy_error: str | None = None    # a refused policy file (names file, field, reason): the old one serves
