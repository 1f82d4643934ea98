"""Step 6 of the flow: action + risk + session assurance -> allow, step_up or deny.

Levels are ordered (aal1 < aal2 < aal3). Each action has a base requirement;
the risk band raises it; the top band denies. A session that already holds the
level within ``max_age`` is allowed; otherwise the answer is a step-up carrying
an RFC 9470 ``WWW-Authenticate`` challenge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from riskengine.events import Event


@dataclass(frozen=True, slots=True)
class Requirement:
    acr: str
    max_age: int | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "weight": round(self.weight, 4)}


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one event, exactly the fields of API.md's ``/score`` response."""

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

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "risk_score": round(self.risk_score, 6), "risk_level": self.risk_level,
                "decision": self.decision, "required_acr": self.required_acr, "max_age": self.max_age,
                "challenge": self.challenge, "reasons": [r.to_dict() for r in self.reasons],
                "exemption": self.exemption, "model_version": self.model_version,
                "policy_version": self.policy_version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Decision":
        reasons = tuple(Reason(r["code"], r["message"], r["weight"]) for r in data.get("reasons", ()))
        return cls(**{**data, "reasons": reasons})


def challenge(requirement: Requirement) -> str:
    """The RFC 9470 step-up challenge a resource server can return as-is.

    >>> challenge(Requirement("aal2", 300))
    'Bearer error="insufficient_user_authentication", error_description="step-up required", acr_values="aal2", max_age=300'
    """
    text = (f'Bearer error="insufficient_user_authentication", error_description="step-up required", '
            f'acr_values="{requirement.acr}"')
    return text if requirement.max_age is None else f"{text}, max_age={requirement.max_age}"


@dataclass(frozen=True)
class Policy:
    """The first, built-in policy; the YAML policy engine replaces its constants, not its shape."""

    version: str = "default@1"
    levels: tuple[str, ...] = ("aal1", "aal2", "aal3")
    actions: dict[str, Requirement] = field(default_factory=lambda: {
        "login": Requirement("aal1"),
        "view_dashboard": Requirement("aal1"),
        "payment": Requirement("aal2", 300),
        "add_payee": Requirement("aal2", 300),
        "change_email": Requirement("aal2", 300),
        "change_password": Requirement("aal2", 300),
        "export_data": Requirement("aal2", 300),
    })
    default_action: Requirement = Requirement("aal2", 300)
    #: upper bounds of the low and medium bands; at or above ``deny_at`` the answer is deny
    medium_at: float = 0.3
    high_at: float = 0.7
    deny_at: float = 0.97
    #: a requirement raised by risk must be proven freshly
    raised_max_age: int = 300

    def risk_level(self, risk: float) -> str:
        return "low" if risk < self.medium_at else "medium" if risk < self.high_at else "high"

    def requirement(self, action: str, risk_level: str) -> Requirement:
        base = self.actions.get(action, self.default_action)
        rank = self.levels.index(base.acr)
        raised = {"low": rank, "medium": max(rank, 1), "high": max(rank + 1, 1)}[risk_level]
        raised = min(raised, len(self.levels) - 1)
        if raised == rank:
            return base
        return Requirement(self.levels[raised], min(base.max_age or self.raised_max_age, self.raised_max_age))

    def holds(self, event: Event, requirement: Requirement) -> bool:
        """Does the session already satisfy the requirement at the event's time?"""
        if requirement.acr == self.levels[0]:
            return True                          # the app only posts events of signed-in users
        held = event.session.acr
        if held not in self.levels or self.levels.index(held) < self.levels.index(requirement.acr):
            return False
        if requirement.max_age is None:
            return True
        auth_time = event.session.auth_time
        return auth_time is not None and 0 <= (event.timestamp - auth_time).total_seconds() <= requirement.max_age

    def decide(self, event: Event, risk: float, reasons: tuple[Reason, ...], model_version: str) -> Decision:
        level = self.risk_level(risk)
        requirement = self.requirement(event.action, level)
        if risk >= self.deny_at or (event.action == "login" and not event.success):
            verdict = "deny"                     # a failed password is never let through
        elif self.holds(event, requirement):
            verdict = "allow"
        else:
            verdict = "step_up"
        return Decision(event.event_id, risk, level, verdict, requirement.acr, requirement.max_age,
                        challenge(requirement) if verdict == "step_up" else None, reasons, None,
                        model_version, self.version)
