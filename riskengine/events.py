"""Step 1 of the flow: the validated event every later step sees.

The wire schema (``api/schemas.py``) checks the JSON; this module holds the
plain core types so the CLI, training and notebooks build events without HTTP.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

SENSITIVE_ACTIONS = ("payment", "add_payee", "change_email", "change_password", "export_data")
AttributeValue = str | float | int | bool
DEFAULT_TENANT = "default"
_TENANT_SEPARATOR = "\x1f"      # ids refuse control characters, so a tenant's keys cannot collide


def tenant_key(tenant: str, value: str) -> str:
    """The one name stores know a tenant's user, event, IP or population value by.

    The default tenant keeps the plain value, so stores written before tenants keep working.

    >>> tenant_key("default", "alice"), tenant_key("acme", "alice")
    ('alice', 'acme\x1falice')
    """
    return value if tenant == DEFAULT_TENANT else f"{tenant}{_TENANT_SEPARATOR}{value}"


def check_id(field: str, value: str) -> str:
    """Refuse the separator ``tenant_key`` uses (ValueError naming ``field``): with it, an id could
    name another tenant's user or event."""
    if _TENANT_SEPARATOR in value:
        raise ValueError(f"{field}: control character U+001F not allowed")
    return value


def untenanted(tenant: str, value: str) -> str:
    """The inverse of ``tenant_key``: the id as the client sent it.

    >>> untenanted("acme", tenant_key("acme", "alice")), untenanted("default", "alice")
    ('alice', 'alice')
    """
    return value if tenant == DEFAULT_TENANT else value.removeprefix(f"{tenant}{_TENANT_SEPARATOR}")


def tenant_of(value: str) -> str:
    """``tenant_key``'s tenant part (the default tenant for plain values)."""
    tenant, separator, _ = value.partition(_TENANT_SEPARATOR)
    return tenant if separator else DEFAULT_TENANT


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the user already holds in this session (OIDC ``acr`` and ``auth_time``)."""

    acr: str | None = None
    auth_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One login or in-session action. ``timestamp`` drives every time-based signal."""

    event_id: str
    user_id: str
    action: str
    timestamp: datetime
    ip: str
    user_agent: str = ""
    device_id: str | None = None
    success: bool = True
    amount: float | None = None
    currency: str | None = None
    payee_id: str | None = None
    session: SessionInfo = field(default_factory=SessionInfo)
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    #: seconds since the epoch, the unit profiles store times in (worked out once: a dozen reads an event)
    ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", self.timestamp.timestamp())

    @property
    def tenant(self) -> str:
        """Whose event: ``user_id`` and ``event_id`` are ``tenant_key``s (the API builds them so)."""
        return tenant_of(self.user_id)


def new_event_id() -> str:
    return uuid.uuid4().hex


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    >>> parse_timestamp("2026-11-28T04:30:00+01:00").isoformat()
    '2026-11-28T03:30:00+00:00'
    """
    text = value.strip()
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("not an RFC 3339 date-time (e.g. 2026-11-28T04:30:00Z)")
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("RFC 3339 needs a UTC offset or Z")
    return parsed.astimezone(timezone.utc)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; the one form we write.

    >>> format_timestamp(parse_timestamp("2026-01-02T03:04:05.5Z"))
    '2026-01-02T03:04:05.500000Z'
    """
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def normalize_ip(value: str) -> str:
    """Canonical text of an IPv4 or IPv6 address (raises ValueError otherwise).

    >>> normalize_ip("2001:DB8:0::1")
    '2001:db8::1'
    """
    address = ipaddress.ip_address(value.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def event_to_request(event: Event) -> dict:
    """The event in API.md's ``/score`` form: what is recorded and replayed."""
    body: dict = {"event_id": event.event_id, "user_id": event.user_id, "action": event.action,
                  "timestamp": format_timestamp(event.timestamp), "ip": event.ip, "success": event.success}
    for name in ("user_agent", "device_id", "amount", "currency", "payee_id"):
        value = getattr(event, name)
        if value not in (None, ""):
            body[name] = value
    if event.session.acr or event.session.auth_time:
        body["session"] = {k: v for k, v in (
            ("acr", event.session.acr),
            ("auth_time", format_timestamp(event.session.auth_time) if event.session.auth_time else None))
            if v is not None}
    if event.attributes:
        body["attributes"] = dict(event.attributes)
    return body


def event_from_request(body: dict) -> Event:
    """Inverse of ``event_to_request`` for already-validated bodies (recorded or generated events)."""
    session = body.get("session") or {}
    auth_time = session.get("auth_time")
    return Event(
        event_id=body.get("event_id") or new_event_id(),
        user_id=str(body["user_id"]),
        action=body["action"],
        timestamp=parse_timestamp(body["timestamp"]),
        ip=normalize_ip(body["ip"]),
        user_agent=body.get("user_agent") or "",
        device_id=body.get("device_id"),
        success=bool(body.get("success", True)),
        amount=float(body["amount"]) if body.get("amount") is not None else None,
        currency=body.get("currency"),
        payee_id=body.get("payee_id"),
        session=SessionInfo(session.get("acr"), parse_timestamp(auth_time) if auth_time else None),
        attributes=dict(body.get("attributes") or {}),
    )


REQUEST_FIELDS = ("event_id", "user_id", "action", "timestamp", "ip", "user_agent", "device_id", "success",
                  "amount", "currency", "payee_id")
#: dataset columns that travel as ``attributes``: recorded geo answers for masked IPs, round-trip time
ATTRIBUTE_HINTS = ("geo_country", "geo_region", "geo_city", "geo_asn", "rtt_ms")


def _plain(value: object) -> object:
    """A JSON-ready Python value, or None for None/NaN/NA (numpy and pandas scalars unwrapped)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def row_to_request(row: Mapping) -> dict:
    """One flat dataset row (generated or the public RBA set) -> the ``/score`` body it stands for.

    Labels never leave the row; absent values are dropped; the session is nested.

    >>> row_to_request({"user_id": "u1", "action": "login", "ip": "10.0.0.1", "success": False,
    ...                 "device_id": float("nan"), "session_acr": "aal1", "geo_country": "NO", "label": 1})
    {'user_id': 'u1', 'action': 'login', 'ip': '10.0.0.1', 'success': False, 'session': {'acr': 'aal1'}, \
'attributes': {'geo_country': 'NO'}}
    """
    body: dict = {}
    for name in REQUEST_FIELDS:
        if (value := _plain(row.get(name))) is not None:
            body[name] = value
    if (acr := _plain(row.get("session_acr"))) is not None:
        body["session"] = {"acr": acr}
        if (auth_time := _plain(row.get("session_auth_time"))) is not None:
            body["session"]["auth_time"] = auth_time
    attributes = {k: v for k in ATTRIBUTE_HINTS if (v := _plain(row.get(k))) is not None}
    if attributes:
        body["attributes"] = attributes
    return body
