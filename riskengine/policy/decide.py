"""Step 6 of the flow: action + risk + session assurance (+ exemptions) -> allow, step_up or deny.

Levels are ordered (aal1 < aal2 < aal3 by default; names and OIDC ``acr`` values
come from the policy). Each action has a base requirement; risk bands raise it; a
ceiling denies. A session that already holds the level within ``max_age`` is
allowed; otherwise the answer is a step-up with an RFC 9470 challenge. Policies
are YAML files (``file.py``); ``Policy()`` is the built-in default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from riskengine.policy import exemptions
from riskengine.events import Event
from riskengine.policy.exemptions import Exemption, FraudRate, LowValue
from riskengine.profiles import UserProfile

FAILURE_MODES = ("deny", "step_up", "unavailable")
#: RFC 8176 authentication method reference for risk-based authentication
AMR_RBA = "rba"


@dataclass(frozen=True, slots=True)
class Requirement:
    """What an action needs now: an ``acr`` value and how fresh (seconds, or None for any age)."""

    acr: str
    max_age: int | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    """Why, twice: ``message`` for operators (may name places and amounts), ``user_message`` safe to
    show the end user (no location or account detail)."""

    code: str
    message: str
    weight: float
    user_message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "weight": round(self.weight, 4),
                "user_message": self.user_message}


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one event: API.md's ``/score`` response fields."""

    event_id: str
    risk_score: float
    risk_level: str
    decision: str
    required_acr: str
    max_age: int | None
    challenge: str | None
    reasons: tuple[Reason, ...] = ()
    exemption: str | None = None
    model_version: str = ""
    policy_version: str = ""
    #: RFC 8176 method references an identity provider may add to its tokens
    amr: tuple[str, ...] = ()
    #: audit-only mode: what the policy decided while the answer stayed ``allow``
    shadow_decision: str | None = None
    #: why no risk could be computed (the policy's failure answer, not a scored one)
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "risk_score": round(self.risk_score, 6), "risk_level": self.risk_level,
                "decision": self.decision, "required_acr": self.required_acr, "max_age": self.max_age,
                "challenge": self.challenge, "reasons": [r.to_dict() for r in self.reasons],
                "exemption": self.exemption, "model_version": self.model_version,
                "policy_version": self.policy_version, "amr": list(self.amr),
                "shadow_decision": self.shadow_decision, "failure": self.failure}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Decision":
        reasons = tuple(Reason(r["code"], r["message"], r["weight"], r.get("user_message", ""))
                        for r in data.get("reasons", ()))
        return cls(**{**data, "reasons": reasons, "amr": tuple(data.get("amr", ()))})


def challenge(requirement: Requirement) -> str:
    """The RFC 9470 step-up challenge a resource server can return as-is.

    >>> challenge(Requirement("aal2", 300))
    'Bearer error="insufficient_user_authentication", error_description="step-up required", acr_values="aal2", max_age=300'
    """
    text = (f'Bearer error="insufficient_user_authentication", error_description="step-up required", '
            f'acr_values="{requirement.acr}"')
    return text if requirement.max_age is None else f"{text}, max_age={requirement.max_age}"


@dataclass(frozen=True, slots=True)
class Level:
    """An assurance level: its name in the policy, the OIDC ``acr`` values that prove it (the first
    is the one challenges ask for) and its NIST SP 800-63B-style reauthentication limit."""

    name: str
    acr: tuple[str, ...] = ()
    max_age: int | None = None

    def __post_init__(self) -> None:
        if not self.acr:
            object.__setattr__(self, "acr", (self.name,))


@dataclass(frozen=True, slots=True)
class Rule:
    """One action: base level, freshness, what to answer when no score can be computed,
    audit-only mode, the exemptions that may lower it and an optional own ceiling."""

    requires: str
    max_age: int | None = None
    on_failure: str = "deny"
    shadow: bool = False
    exemptions: tuple[str, ...] = ()
    deny_at: float | None = None


@dataclass(frozen=True, slots=True)
class Band:
    """From ``start`` on, the requirement is at least ``at_least`` and ``steps`` levels above the
    action's base; a requirement the band raised, or one above the weakest level it leaves as is,
    must be at most ``max_age`` old."""

    name: str
    start: float
    at_least: str | None = None
    steps: int = 0
    max_age: int | None = None


_DEFAULT_LEVELS = (Level("aal1"), Level("aal2", max_age=43200), Level("aal3", max_age=43200))
_DEFAULT_ACTIONS = {"login": Rule("aal1", on_failure="step_up"), "view_dashboard": Rule("aal1", on_failure="step_up"),
                    **{a: Rule("aal2", 300) for a in ("payment", "add_payee", "change_email", "change_password",
                                                      "export_data")}}
_DEFAULT_BANDS = (Band("medium", 0.3, "aal2", 0, 0), Band("high", 0.7, "aal2", 1, 0))


@dataclass(frozen=True)
class Policy:
    """A validated policy. The defaults are ``presets/default.yaml`` (a test keeps them equal)."""

    version: str = "default@2"                  # "<name>@<version>": in every answer and audit record
    levels: tuple[Level, ...] = _DEFAULT_LEVELS
    actions: Mapping[str, Rule] = field(default_factory=lambda: dict(_DEFAULT_ACTIONS))
    default_rule: Rule = Rule("aal2", 300)
    bands: tuple[Band, ...] = _DEFAULT_BANDS
    deny_at: float = 0.97
    exemptions: Mapping[str, Exemption] = field(default_factory=dict)
    description: str = ""
    #: the smallest retention the trail needs under this policy's regulation (days), if any
    audit_min_retention_days: float | None = None
    source: str = "builtin:default"
    sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", MappingProxyType(dict(self.actions)))
        object.__setattr__(self, "exemptions", MappingProxyType(dict(self.exemptions)))
        ranks: dict[str, int] = {}
        for rank, level in enumerate(self.levels):
            for name in (level.name, *level.acr):
                ranks.setdefault(name, rank)
        object.__setattr__(self, "_ranks", ranks)
        low_value = [e for e in self.exemptions.values() if isinstance(e, LowValue)]
        object.__setattr__(self, "_low_value", low_value[0] if low_value else None)
        scope = {a for a, r in self.actions.items() if self._low_value and self._low_value.name in r.exemptions}
        object.__setattr__(self, "_low_value_actions", frozenset(scope))

    # -- reading the policy ------------------------------------------------
    @property
    def medium_at(self) -> float:
        return self._band_start("medium")

    @property
    def high_at(self) -> float:
        return self._band_start("high")

    @property
    def counts_since_sca(self) -> bool:
        """Do decisions read the profile's PSD2 counters (a low-value exemption)?"""
        return self._low_value is not None

    def _band_start(self, name: str) -> float:
        return next((b.start for b in self.bands if b.name == name), self.deny_at)

    def rank(self, acr: str | None) -> int | None:
        """Position of a level, by its name or any of its ``acr`` values (None when unknown)."""
        return self._ranks.get(acr) if acr else None

    def rule(self, action: str) -> Rule:
        return self.actions.get(action, self.default_rule)

    def risk_level(self, risk: float) -> str:
        level = "low"
        for band in self.bands:
            if risk >= band.start:
                level = band.name
        return level

    def requirement(self, action: str, risk_level: str) -> Requirement:
        return self._as_requirement(*self._need(self.rule(action), risk_level))

    def _need(self, rule: Rule, risk_level: str, base: int | None = None,
              base_max_age: int | None = None) -> tuple[int, int | None]:
        """(rank, max_age) the rule needs in this band; ``base`` overrides the rule's level (exemptions)."""
        rank = self.rank(rule.requires) if base is None else base
        max_age = rule.max_age if base is None else base_max_age
        band = next((b for b in self.bands if b.name == risk_level), None)
        if band is None:
            return rank, max_age
        raised = max(rank + band.steps, self.rank(band.at_least) if band.at_least else 0)
        raised = min(raised, len(self.levels) - 1)
        if raised <= rank:
            # an action that already needs more than the weakest level: the band still asks for a
            # fresher proof (``max_age: 0``: a step-up bound to this very action)
            fresher = [a for a in (max_age, band.max_age) if a is not None]
            return rank, (min(fresher) if fresher and rank > 0 else max_age)
        ages = [a for a in (max_age, band.max_age, self.levels[raised].max_age) if a is not None]
        return raised, min(ages) if ages else None

    def _as_requirement(self, rank: int, max_age: int | None) -> Requirement:
        return Requirement(self.levels[rank].acr[0], max_age)

    def holds(self, event: Event, requirement: Requirement) -> bool:
        """Does the session already satisfy the requirement at the event's time?"""
        return self._holds(event, self.rank(requirement.acr) or 0, requirement.max_age)

    def _holds(self, event: Event, rank: int, max_age: int | None) -> bool:
        if rank == 0:
            return True                          # the app only posts events of signed-in users
        held = self.rank(event.session.acr)
        if held is None or held < rank:
            return False
        if max_age is None:
            return True
        auth_time = event.session.auth_time
        return auth_time is not None and 0 <= (event.timestamp - auth_time).total_seconds() <= max_age

    # -- deciding ------------------------------------------------------------
    def decide(self, event: Event, risk: float, reasons: tuple[Reason, ...], model_version: str,
               profile: UserProfile | None = None, fraud_rate: FraudRate | None = None) -> Decision:
        """The policy's answer for a computed risk. ``profile`` and ``fraud_rate`` feed the exemptions."""
        rule = self.rule(event.action)
        level = self.risk_level(risk)
        rank, max_age = self._need(rule, level)
        exemption = None
        if not event.success and event.action == "login":
            verdict = "deny"                     # a failed password is never let through, nor shadowed
            return Decision(event.event_id, risk, level, verdict, self.levels[rank].acr[0], max_age, None,
                            reasons, None, model_version, self.version, (AMR_RBA,))
        if risk >= (rule.deny_at if rule.deny_at is not None else self.deny_at):
            verdict = "deny"
        elif self._holds(event, rank, max_age):
            verdict = "allow"
        else:
            verdict = "step_up"
            exempt = self._exempt(event, rule, level, profile, fraud_rate)
            if exempt is not None:
                verdict, exemption, (rank, max_age) = "allow", exempt[0], exempt[1]
        requirement = self._as_requirement(rank, max_age)
        decision = Decision(event.event_id, risk, level, verdict, requirement.acr, requirement.max_age,
                            challenge(requirement) if verdict == "step_up" else None, reasons, exemption,
                            model_version, self.version, (AMR_RBA,))
        return self._shadowed(decision) if rule.shadow else decision

    def _exempt(self, event: Event, rule: Rule, level: str, profile: UserProfile | None,
                fraud_rate: FraudRate | None) -> tuple[str, tuple[int, int | None]] | None:
        """The first of the rule's exemptions that applies and lets the session through, if any."""
        for name in rule.exemptions:
            exemption = self.exemptions[name]
            if isinstance(exemption, LowValue):
                counters = self._since_sca(profile, event) if profile is not None else (0.0, 0)
                applies = profile is not None and exemption.applies(event, level, counters)
            else:
                applies = exemption.applies(event, level, fraud_rate)
            if applies:
                need = self._need(rule, level, base=0, base_max_age=None)
                if self._holds(event, *need):
                    return name, need
        return None

    def _shadowed(self, decision: Decision) -> Decision:
        """Audit-only: keep what was decided, answer allow, claim no risk analysis took part."""
        return Decision(decision.event_id, decision.risk_score, decision.risk_level, "allow", decision.required_acr,
                        decision.max_age, None, decision.reasons, decision.exemption, decision.model_version,
                        decision.policy_version, (), decision.decision, decision.failure)

    def on_failure(self, event: Event, cause: str, message: str, model_version: str = "") -> Decision | None:
        """The answer when no risk can be computed: the action's ``on_failure`` (None means answer 503).

        The requirement is the one the worst band below the ceiling would ask for, and a
        step-up always challenges: without a score, a held session proves nothing new.
        """
        rule = self.rule(event.action)
        if rule.on_failure == "unavailable":
            return None
        worst = self.bands[-1].name if self.bands else "low"
        rank, max_age = self._need(rule, worst)
        requirement = self._as_requirement(rank, max_age)
        verdict = "deny" if rule.on_failure == "deny" or (not event.success and event.action == "login") else "step_up"
        decision = Decision(event.event_id, 1.0, "high", verdict, requirement.acr, requirement.max_age,
                            challenge(requirement) if verdict == "step_up" else None,
                            (Reason(cause, message, 1.0, "We could not check this request just now."),), None,
                            model_version, self.version, (), None, cause)
        return self._shadowed(decision) if rule.shadow else decision

    # -- PSD2 counters -------------------------------------------------------
    def _since_sca(self, profile: UserProfile, event: Event) -> tuple[float, int]:
        assert self._low_value is not None
        return exemptions.since_sca(profile, exemptions.session_sca_at(event, self._low_value.sca_level, self.rank))

    def after(self, profile: UserProfile, event: Event, decision: Decision) -> UserProfile | None:
        """The profile's PSD2 counters after this answer (None: unchanged).

        A session that passed SCA since the last one resets them; a payment in the low-value
        exemption's scope answered ``allow`` without SCA for it adds to them.
        """
        low_value = self._low_value
        if low_value is None:
            return None
        new = None
        sca_at = exemptions.session_sca_at(event, low_value.sca_level, self.rank)
        if exemptions.resets(profile, sca_at):
            new = exemptions.sca_passed(profile, sca_at)
        if event.action in self._low_value_actions and decision.decision == "allow":
            rank, max_age = self._need(self.rule(event.action), decision.risk_level)
            if rank >= low_value.sca_level and self._holds(event, rank, max_age) and decision.exemption is None \
                    and decision.shadow_decision in (None, "allow"):
                return new                          # SCA was applied for this very payment
            new = exemptions.paid_without_sca(new or profile, event.amount or 0.0, event.ts)
        return new

    def after_step_up(self, profile: UserProfile, required_acr: str, at: float) -> UserProfile | None:
        """A passed step-up at an SCA-grade level is an SCA: the counters start again."""
        low_value = self._low_value
        rank = self.rank(required_acr)
        if low_value is None or rank is None or rank < low_value.sca_level:
            return None
        return exemptions.sca_passed(profile, at)
