"""Step 6 of the flow: action + risk + session assurance (+ exemptions) -> allow, step_up or deny.

Levels are ordered (aal1 < aal2 < aal3 by default; names and OIDC ``acr`` values
come from the policy). Each action has a base requirement; risk bands raise it; a
ceiling denies. A session that already holds the level within ``max_age`` is
allowed; otherwise the answer is a step-up with an RFC 9470 challenge. Policies
are YAML files (``file.py``); ``Policy()`` is the built-in default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from riskengine.policy import exemptions
from riskengine.events import Event
from riskengine.features import USER_MESSAGES
from riskengine.policy.exemptions import Exemption, FraudRate, LowValue, RateQuery, RiskAnalysis
from riskengine.profiles import UserProfile

FAILURE_MODES = ("deny", "step_up", "unavailable")
#: second factors a user may have enrolled (``/score`` ``factors``; a level's ``factors`` in the policy)
FACTORS = ("password", "totp", "webauthn", "passkey", "sms", "email", "push", "recovery_code")
MAX_FACTORS = 16
#: reason codes the decision itself adds (named lists); their user-safe sentences
DENYLISTED = "denylisted_network"
ANONYMIZER = "anonymizer_network"
LIST_USER_MESSAGES = {DENYLISTED: "Requests from this network are not accepted.",
                      ANONYMIZER: USER_MESSAGES[ANONYMIZER]}      # also the model signal's (features.py)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer to one event: API.md's ``/score`` response fields. Built by keyword only: a new
    field is one line here, in ``to_dict`` and in the response schema."""

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
    #: the name of the policy rule (``rules:``) that decided, if one did
    rule: str | None = None
    #: on a step-up: the factors that meet the level (the enrolled ones, when the request named them)
    factors: tuple[str, ...] | None = None
    #: the user could not perform the step-up: ``deny`` or the recovery action now challenged for
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "risk_score": round(self.risk_score, 6), "risk_level": self.risk_level,
                "decision": self.decision, "required_acr": self.required_acr, "max_age": self.max_age,
                "challenge": self.challenge, "reasons": [r.to_dict() for r in self.reasons],
                "exemption": self.exemption, "model_version": self.model_version,
                "policy_version": self.policy_version, "amr": list(self.amr),
                "shadow_decision": self.shadow_decision, "failure": self.failure, "rule": self.rule,
                "factors": None if self.factors is None else list(self.factors), "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Decision":
        reasons = tuple(Reason(r["code"], r["message"], r["weight"], r.get("user_message", ""))
                        for r in data.get("reasons", ()))
        factors = data.get("factors")
        return cls(**{**data, "reasons": reasons, "amr": tuple(data.get("amr", ())),
                      "factors": None if factors is None else tuple(factors)})


def _listed(reasons: tuple[Reason, ...], seen: Seen) -> tuple[Reason, ...]:
    """The reasons with what the address's lists say: on a deny list first (it decides), on an
    anonymizer list added (weight 0: it explains, the model's own signal weighs)."""
    codes = {r.code for r in reasons}
    denied, anonymous = seen.on("deny"), seen.on("anonymizer")
    if denied and DENYLISTED not in codes:
        reasons = (Reason(DENYLISTED, f"the address is on deny list {', '.join(denied)}", 1.0,
                          LIST_USER_MESSAGES[DENYLISTED]), *reasons)
    if anonymous and ANONYMIZER not in codes:
        reasons = (*reasons, Reason(ANONYMIZER, f"the address is on anonymizer list {', '.join(anonymous)}", 0.0,
                                    LIST_USER_MESSAGES[ANONYMIZER]))
    return reasons


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
    #: the second factors that can prove this level (None: the policy does not say)
    factors: tuple[str, ...] | None = None

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
    #: a step-up the user cannot perform (no enrolled factor meets it): ``deny`` or a recovery action
    fallback: str | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """What enrichment found about the event's address that rules match on: country, ASN, the
    named lists it is on and those lists' roles (``enrich/lists.py``)."""

    country: str | None = None
    asn: int | None = None
    lists: frozenset[str] = frozenset()
    roles: tuple[tuple[str, str], ...] = ()      # (list name, role) of the matched lists that have one

    def on(self, role: str) -> list[str]:
        """The matched lists with this role, by name."""
        return sorted(name for name, has in self.roles if has == role)


@dataclass(frozen=True, slots=True)
class When:
    """A rule's conditions: every one that is set must hold (an empty ``When`` matches all).

    >>> from datetime import datetime, timezone
    >>> e = Event("e1", "u1", "payment", datetime(2026, 1, 1, tzinfo=timezone.utc), "203.0.113.9",
    ...           attributes={"role": "admin"})
    >>> when = When(actions=("payment",), countries=("NO",), attributes=(("role", "admin"),))
    >>> when.matches(e, 0.2, "low", (), Seen("NO", 64500))
    True
    >>> when.matches(e, 0.2, "low", (), Seen("SE", 64500))
    False
    >>> When(tenants=("acme",)).matches(e, 0.2, "low", (), Seen()), When(tenants=("default",)).matches(
    ...     e, 0.2, "low", (), Seen())
    (False, True)
    """

    actions: tuple[str, ...] = ()
    risk_level: tuple[str, ...] = ()
    risk_at_least: float | None = None
    risk_below: float | None = None
    countries: tuple[str, ...] = ()
    asns: tuple[int, ...] = ()
    lists: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    attributes: tuple[tuple[str, Any], ...] = ()
    #: the tenant of the API key that sent the event (``Event.tenant``; ``default`` without one)
    tenants: tuple[str, ...] = ()

    def matches(self, event: Event, risk: float, risk_level: str, reasons: tuple[Reason, ...], seen: Seen) -> bool:
        """Lists match when the address is on any of them; every other list field is "one of"."""
        codes = {r.code for r in reasons}
        return ((not self.actions or event.action in self.actions)
                and (not self.risk_level or risk_level in self.risk_level)
                and (self.risk_at_least is None or risk >= self.risk_at_least)
                and (self.risk_below is None or risk < self.risk_below)
                and (not self.countries or seen.country in self.countries)
                and (not self.asns or seen.asn in self.asns)
                and (not self.lists or not seen.lists.isdisjoint(self.lists))
                and (not self.reasons or not codes.isdisjoint(self.reasons))
                and (not self.tenants or event.tenant in self.tenants)
                and all(_same(event.attributes.get(key, _MISSING), value) for key, value in self.attributes))


_MISSING = object()


def _same(got: Any, want: Any) -> bool:
    """Equality that keeps YAML's ``true`` apart from ``1`` (both are ints to Python)."""
    return type(got) is type(want) and got == want if isinstance(want, bool) or isinstance(got, bool) else got == want


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """An ordered condition of the policy file: the first that matches decides (``then``)."""

    name: str
    when: When
    then: str                                    # allow, deny or step_up
    level: str | None = None                     # step_up: the level to prove (a level name or acr)
    max_age: int | None = None


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


_AAL2_FACTORS = ("totp", "webauthn", "passkey", "push", "sms")
_DEFAULT_LEVELS = (Level("aal1"), Level("aal2", max_age=43200, factors=_AAL2_FACTORS),
                   Level("aal3", max_age=43200, factors=("webauthn",)))
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
    rules: tuple[PolicyRule, ...] = ()
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
    def fraud_rate_queries(self, event: Event) -> list[RateQuery]:
        """The fraud rates ``decide`` may ask for this event (its rule's risk-analysis exemptions)."""
        queries = []
        for name in self.rule(event.action).exemptions:
            exemption = self.exemptions[name]
            if isinstance(exemption, RiskAnalysis) and (query := exemption.query(event)) is not None:
                queries.append(query)
        return queries

    def decide(self, event: Event, risk: float, reasons: tuple[Reason, ...], model_version: str,
               profile: UserProfile | None = None, fraud_rate: FraudRate | None = None,
               seen: Seen | None = None) -> Decision:
        """The policy's answer for a computed risk. ``profile`` and ``fraud_rate`` feed the exemptions;
        ``seen`` (country, ASN, named lists) feeds the rules and the list roles.

        Order: a failed password is denied; then an address on a ``deny`` list; then the first
        matching rule; then the ceiling, the held session, the exemptions; a step-up the user cannot
        perform follows the action's ``fallback``.
        """
        seen = seen or Seen()
        rule = self.rule(event.action)
        level = self.risk_level(risk)
        reasons = _listed(reasons, seen)
        rank, max_age = self._need(rule, level)
        exemption, decided_by = None, None
        if not event.success and event.action == "login":
            verdict = "deny"                     # a failed password is never let through, nor shadowed
            return Decision(event_id=event.event_id, risk_score=risk, risk_level=level, decision=verdict,
                            required_acr=self.levels[rank].acr[0], max_age=max_age, challenge=None, reasons=reasons,
                            model_version=model_version, policy_version=self.version, amr=(AMR_RBA,))
        denied = bool(seen.on("deny"))
        matched = None if denied else self._first_rule(event, risk, level, reasons, seen)
        if denied:
            verdict = "deny"
        elif matched is not None:
            decided_by = matched.name
            if matched.then == "step_up":
                rank, max_age = self.rank(matched.level) or 0, matched.max_age
                verdict = "allow" if self._holds(event, rank, max_age) else "step_up"
            else:
                verdict = matched.then
        elif risk >= (rule.deny_at if rule.deny_at is not None else self.deny_at):
            verdict = "deny"
        elif self._holds(event, rank, max_age):
            verdict = "allow"
        else:
            verdict = "step_up"
            exempt = self._exempt(event, rule, level, profile, fraud_rate)
            if exempt is not None:
                verdict, exemption, (rank, max_age) = "allow", exempt[0], exempt[1]
        requirement = self._as_requirement(rank, max_age)
        decision = Decision(event_id=event.event_id, risk_score=risk, risk_level=level, decision=verdict,
                            required_acr=requirement.acr, max_age=requirement.max_age,
                            challenge=challenge(requirement) if verdict == "step_up" else None, reasons=reasons,
                            exemption=exemption, model_version=model_version, policy_version=self.version,
                            amr=(AMR_RBA,), rule=decided_by)
        if verdict == "step_up":
            decision = self._performable(event, rule, decision, rank)
        return self._shadowed(decision) if rule.shadow else decision

    def _first_rule(self, event: Event, risk: float, level: str, reasons: tuple[Reason, ...],
                    seen: Seen) -> PolicyRule | None:
        return next((r for r in self.rules if r.when.matches(event, risk, level, reasons, seen)), None)

    def meeting(self, rank: int) -> tuple[str, ...] | None:
        """The factors that prove the level at ``rank``: its own and those of every stronger level
        (None when no level from there up lists any)."""
        listed = [level.factors for level in self.levels[rank:] if level.factors is not None]
        if not listed:
            return None
        return tuple(dict.fromkeys(f for factors in listed for f in factors))

    def _performable(self, event: Event, rule: Rule, decision: Decision, rank: int) -> Decision:
        """A step-up names the factors that meet it; one the user cannot perform (``factors`` sent,
        none of them meets the level) follows the action's fallback: deny, or the recovery action."""
        meeting = self.meeting(rank)
        if meeting is None:
            return decision
        usable = meeting if event.factors is None else tuple(f for f in meeting if f in event.factors)
        if usable or event.factors is None or rule.fallback is None:
            return replace(decision, factors=usable)
        recovery = self.actions.get(rule.fallback) if rule.fallback != "deny" else None
        if recovery is not None:
            need = self.rank(recovery.requires) or 0
            can = self.meeting(need)
            can = None if can is None else tuple(f for f in can if f in event.factors)
            if can is None or can:
                requirement = self._as_requirement(need, recovery.max_age)
                return replace(decision, required_acr=requirement.acr, max_age=requirement.max_age,
                               challenge=challenge(requirement), factors=can, fallback=rule.fallback)
        return replace(decision, decision="deny", challenge=None, factors=(), fallback="deny")

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
        return replace(decision, decision="allow", challenge=None, amr=(), shadow_decision=decision.decision)

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
        decision = Decision(event_id=event.event_id, risk_score=1.0, risk_level="high", decision=verdict,
                            required_acr=requirement.acr, max_age=requirement.max_age,
                            challenge=challenge(requirement) if verdict == "step_up" else None,
                            reasons=(Reason(cause, message, 1.0, "We could not check this request just now."),),
                            model_version=model_version, policy_version=self.version, failure=cause)
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
