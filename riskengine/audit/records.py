"""What the audit trail says about users: pseudonyms under each user's own secret, and the body of
each record. Erasing a user's secret unlinks every record about them while the chain stays valid.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from riskengine.audit.chain import KeyedHash, pseudonym
from riskengine.events import DEFAULT_TENANT, Event, format_timestamp, tenant_of

if TYPE_CHECKING:
    from riskengine.stores import ProfileStore

_USER_KEYS_KEPT = 100_000


class Pseudonyms:
    """Keyed names for users: ``user_key`` indexes per-user secrets and per-IP distinct-user counts;
    ``head`` is who and when of an audit record, as pseudonyms under the user's secret."""

    def __init__(self, key: bytes, store: "ProfileStore") -> None:
        self._key, self._store = KeyedHash(key), store
        self._user_keys: dict[str, str] = {}

    def user_key(self, user_id: str) -> str:
        """Keyed hash of a user id (a pure function of it: the cache is only a cache)."""
        key = self._user_keys.get(user_id)
        if key is None:
            if len(self._user_keys) >= _USER_KEYS_KEPT:
                self._user_keys.clear()
            key = self._user_keys[user_id] = self._key.hex(user_id.encode())[:32]
        return key

    def secret(self, user_id: str, create: bool = True) -> bytes | None:
        return self._store.user_secret(user_id, self.user_key(user_id), create=create)

    def subject(self, user_id: str) -> str:
        return pseudonym(self.secret(user_id), user_id)

    def head(self, user_id: str, client: str, at: datetime, event_id: str | None = None) -> dict[str, Any]:
        """Who and when. ``event_ref`` stands for the client's event id, which may carry the user id."""
        secret = self.secret(user_id)
        head = {"at": format_timestamp(at), "recorded_at": format_timestamp(now()), "client": client,
                "subject": pseudonym(secret, user_id)}
        if (tenant := tenant_of(user_id)) != DEFAULT_TENANT:
            head["tenant"] = tenant               # the default tenant's records read as they always did
        if event_id is not None:
            head["event_ref"] = event_ref(secret, event_id)
        return head


def event_ref(secret: bytes | None, event_id: str) -> str:
    """The audit trail's name for a client event id, keyed by the user's secret."""
    return pseudonym(secret or b"", f"event:{event_id}")


def score_record(event: Event, decision: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The trail's record of one scored event: the decision and why, never the request's values."""
    audit = {"kind": "score", **head, "action": event.action, "risk_score": decision["risk_score"],
             "risk_level": decision["risk_level"], "reasons": [r["code"] for r in decision["reasons"]],
             "decision": decision["decision"], "required_acr": decision["required_acr"],
             "max_age": decision["max_age"], "exemption": decision["exemption"], "amr": decision["amr"],
             "shadowed": decision["shadow_decision"] is not None,
             "model_version": decision["model_version"], "policy_version": decision["policy_version"]}
    if decision["shadow_decision"] is not None:
        audit["shadow_decision"] = decision["shadow_decision"]
    for name in ("failure", "rule", "fallback"):     # the policy rule that decided; a step-up fallback
        if decision[name] is not None:
            audit[name] = decision[name]
    return audit


def change_record(kind: str, policy_version: str, details: dict[str, Any]) -> dict[str, Any]:
    """A model, policy or other configuration change."""
    at = format_timestamp(now())
    return {"policy_version": policy_version, **details, "kind": kind, "at": at, "recorded_at": at}


def now() -> datetime:
    return datetime.now(timezone.utc)
