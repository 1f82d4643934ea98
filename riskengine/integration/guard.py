"""An ASGI middleware that puts riskengine in front of an app's sensitive routes.

For each guarded request it asks ``/score`` and then: ``allow`` passes the request on (the
assessment in ``scope["state"]["risk"]``, so handlers can log or show it); ``step_up`` answers
401 with the engine's RFC 9470 challenge as ``WWW-Authenticate``, so the client goes back to its
identity provider for the required ``acr_values``/``max_age``; ``deny`` answers 403. When the
engine cannot answer, it fails closed (503) unless told ``fail_open=True``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from riskengine.integration.client import Assessment, AsyncRiskClient, EngineUnavailable

log = logging.getLogger("riskengine.guard")
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is acting, as the app knows it (from its own session): what ``/score`` needs besides the action."""

    user_id: str
    ip: str
    user_agent: str | None = None
    device_id: str | None = None
    session: dict[str, Any] | None = None          # {"id", "acr", "auth_time"} as in API.md
    extra: dict[str, Any] = field(default_factory=dict)   # amount, payee_id, attributes, ...


SubjectOf = Callable[[Scope, bytes], Awaitable[Subject | None]]
MAX_BODY = 64 * 1024       # a guarded route's body is read before scoring (amount, payee): kept small


class RiskGuard:
    """``app = RiskGuard(app, client, routes={("POST", "/payments"): "payment"}, subject=...)``.

    ``routes`` maps (method, path) to the action name the policy knows; other requests pass
    untouched. ``subject(scope, body)`` returns who is acting (and, in ``extra``, what the body says:
    amount, payee) or None for an anonymous request (401). The body is read once, before scoring,
    and replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, client: AsyncRiskClient, routes: dict[tuple[str, str], str],
                 subject: SubjectOf, fail_open: bool = False) -> None:
        self.app, self.client, self.subject, self.fail_open = app, client, subject, fail_open
        self.routes = {(method.upper(), path): action for (method, path), action in routes.items()}

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        action = self.routes.get((scope.get("method", ""), scope.get("path", ""))) \
            if scope["type"] == "http" else None
        if action is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await _json(send, 413, {"error": "body_too_large"})
            return
        receive = _replay(body)
        who = await self.subject(scope, body)
        if who is None:
            await _json(send, 401, {"error": "unauthenticated"})
            return
        try:
            risk = await self.client.score(who.user_id, action, who.ip, user_agent=who.user_agent,
                                           device_id=who.device_id, session=who.session, **who.extra)
        except EngineUnavailable as exc:
            log.warning("riskengine unavailable for %s (%s): failing %s", action, exc,
                        "open" if self.fail_open else "closed")
            if self.fail_open:
                await self.app(scope, receive, send)
            else:
                await _json(send, 503, {"error": "risk_unavailable"}, [(b"retry-after", b"1")])
            return
        await self._answer(risk, scope, receive, send)

    async def _answer(self, risk: Assessment, scope: Scope, receive: Callable, send: Callable) -> None:
        if risk.decision == "allow":
            scope.setdefault("state", {})["risk"] = risk
            await self.app(scope, receive, send)
        elif risk.decision == "step_up" and risk.challenge:
            await _json(send, 401, {"error": "insufficient_user_authentication", "acr_values": risk.required_acr,
                                    "max_age": risk.max_age, "event_id": risk.event_id},
                        [(b"www-authenticate", risk.challenge.encode("latin-1"))])
        else:                                    # deny, or a step-up the engine gave no challenge for
            await _json(send, 403, {"error": "access_denied", "event_id": risk.event_id})


async def _read_body(receive: Callable) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)            # the client went away: an empty body, the app sees it too
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Awaitable[dict]]:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


async def _json(send: Callable, status: int, body: dict[str, Any],
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": content})
