"""Step 1 of the flow: the validated event every later step sees.

The wire schema (``api/schemas.py``) checks the JSON with the rules of ``inputs.py``; this module
holds the plain core types and the one mapping between a ``/score`` body and an ``Event``, by field
name, so the CLI, training and notebooks build events without HTTP and a new optional request field
is declared once per type (here and in ``ScoreRequest``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta
from functools import cache
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from riskengine.inputs import (AttributeValue, InputError, as_utc, format_timestamp, normalize_ip,
                               parse_timestamp)

__all__ = ["ATTRIBUTE_HINTS", "SENSITIVE_ACTIONS", "AttributeValue", "Event", "InputError", "SessionInfo",
           "event_from_request", "event_to_request", "format_timestamp", "new_event_id", "normalize_ip",
           "parse_timestamp", "row_to_request"]

SENSITIVE_ACTIONS = ("payment", "add_payee", "change_email", "change_password", "export_data")
DEFAULT_TENANT = "default"
_TENANT_SEPARATOR = "\x1f"      # ids refuse control characters, so a tenant's keys cannot collide


def tenant_key(tenant: str, value: str) -> str:
    r"""The one name stores know a tenant's user, event, IP or population value by.

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


# -- the core types ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the user already holds in this session (OIDC ``acr`` and ``auth_time``) and the app's
    session ``id``, which ties in-session actions to the sign-in that opened the session."""

    acr: str | None = None
    auth_time: datetime | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One login or in-session action. ``timestamp`` drives every time-based signal.

    Its fields are the ``/score`` body's, by name (``event_from_request``): a new optional request
    field is one line here and one in ``ScoreRequest``.
    """

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
    #: the second factors the user has enrolled (None: not said, step-ups are not checked against them)
    factors: tuple[str, ...] | None = None
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


# -- request body <-> Event, by field name --------------------------------------------------------
Convert = Callable[[Any, str], Any]
#: per-field normal forms beyond the type's (the schema applies them too; bodies from files need them)
_NORMAL_FORMS: dict[str, Callable[[Any], Any]] = {"ip": normalize_ip}


@cache
def _converters(kind: type) -> tuple[tuple[str, Convert], ...]:
    """(name, convert) for each field of a core dataclass a request sets, from its type hints."""
    hints = get_type_hints(kind)
    return tuple((f.name, _converter(hints[f.name], f.name)) for f in fields(kind) if f.init)


@cache
def _known(kind: type) -> dict[str, Convert]:
    """``_converters`` by field name, built once per type rather than once per body."""
    return dict(_converters(kind))


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(hint) in (Union, UnionType):
        return next(arg for arg in get_args(hint) if arg is not NoneType)
    return hint


def _converter(hint: Any, name: str) -> Convert:
    hint = _unwrap(hint)
    if is_dataclass(hint):
        return lambda value, path: hint(**_build(hint, value, path))  # type: ignore[operator]
    if name in _NORMAL_FORMS:
        return lambda value, path, normal=_NORMAL_FORMS[name]: normal(value)
    if hint is datetime:
        return lambda value, path: as_utc(value)
    if hint is float:
        return lambda value, path: float(value)
    if get_origin(hint) in (dict, tuple, list):
        return lambda value, path, kind=get_origin(hint): kind(value)
    return lambda value, path: value


def _build(kind: type, body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The converted fields of ``kind`` that ``body`` sets (``prefix``: where it sits, for errors)."""
    if not isinstance(body, Mapping):
        raise InputError(prefix.rstrip(".") or "body", "must be an object")
    known = _known(kind)
    values: dict[str, Any] = {}
    for name, value in body.items():
        path = f"{prefix}{name}"
        if name not in known:
            raise InputError(path, "unknown field")
        if value is not None:
            try:
                values[name] = known[name](value, f"{path}.")
            except InputError:
                raise
            except (TypeError, ValueError) as exc:
                raise InputError(path, str(exc)) from None
    return values


@cache
def _time_paths(kind: type) -> tuple[tuple[str, ...], ...]:
    """The field paths of ``kind`` that hold a time, nested dataclasses included (``("session",
    "auth_time")``): read from the type hints once per type, not looked for in every event."""
    hints = get_type_hints(kind)
    paths: list[tuple[str, ...]] = []
    for name, _ in _converters(kind):
        hint = _unwrap(hints[name])
        if hint is datetime:
            paths.append((name,))
        elif is_dataclass(hint):
            paths.extend((name, *inner) for inner in _time_paths(hint))  # type: ignore[arg-type]
    return tuple(paths)


def _times(value: object) -> Iterator[tuple[str, datetime]]:
    """Every datetime in an event, with its field path (``session.auth_time``)."""
    for path in _time_paths(type(value)):
        item: Any = value
        for name in path:
            item = getattr(item, name)
            if item is None:
                break
        else:
            yield ".".join(path), item


def event_from_request(body: Mapping[str, Any], received_at: datetime | None = None,
                       max_skew_s: float | None = None) -> Event:
    """The ``Event`` a ``/score`` body stands for; ``InputError`` names the field that is wrong.

    ``received_at``: the server's clock, used when the body has no ``timestamp``. With
    ``max_skew_s``, no time in the event may be more than that ahead of ``received_at`` (historical
    replays pass none and keep their times).

    >>> event_from_request({"user_id": "u1", "action": "login", "ip": "10.0.0.1",
    ...                     "timestamp": "2026-01-02T03:04:05Z"}).timestamp.isoformat()
    '2026-01-02T03:04:05+00:00'
    """
    values = _build(Event, body)
    if "event_id" not in values:                  # not setdefault: a fresh id costs a urandom call
        values["event_id"] = new_event_id()
    if "timestamp" not in values:
        if received_at is None:
            raise InputError("timestamp", "required (no server time to default to)")
        values["timestamp"] = received_at
    try:
        event = Event(**values)
    except TypeError:
        missing = [f.name for f in fields(Event) if f.init and f.default is MISSING
                   and f.default_factory is MISSING and f.name not in values]
        raise InputError(missing[0] if missing else "body", "required") from None
    if max_skew_s is not None and received_at is not None:
        latest = received_at + timedelta(seconds=max_skew_s)
        for path, at in _times(event):
            if at > latest:
                raise InputError(path, f"more than {max_skew_s:g} s ahead of the server's clock "
                                       "(RISKENGINE_MAX_CLOCK_SKEW_SECONDS)")
    return event


def event_to_request(event: Event) -> dict:
    """The event in API.md's ``/score`` form (absent values left out, ``factors: []`` kept): what is
    recorded and replayed.

    >>> from datetime import datetime, timezone
    >>> at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    >>> event_to_request(Event("e1", "u1", "payment", at, "10.0.0.1", factors=()))["factors"]
    []
    >>> "factors" in event_to_request(Event("e1", "u1", "payment", at, "10.0.0.1"))
    False
    """
    return _plain_fields(event)


#: what a retry of an event may send otherwise than the first time: its time (an app may stamp an
#: event when it sends it, and a time left out is the server's clock at each arrival)
RETRY_MAY_CHANGE = frozenset({"timestamp"})


def changed_fields(recorded: Mapping[str, Any], event: Event) -> list[str]:
    """The fields, by name, in which ``event`` is not the event recorded under its id (``recorded``:
    its ``event_to_request`` form), leaving out what a retry may change: none for a true retry.

    >>> from datetime import datetime, timezone
    >>> first = Event("e1", "u1", "login", datetime(2026, 1, 2, tzinfo=timezone.utc), "10.0.0.1")
    >>> retry = Event("e1", "u1", "login", datetime(2026, 1, 3, tzinfo=timezone.utc), "10.0.0.1")
    >>> changed_fields(event_to_request(first), retry)
    []
    >>> changed_fields(event_to_request(first), Event("e1", "u2", "payment", first.timestamp, "10.0.0.1", amount=9.0))
    ['action', 'amount', 'user_id']
    """
    now = event_to_request(event)
    return sorted(name for name in recorded.keys() | now.keys()
                  if name not in RETRY_MAY_CHANGE and recorded.get(name) != now.get(name))


@cache
def _body_plan(kind: type) -> tuple[tuple[str, Callable[[Any], Any] | None, bool], ...]:
    """(name, how its value is written, kept when empty) for each field of a core dataclass, from
    its type hints, worked out once per type: a time as RFC 3339 text, a nested dataclass as a
    body, a mapping as a dict, a sequence as a list. An empty value is kept only where the field's
    default is None, so that empty says something (``factors: []``: none enrolled, unlike
    ``factors`` absent: not said)."""
    hints = get_type_hints(kind)
    plan: list[tuple[str, Callable[[Any], Any] | None, bool]] = []
    for f in fields(kind):
        if not f.init:
            continue
        hint = _unwrap(hints[f.name])
        write: Callable[[Any], Any] | None = None
        if hint is datetime:
            write = format_timestamp
        elif is_dataclass(hint):
            write = _plain_fields
        elif get_origin(hint) is dict:
            write = dict
        elif get_origin(hint) in (tuple, list):
            write = list
        plan.append((f.name, write, f.default is None))
    return tuple(plan)


def _plain_fields(value: Any) -> dict[str, Any]:
    """``value``'s fields as a body; empty texts, lists and objects are left out unless they say something."""
    body: dict[str, Any] = {}
    for name, write, said in _body_plan(type(value)):
        item = getattr(value, name)
        if item is None:
            continue
        if write is not None:
            item = write(item)
        if item or (said and isinstance(item, list)) or not isinstance(item, (str, dict, list)):
            body[name] = item
    return body


#: dataset columns that travel as ``attributes``: recorded geo answers for masked IPs, round-trip time
ATTRIBUTE_HINTS = ("geo_country", "geo_region", "geo_city", "geo_asn", "rtt_ms")


def _plain(value: object) -> object:
    """A JSON-ready Python value, or None for None/NaN/NA (numpy and pandas values unwrapped)."""
    if isinstance(value, str):            # most cells: nothing to unwrap (a numpy str_ stays as it is)
        return value
    if hasattr(value, "tolist") and not isinstance(value, bytes):
        value = value.tolist()
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType", "NaTType"):
        return None
    return value


def row_to_request(row: Mapping) -> dict:
    """One flat dataset row (generated or the public RBA set) -> the ``/score`` body it stands for.

    Columns are named as ``Event``'s fields; a nested one's as ``session_acr``. Labels never leave
    the row; absent values are dropped.

    >>> row_to_request({"user_id": "u1", "action": "login", "ip": "10.0.0.1", "success": False,
    ...                 "device_id": float("nan"), "session_acr": "aal1", "geo_country": "NO", "label": 1})
    {'user_id': 'u1', 'action': 'login', 'ip': '10.0.0.1', 'success': False, 'session': {'acr': 'aal1'}, \
'attributes': {'geo_country': 'NO'}}
    """
    return _row_fields(_row_plan(Event, ""), row)


#: (field name, its column, the nested type's plan or None)
_RowPlan = tuple[tuple[str, str, "_RowPlan | None"], ...]


@cache
def _row_plan(kind: type, prefix: str) -> _RowPlan:
    """(field name, column, nested plan) for each field a row sets: worked out once per type, not
    once per row (``get_type_hints`` was a third of a backfill's time)."""
    hints = get_type_hints(kind)
    return tuple((name, f"{prefix}{name}", _row_plan(hint, f"{prefix}{name}_")  # type: ignore[misc]
                  if is_dataclass(hint := _unwrap(hints[name])) else None)
                 for name, _ in _converters(kind))


def _row_fields(plan: _RowPlan, row: Mapping) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, column, nested in plan:
        if nested is not None:
            value: Any = _row_fields(nested, row) or None
        elif name == "attributes":
            value = {k: v for k in ATTRIBUTE_HINTS if (v := _plain(row.get(k))) is not None} or None
        else:
            value = _plain(row.get(column))
        if value is not None:
            body[name] = value
    return body
