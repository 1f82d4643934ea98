"""Wire schemas of API.md: strict, ``extra="forbid"``, apart from the core types."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema, field_validator

from riskengine.engine import OUTCOMES
from riskengine.events import DEFAULT_TENANT, Event, event_from_request, new_event_id, tenant_key, untenanted
from riskengine.inputs import (ATTRIBUTE_VALUE_SCHEMA, DEFAULT_MAX_CLOCK_SKEW_S, TEXT_PATTERN, Amount,
                               AttributeValueIn, Id, InputError, Text, Timestamp, normalize_ip)
from riskengine.policy.decide import FACTORS, MAX_FACTORS, Decision

MAX_ATTRIBUTES = 32
#: each given as json_schema_extra too, or the document would show Text's own pattern in their place
ACTION_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
#: written out: pydantic would put the key rule in ``patternProperties``, which leaves other keys unchecked
ATTRIBUTES_SCHEMA = {"type": "object", "maxProperties": MAX_ATTRIBUTES, "additionalProperties": ATTRIBUTE_VALUE_SCHEMA,
                     "propertyNames": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": TEXT_PATTERN}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SessionIn(_Strict):
    acr: Annotated[Id, Field(max_length=64)] | None = None
    auth_time: Timestamp | None = None
    id: Annotated[Id, Field(max_length=128)] | None = None


class ScoreRequest(_Strict):
    """API.md's ``/score`` body. Its fields map onto ``Event``'s by name (``to_event``)."""

    event_id: Annotated[Id, Field(max_length=128)] | None = None
    user_id: Annotated[Id, Field(max_length=256)]
    action: Annotated[Id, Field(max_length=64, pattern=ACTION_PATTERN, json_schema_extra={"pattern": ACTION_PATTERN})]
    timestamp: Timestamp | None = None
    ip: Annotated[Id, Field(min_length=2, max_length=64, json_schema_extra={
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})]
    user_agent: Annotated[Text, Field(max_length=1024)] | None = None
    device_id: Annotated[Text, Field(max_length=256)] | None = None
    success: StrictBool = True
    amount: Amount | None = None
    currency: Annotated[Id, Field(pattern=CURRENCY_PATTERN, json_schema_extra={"pattern": CURRENCY_PATTERN})] | None = None
    payee_id: Annotated[Text, Field(max_length=256)] | None = None
    session: SessionIn | None = None
    attributes: Annotated[dict[Annotated[Id, Field(max_length=64)], AttributeValueIn],
                          Field(max_length=MAX_ATTRIBUTES), WithJsonSchema(ATTRIBUTES_SCHEMA)] | None = None
    factors: Annotated[list[Literal[FACTORS]], Field(max_length=MAX_FACTORS)] | None = None  # type: ignore[valid-type]

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return normalize_ip(value)
        except ValueError:
            raise ValueError("not an IPv4 or IPv6 address") from None

    def to_event(self, received_at: datetime, tenant: str = DEFAULT_TENANT, *,
                 max_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S) -> Event:
        """The core event (field by field, by name), its ids made the tenant's own (``tenant_key``); a
        time more than ``max_skew_s`` ahead of ``received_at`` (the server's clock) is a 422 naming its
        field, like every other bad field."""
        body = self.model_dump(exclude_none=True)
        body["event_id"] = tenant_key(tenant, self.event_id or new_event_id())
        body["user_id"] = tenant_key(tenant, self.user_id)
        try:
            return event_from_request(body, received_at, max_skew_s)
        except InputError as exc:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", *exc.field.split(".")),
                                           "msg": str(exc), "input": None}]) from None


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
    rule: str | None = None                      # the policy rule (rules[].name) that decided, if one did
    factors: list[str] | None = None             # step-up: the (enrolled) factors that meet the level
    fallback: str | None = None                  # the user could not step up: "deny" or the recovery action

    @classmethod
    def from_decision(cls, decision: Decision, tenant: str = DEFAULT_TENANT) -> "ScoreResponse":
        """The one place a Decision becomes an answer (with the event id as the client sent it)."""
        answer = decision.to_dict()
        return cls(**{**answer, "event_id": untenanted(tenant, answer["event_id"])})


class FeedbackRequest(_Strict):
    event_id: Annotated[Id, Field(max_length=128)]
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
    durability: dict[str, str] | None = None   # Redis: level, the guarantee a 200 carries, the settings read
