"""From a recorded decision or label to the messages receivers asked for (webhooks, CAEP SETs).

``on_recorded`` runs where the engine recorded the event (the event loop for ``/score``): it only
filters and queues; subjects, bodies and signatures are made on the outbox's thread.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from riskengine.signals import caep, webhooks
from riskengine.signals.config import SignalsConfig
from riskengine.signals.outbox import Message, Outbox
from riskengine.signals.recorded import Recorded

# CAEP credential types for the actions that change a credential (change_email changes none)
CREDENTIALS = {"change_password": "password", "change_phone": "phone-sms", "change_mfa": "app"}
_LEVELS_KEPT = 100_000


class Transmitter:
    def __init__(self, config: SignalsConfig, subject_of: Callable[[str], str], outbox: Outbox | None = None) -> None:
        self.config, self.subject_of = config, subject_of
        self.outbox = outbox or Outbox()
        self._secrets = [hook.secret() for hook in config.webhooks]
        self._key = caep.load_key(config.caep.key_file) if config.caep else None
        self._levels: OrderedDict[str, str] = OrderedDict()     # last risk level seen per user, this process

    def close(self) -> None:
        self.outbox.close()

    def jwks(self) -> dict[str, Any] | None:
        return caep.jwks(self._key) if self._key is not None else None

    def configuration(self) -> dict[str, Any] | None:
        return caep.configuration(self.config.caep.issuer) if self.config.caep else None

    def on_recorded(self, notice: Recorded) -> None:
        kind = notice.outcome or notice.decision
        for hook, secret in zip(self.config.webhooks, self._secrets):
            if kind in hook.events:
                self.outbox.put(Message(str(hook.url), self._webhook(notice, secret), hook.max_attempts, "webhook"))
        if self.config.caep is not None:
            for event_type, payload in self._caep_events(notice):
                for receiver in self.config.caep.receivers:
                    self.outbox.put(Message(str(receiver.url), self._set(notice, receiver.audience, event_type, payload),
                                            receiver.max_attempts, "caep"))

    def _subject(self, user_id: str) -> str:
        return user_id if self.config.caep is not None and self.config.caep.subject == "user_id" \
            else self.subject_of(user_id)

    def _webhook(self, notice: Recorded, secret: bytes) -> Callable[[], tuple[bytes, dict[str, str]]]:
        def build() -> tuple[bytes, dict[str, str]]:
            body = {"type": "feedback" if notice.outcome else "decision", "event_id": notice.event_id,
                    "subject": self._subject(notice.user_id), "action": notice.action, "at": notice.at,
                    "decision": notice.decision, "risk_level": notice.risk_level,
                    "risk_score": notice.risk_score, "reasons": list(notice.reasons), "outcome": notice.outcome}
            raw = orjson.dumps(body)
            return raw, webhooks.sign(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), raw)
        return build

    def _caep_events(self, notice: Recorded) -> list[tuple[str, dict[str, Any]]]:
        events = []
        stamp = int(time.time())
        if notice.outcome is None:
            previous = self._levels.pop(notice.user_id, None)
            self._levels[notice.user_id] = notice.risk_level
            if len(self._levels) > _LEVELS_KEPT:
                self._levels.popitem(last=False)
            if notice.risk_level != (previous or "low"):
                payload = {"principal": "USER", "current_level": notice.risk_level.upper(),
                           "risk_reason": ",".join(notice.reasons) or notice.decision, "event_timestamp": stamp}
                if previous is not None:
                    payload["previous_level"] = previous.upper()
                events.append((caep.RISK_LEVEL_CHANGE, payload))
        credential = CREDENTIALS.get(notice.action)
        changed = notice.outcome == "step_up_passed" or (notice.outcome is None and notice.decision == "allow")
        if credential is not None and changed:
            events.append((caep.CREDENTIAL_CHANGE, {"credential_type": credential, "change_type": "update",
                                                     "event_timestamp": stamp}))
        return events

    def _set(self, notice: Recorded, audience: str, event_type: str,
             payload: dict[str, Any]) -> Callable[[], tuple[bytes, dict[str, str]]]:
        assert self._key is not None and self.config.caep is not None
        key, issuer = self._key, self.config.caep.issuer

        def build() -> tuple[bytes, dict[str, str]]:
            subject = {"format": "opaque", "id": self._subject(notice.user_id)}
            token = caep.security_event(key, issuer, audience, subject, event_type, payload)
            return token, {"content-type": "application/secevent+jwt", "accept": "application/json"}
        return build
