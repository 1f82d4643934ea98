"""Step 1 of the flow: the validated event every later step sees, and the one set of input rules.

The wire schema (``api/schemas.py``) checks the JSON with the rules below (``Text``, ``Id``,
``Timestamp``, ``AttributeValue``, ``Amount``); this module also holds the plain core types and the
one mapping between a request body and an ``Event`` (by field name), so the CLI, training and
notebooks build events without HTTP and a new optional field is declared once per type.
"""

from __future__ import annotations

import ipaddress
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta, timezone
from functools import cache
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import AfterValidator, Field, PlainValidator, StrictStr, WithJsonSchema

SENSITIVE_ACTIONS = ("payment", "add_payee", "change_email", "change_password", "export_data")
AttributeValue = str | float | int | bool
DEFAULT_MAX_CLOCK_SKEW_S = 300.0
MAX_AMOUNT = 1e15                   # every store holds it exactly enough; far past any real payment
INT64 = (-(2**63), 2**63 - 1)       # SQLite's INTEGER, Redis' and orjson's integers


class InputError(ValueError):
    """A value that breaks an input rule; ``field`` names it as the API does (``session.auth_time``).

    The message never repeats the value: it may be a user id.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# -- strings ----------------------------------------------------------------------------------
#: C0/C1 controls (Unicode Cc, NUL included: SQLite's JSON cuts text there), lone surrogates (no
#: UTF-8 form: stores and logs would fail or replace them) and the bidi embeddings, overrides,
#: isolates and marks of category Cf (they make an id display as another in logs and audit
#: exports). Other Cf characters (ZWJ in emoji, soft hyphen) are allowed: ids compare byte for byte.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def text_problem(value: str) -> str | None:
    """What is wrong with a client string, or None: the rule every string input follows.

    >>> text_problem("alice"), text_problem("alice\\x00")
    (None, 'must not contain control characters, lone surrogates or bidi overrides (at index 5)')
    """
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    return f"must not contain control characters, lone surrogates or bidi overrides (at index {found.start()})"


def check_text(value: str, name: str = "value") -> str:
    """``value`` when it follows ``text_problem``'s rule; else ``InputError`` naming ``name``."""
    if (problem := text_problem(value)) is not None:
        raise InputError(name, problem)
    return value


def _text(value: str) -> str:
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


#: any client string (add the length with ``Annotated[Text, Field(max_length=...)]``)
Text = Annotated[StrictStr, AfterValidator(_text)]
#: a client identifier: a ``Text`` of at least one character, compared byte for byte
Id = Annotated[Text, Field(min_length=1)]


# -- numbers ----------------------------------------------------------------------------------
def _attribute_value(value: object) -> AttributeValue:
    """An attribute as it came, if every store holds it as it is (an int stays an int)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError("integers must fit in a signed 64-bit integer")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return value
    if isinstance(value, str):
        if len(value) > 1024:
            raise ValueError("strings are at most 1024 characters")
        return _text(value)
    raise ValueError("must be a string, a number or a bool")


AttributeValueIn = Annotated[AttributeValue, PlainValidator(_attribute_value), WithJsonSchema(
    {"anyOf": [{"type": "string", "maxLength": 1024}, {"type": "integer", "minimum": INT64[0],
               "maximum": INT64[1]}, {"type": "number"}, {"type": "boolean"}]})]
Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]


# -- times ------------------------------------------------------------------------------------
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,32}))?"
                      r"(?:[Zz]|([+-])(\d{2}):(\d{2}))", re.ASCII)
RFC3339_FORM = "YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), e.g. 2026-11-28T04:30:00Z"


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 date-time (section 5.6) into an aware UTC datetime; ValueError otherwise.

    Written out rather than ``datetime.fromisoformat``, whose accepted forms differ between
    Python 3.10 and 3.11+ (ISO week dates, ``+0100``). Fractions past microseconds are cut.

    >>> parse_timestamp("2026-11-28T04:30:00.25+01:00").isoformat()
    '2026-11-28T03:30:00.250000+00:00'
    """
    if not isinstance(value, str):
        raise ValueError(f"must be an RFC 3339 string: {RFC3339_FORM}")
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {RFC3339_FORM}")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    if second == 60:
        raise ValueError("leap seconds (:60) are not accepted; send :59")
    try:
        local = datetime(year, month, day, hour, minute, second, int((match.group(7) or "").ljust(6, "0")[:6]))
    except ValueError:
        raise ValueError("not a date and time of the calendar (e.g. February 30th or hour 24)") from None
    sign, off_h, off_m = match.group(8, 9, 10)
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError("the UTC offset must be -23:59 to +23:59")
        offset = (1 if sign == "+" else -1) * (int(off_h) * 60 + int(off_m))
    try:
        return (local - timedelta(minutes=offset)).replace(tzinfo=timezone.utc)
    except OverflowError:
        raise ValueError("outside years 0001 to 9999 once converted to UTC") from None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; the one form we write.

    >>> format_timestamp(parse_timestamp("2026-01-02T03:04:05.5Z"))
    '2026-01-02T03:04:05.500000Z'
    """
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _as_time(value: object) -> datetime:
    """A wire time: an RFC 3339 string, or a datetime a trusted caller (or the schema) already made."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return value.astimezone(timezone.utc)
    return parse_timestamp(value)  # type: ignore[arg-type]


Timestamp = Annotated[datetime, PlainValidator(_as_time),
                      WithJsonSchema({"type": "string", "format": "date-time", "example": "2026-11-28T04:30:00Z"})]


def normalize_ip(value: str) -> str:
    """Canonical text of an IPv4 or IPv6 address (raises ValueError otherwise).

    >>> normalize_ip("2001:DB8:0::1")
    '2001:db8::1'
    """
    address = ipaddress.ip_address(check_text(value, "ip"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


# -- the core types ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the user already holds in this session (OIDC ``acr`` and ``auth_time``)."""

    acr: str | None = None
    auth_time: datetime | None = None


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
    #: seconds since the epoch, the unit profiles store times in (worked out once: a dozen reads an event)
    ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ts", self.timestamp.timestamp())


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
        return lambda value, path: _as_time(value)
    if hint is float:
        return lambda value, path: float(value)
    if get_origin(hint) in (dict, tuple):
        return lambda value, path, kind=get_origin(hint): kind(value)
    return lambda value, path: value


def _build(kind: type, body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The converted fields of ``kind`` that ``body`` sets (``prefix``: where it sits, for errors)."""
    if not isinstance(body, Mapping):
        raise InputError(prefix.rstrip(".") or "body", "must be an object")
    known = dict(_converters(kind))
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


def _times(value: object, path: str) -> Iterator[tuple[str, datetime]]:
    """Every datetime in an event, with its field path (``session.auth_time``)."""
    if isinstance(value, datetime):
        yield path, value
    elif is_dataclass(value):
        for name, _ in _converters(type(value)):
            yield from _times(getattr(value, name), f"{path}.{name}" if path else name)


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
    values.setdefault("event_id", new_event_id())
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
        for path, at in _times(event, ""):
            if at > latest:
                raise InputError(path, f"more than {max_skew_s:g} s ahead of the server's clock "
                                       "(RISKENGINE_MAX_CLOCK_SKEW_SECONDS)")
    return event


def event_to_request(event: Event) -> dict:
    """The event in API.md's ``/score`` form (absent values left out): what is recorded and replayed."""
    return _plain_fields(event)


def _plain_fields(value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, _ in _converters(type(value)):
        item = getattr(value, name)
        if isinstance(item, datetime):
            item = format_timestamp(item)
        elif is_dataclass(item):
            item = _plain_fields(item)
        elif isinstance(item, (dict, tuple)):
            item = dict(item) if isinstance(item, dict) else list(item)
        if item is not None and not (isinstance(item, (str, dict, list)) and not item):
            body[name] = item
    return body


#: dataset columns that travel as ``attributes``: recorded geo answers for masked IPs, round-trip time
ATTRIBUTE_HINTS = ("geo_country", "geo_region", "geo_city", "geo_asn", "rtt_ms")


def _plain(value: object) -> object:
    """A JSON-ready Python value, or None for None/NaN/NA (numpy and pandas values unwrapped)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
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
    return _row_fields(Event, row, "")


def _row_fields(kind: type, row: Mapping, prefix: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    hints = get_type_hints(kind)
    for name, _ in _converters(kind):
        hint = _unwrap(hints[name])
        if is_dataclass(hint):
            value: Any = _row_fields(hint, row, f"{prefix}{name}_") or None  # type: ignore[arg-type]
        elif name == "attributes":
            value = {k: v for k in ATTRIBUTE_HINTS if (v := _plain(row.get(k))) is not None} or None
        else:
            value = _plain(row.get(f"{prefix}{name}"))
        if value is not None:
            body[name] = value
    return body
