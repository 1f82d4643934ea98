"""A small client for the public contract (API.md): ``score`` and ``feedback`` over HTTP with httpx.

Apps call it from their own code or through ``RiskGuard``. It speaks only the documented fields, so
it works against any riskengine of API v1; unknown response fields are kept in ``Assessment.raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(2.0, connect=1.0)


class EngineUnavailable(Exception):
    """The engine gave no usable answer (connection failure, timeout, 5xx): the caller fails closed or open."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """One ``/score`` answer: what the app acts on, and the full body for anything newer."""

    event_id: str
    decision: str                    # allow | step_up | deny
    risk_score: float
    risk_level: str
    required_acr: str
    max_age: int | None
    challenge: str | None            # RFC 9470 WWW-Authenticate value for a step_up
    reasons: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "Assessment":
        return cls(body["event_id"], body["decision"], float(body["risk_score"]), body["risk_level"],
                   body["required_acr"], body.get("max_age"), body.get("challenge"),
                   list(body.get("reasons") or []), body)


def _request(user_id: str, action: str, ip: str, fields: dict[str, Any]) -> dict[str, Any]:
    body = {"user_id": user_id, "action": action, "ip": ip}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def _answer(response: httpx.Response) -> Assessment:
    """200 is a recorded answer; 503 still carries the policy's fail-closed body, which we honour."""
    if response.status_code == 200 or (response.status_code == 503 and _is_decision(response)):
        return Assessment.from_body(response.json())
    if response.status_code >= 500:
        raise EngineUnavailable(f"riskengine answered {response.status_code}")
    response.raise_for_status()        # 4xx: the app sent something wrong; that is a bug to see, not to hide
    raise EngineUnavailable(f"unexpected status {response.status_code}")


def _recorded(response: httpx.Response) -> bool:
    """``/feedback``: True when recorded, False for an event the engine does not know (404)."""
    if response.status_code == 404:
        return False
    response.raise_for_status()
    return True


def _is_decision(response: httpx.Response) -> bool:
    try:
        return "decision" in response.json()
    except ValueError:
        return False


class RiskClient:
    """Blocking client. ``RiskClient(url, api_key).score(user_id=..., action=..., ip=...)``."""

    def __init__(self, base_url: str, api_key: str, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def score(self, user_id: str, action: str, ip: str, **fields: Any) -> Assessment:
        try:
            return _answer(self._http.post("/score", json=_request(user_id, action, ip, fields)))
        except httpx.TransportError as exc:
            raise EngineUnavailable(type(exc).__name__) from exc

    def feedback(self, event_id: str, outcome: str) -> bool:
        """True when recorded; False for an event the engine does not know (404)."""
        try:
            response = self._http.post("/feedback", json={"event_id": event_id, "outcome": outcome})
        except httpx.TransportError as exc:
            raise EngineUnavailable(type(exc).__name__) from exc
        return _recorded(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RiskClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRiskClient:
    """The same client for async apps (and ``RiskGuard``)."""

    def __init__(self, base_url: str, api_key: str, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
                                       headers={"Authorization": f"Bearer {api_key}"})

    async def score(self, user_id: str, action: str, ip: str, **fields: Any) -> Assessment:
        try:
            return _answer(await self._http.post("/score", json=_request(user_id, action, ip, fields)))
        except httpx.TransportError as exc:
            raise EngineUnavailable(type(exc).__name__) from exc

    async def feedback(self, event_id: str, outcome: str) -> bool:
        try:
            response = await self._http.post("/feedback", json={"event_id": event_id, "outcome": outcome})
        except httpx.TransportError as exc:
            raise EngineUnavailable(type(exc).__name__) from exc
        return _recorded(response)

    async def aclose(self) -> None:
        await self._http.aclose()
