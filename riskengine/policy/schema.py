"""The policy file's shape: typed pydantic models (strict, unknown fields refused) and the JSON
Schema editors validate against (``riskengine policy schema``, ``policy.schema.json``).

This layer checks each value on its own: type, range, finiteness (``deny_at: .nan`` would turn
deny off). What needs the whole file (level names used before they are defined, band order,
exemptions an action lists) is checked when ``file.py`` builds the ``Policy``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from riskengine.enrich.lists import LIST_NAME
from riskengine.features import USER_MESSAGES
from riskengine.policy.decide import ANONYMIZER, DENYLISTED, FACTORS, FAILURE_MODES

SCHEMA_FILE = Path(__file__).parent / "policy.schema.json"
RISK_LEVELS = ("low", "medium", "high")
VERDICTS = ("allow", "deny", "step_up")
#: every reason code an answer may carry: the model's, the lists', the failure answer's
REASON_CODES = tuple(dict.fromkeys((*USER_MESSAGES, DENYLISTED, ANONYMIZER, "score_unavailable")))
NAME = r"^[A-Za-z0-9_.:\-]{1,64}$"
_SHORT = r"^[A-Za-z0-9_.\-]{1,64}$"


def show(value: Any, contents: bool = False) -> str:
    """A value as the error message shows it, in YAML's terms; lists and mappings by kind unless
    their ``contents`` are the point (a list of names with a wrong one).

    >>> show([1]), show([1], contents=True), show(float("nan")), show("aal4"), show(date(2026, 3, 1))
    ('a list', '[1]', '.nan', "'aal4'", '2026-03-01')
    """
    if isinstance(value, (list, dict)) and not contents:
        return "a list" if isinstance(value, list) else "a mapping"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(reason: str, value: Any, contents: bool = False) -> PydanticCustomError:
    return PydanticCustomError("policy", "{reason}, got {value}", {"reason": reason, "value": show(value, contents)})


def _number(low: float | None = None, high: float | None = None) -> Callable[[Any], float]:
    bounds = (f"between {low} and {high}" if low is not None and high is not None
              else f"at least {low}" if low is not None else f"at most {high}" if high is not None else "")

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail("must be a number", value)
        if not math.isfinite(value):
            raise _fail("must be a finite number", value)
        if (low is not None and value < low) or (high is not None and value > high):
            raise _fail(f"must be {bounds}", value)
        return float(value)
    return check


def Number(low: float | None = None, high: float | None = None) -> Any:   # noqa: N802 - reads as a type
    """A finite number within [low, high]; one definition for the check and for the JSON Schema."""
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False), BeforeValidator(_number(low, high))]


def _whole(low: int, what: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(f"must be {what} (an integer)", value)
        if value < low:
            raise _fail(f"must be {low} or more", value)
        return value
    return check


def _text(pattern: str, reason: str) -> Callable[[Any], str]:
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.match(value):
            raise _fail(reason, value)
        return value
    return check


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise _fail(f"must be one of {', '.join(options)}", value)
        return value
    return check


def _level(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("policy", "expected a level name, got {value}", {"value": show(value)})
    return value


def _scalar(value: Any) -> str | int | float | bool:
    if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail("must be a text, a number or true/false", value)
    return value


def _country(value: Any) -> str:
    if isinstance(value, bool):                  # YAML 1.1 reads NO (Norway), ON, Y as true/false
        raise _fail("must be an ISO 3166 country code; quote it ('NO'), YAML reads it as true/false", value)
    return _text(r"^[A-Z]{2}$", "must be an ISO 3166 country code such as 'SE'")(value)


def _tenant(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not value.isprintable():
        raise _fail("must be a tenant name as API keys give it (1 to 64 printable characters)", value)
    return value


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail("must be true or false", value)
    return value


def _acr(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(a, str) and a for a in values):
        raise _fail("must be an acr value or a list of them", value, contents=True)
    return values


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail("must be a list of names", value, contents=True)
    return value


def _risk_levels(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v in RISK_LEVELS for v in value):
        raise _fail(f"must be a list of {', '.join(RISK_LEVELS)}", value, contents=True)
    return value


def _version(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.match(_SHORT, str(value)):
        raise _fail("must be a number or a short text without '@' or spaces", value)
    return value


def _rate(value: Any) -> float:
    share = value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1]) / 100
        except ValueError:
            share = None
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:   # NaN fails too
        raise _fail("must be a share (0.0013) or a percentage ('0.13%') between 0 and 100%", value)
    return float(share)


Seconds = Annotated[int, Field(ge=0), BeforeValidator(_whole(0, "whole seconds"))]
Count = Annotated[int, Field(ge=1), BeforeValidator(_whole(1, "a whole number of payments"))]
Steps = Annotated[int, Field(ge=0), BeforeValidator(_whole(0, "a whole number of levels"))]
Bool = Annotated[bool, BeforeValidator(_strict_bool)]
LevelRef = Annotated[str, Field(pattern=NAME), BeforeValidator(_level)]
Name = Annotated[str, Field(pattern=NAME),
                 BeforeValidator(_text(NAME, "names are 1-64 letters, digits, '_', '.', ':' or '-'"))]
PolicyName = Annotated[str, Field(pattern=_SHORT),
                       BeforeValidator(_text(_SHORT, "must be 1-64 letters, digits, '_', '.' or '-'"))]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"),
                     BeforeValidator(_text(r"^[A-Z]{3}$", "must be an ISO 4217 code such as EUR"))]
FailureMode = Annotated[str, WithJsonSchema({"enum": list(FAILURE_MODES)}), BeforeValidator(_choice(*FAILURE_MODES))]
RiskLevels = Annotated[list[Literal["low", "medium", "high"]], Field(min_length=1), BeforeValidator(_risk_levels)]
Acr = Annotated[list[str], WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1},
                                                     {"type": "array", "items": {"type": "string", "minLength": 1},
                                                      "minItems": 1}]}), BeforeValidator(_acr)]
Names = Annotated[list[str], WithJsonSchema({"type": "array", "items": {"type": "string"}}), BeforeValidator(_names)]
Rate = Annotated[float, WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                                                  {"type": "string", "pattern": r"^\s*[0-9.]+\s*%\s*$"}]}),
                 BeforeValidator(_rate)]
Factor = Annotated[str, WithJsonSchema({"enum": list(FACTORS)}), BeforeValidator(_choice(*FACTORS))]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$"), BeforeValidator(_country)]
Asn = Annotated[int, Field(ge=0), BeforeValidator(_whole(0, "an AS number"))]
Tenant = Annotated[str, Field(min_length=1, max_length=64), BeforeValidator(_tenant)]
ListName = Annotated[str, Field(pattern=LIST_NAME.pattern), BeforeValidator(_text(
    LIST_NAME.pattern, "must be a list name (a file stem in the lists folder: lowercase, digits, '-', '_', '.')"))]
# the JSON Schema says "a code" only: the codes grow with the features, the shipped schema file need not
ReasonCode = Annotated[str, WithJsonSchema({"type": "string", "pattern": r"^[a-z0-9_]+$"}),
                      BeforeValidator(_choice(*REASON_CODES))]
Verdict = Annotated[str, WithJsonSchema({"enum": list(VERDICTS)}), BeforeValidator(_choice(*VERDICTS))]
Scalar = Annotated[Union[str, int, float, bool], WithJsonSchema({"type": ["string", "number", "boolean"]}),
                   BeforeValidator(_scalar)]
Version = Annotated[Union[int, str], WithJsonSchema({"anyOf": [{"type": "integer"},
                                                               {"type": "string", "pattern": _SHORT}]}),
                    BeforeValidator(_version)]


class _Spec(BaseModel):
    """Strict and closed: a misspelt field is an error naming the fields that exist."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=False)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _fail("must be a mapping", data)
        known = [info.alias or name for name, info in cls.model_fields.items()]
        unknown = [str(key) for key in data if key not in known]
        if unknown:
            raise PydanticCustomError("unknown_field", "unknown field; known: {known}",
                                      {"known": ", ".join(known), "fields": unknown})
        return data


class LevelSpec(_Spec):
    name: Annotated[str, Field(pattern=NAME), BeforeValidator(_text(NAME, "must be a short name such as aal2"))]
    acr: Acr | None = None
    max_age: Seconds | None = None
    factors: Annotated[list[Factor], Field(min_length=1)] | None = None


class BandSpec(_Spec):
    from_: Number(0.0, 1.0) = Field(alias="from")
    at_least: LevelRef | None = None
    raise_: Steps = Field(0, alias="raise")
    max_age: Seconds | None = None


class Bands(_Spec):
    medium: BandSpec | None = None
    high: BandSpec | None = None


class RuleSpec(_Spec):
    requires: LevelRef
    max_age: Seconds | None = None
    on_failure: FailureMode | None = None
    shadow: Bool | None = None
    exemptions: Names = []
    deny_at: Number(0.0, 1.0) | None = None
    fallback: Name | None = None


class LowValueSpec(_Spec):
    type: Literal["low_value"]
    currency: Currency = "EUR"
    max_amount: Number(low=0.0) = 30.0
    max_cumulative_amount: Number(low=0.0) | None = 100.0
    max_count: Count | None = 5
    sca_level: LevelRef | None = None
    risk_levels: RiskLevels = ["low"]


class ReferenceRate(_Spec):
    fraud_rate: Rate
    up_to: Number(low=0.0)


class PaymentType(_Spec):
    actions: Annotated[list[Name], Field(min_length=1)]
    reference_rates: Annotated[list[ReferenceRate], Field(min_length=1)]


class RiskAnalysisSpec(_Spec):
    type: Literal["transaction_risk_analysis"]
    currency: Currency = "EUR"
    window_days: Number(low=1.0) = 90.0
    risk_levels: RiskLevels = ["low"]
    payment_types: Annotated[dict[Name, PaymentType], Field(min_length=1,
                                                            json_schema_extra={"additionalProperties": False})]


class WhenSpec(_Spec):
    """All that are set must hold; a list field holds when the event has any of its values."""

    actions: Annotated[list[Name], Field(min_length=1)] | None = None
    risk_level: RiskLevels | None = None
    risk_at_least: Number(0.0, 1.0) | None = None
    risk_below: Number(0.0, 1.0) | None = None
    countries: Annotated[list[Country], Field(min_length=1)] | None = None
    asns: Annotated[list[Asn], Field(min_length=1)] | None = None
    lists: Annotated[list[ListName], Field(min_length=1)] | None = None
    reasons: Annotated[list[ReasonCode], Field(min_length=1)] | None = None
    attributes: Annotated[dict[Annotated[str, Field(min_length=1, max_length=64)], Scalar],
                          Field(min_length=1)] | None = None
    tenants: Annotated[list[Tenant], Field(min_length=1)] | None = None


class ThenSpec(_Spec):
    decision: Verdict
    level: LevelRef | None = None
    max_age: Seconds | None = None


class PolicyRuleSpec(_Spec):
    name: Name
    when: WhenSpec = WhenSpec()
    then: ThenSpec


ExemptionSpec = Annotated[Union[LowValueSpec, RiskAnalysisSpec], Field(discriminator="type")]
EXEMPTION_TYPES = ("low_value", "transaction_risk_analysis")


class AuditSpec(_Spec):
    min_retention_days: Number(low=1) | None = None


class PolicyDocument(_Spec):
    """A whole policy file (see README "Policies and presets")."""

    name: PolicyName = Field(description="the policy's name: answers and audit records carry name@version")
    version: Version = Field(description="bump with every change, so answers made under each are told apart")
    description: Annotated[str, BeforeValidator(_text(r"(?s).*", "must be a string"))] = ""
    levels: Annotated[list[LevelSpec], Field(min_length=1)] | None = Field(
        None, description="assurance levels, weakest first (default: aal1, aal2, aal3)")
    bands: Bands | None = Field(None, description="risk bands that raise an action's requirement")
    deny_at: Number(0.0, 1.0) = Field(1.0, description="risk at or above which every action is denied")
    shadow: Bool = Field(False, description="audit-only: decide and record, but answer allow")
    on_failure: FailureMode | None = Field(None, description="answer when no risk can be computed")
    default_action: RuleSpec | None = Field(None, description="the rule for actions not listed under actions")
    actions: dict[Name, RuleSpec] = Field({}, description="one rule per action name",
                                          json_schema_extra={"additionalProperties": False})
    exemptions: dict[Name, ExemptionSpec] = Field({}, description="regulatory exemptions actions may list",
                                                  json_schema_extra={"additionalProperties": False})
    rules: list[PolicyRuleSpec] = Field([], description="ordered conditions: the first that matches decides")
    audit: AuditSpec = AuditSpec()


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a policy file, as ``policy.schema.json`` holds it."""
    schema = PolicyDocument.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "riskengine policy", **schema}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
