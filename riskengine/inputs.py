"""The input rules every client value follows, written once: strings, numbers and RFC 3339 times.

``api/schemas.py`` builds the wire schema from these annotated types (``Text``, ``Id``,
``Timestamp``, ``Amount``, ``AttributeValueIn``); ``events.py`` maps a checked body onto an
``Event``; the CLI and the dataset loaders parse times with the same ``parse_timestamp``.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainValidator, StrictStr, WithJsonSchema

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
#: the same rule as a JSON Schema ``pattern`` (OpenAPI), so schema-driven clients and fuzzers send what
#: is accepted; lone surrogates are left out, as most regex engines (Rust's, Go's) cannot name them.
TEXT_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$"


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
Text = Annotated[StrictStr, AfterValidator(_text), Field(json_schema_extra={"pattern": TEXT_PATTERN})]
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


#: JSON Schema cannot tell ``1e19`` (a float: accepted) from ``10000000000000000000`` (an integer past
#: int64: refused), so it bounds every number to the int64 range: what it admits is always accepted
ATTRIBUTE_VALUE_SCHEMA = {"anyOf": [{"type": "string", "maxLength": 1024, "pattern": TEXT_PATTERN},
                                    {"type": "number", "minimum": INT64[0], "maximum": INT64[1]},
                                    {"type": "boolean"}]}
AttributeValueIn = Annotated[AttributeValue, PlainValidator(_attribute_value), WithJsonSchema(ATTRIBUTE_VALUE_SCHEMA)]
Amount = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]


# -- member names ------------------------------------------------------------------------------
class _Repeated:
    """A member name an object gave twice: handed up through the objects around it (each adds its
    own name in front), so the answer names the whole path, as ``session.acr``."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_HOLDERS = (_Repeated, list)             # what can hold a repeated name (a dict without one is plain)


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Repeated:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                return _Repeated(name)
            seen.add(name)
    for name, value in pairs:
        if type(value) in _HOLDERS and (inner := _repeated_in(value)) is not None:
            return _Repeated(f"{name}.{inner}")
    return members


def _repeated_in(value: Any) -> str | None:
    if isinstance(value, _Repeated):
        return value.path
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (inner := _repeated_in(item)) is not None:
                return f"{i}.{inner}"
    return None


def repeated_member(text: bytes | str) -> str | None:
    """The path of the first member name that one object of this JSON text gives twice, or None.

    JSON readers disagree on such a body (RFC 8259 section 4: some keep the first copy, most the
    last), so a value smuggled in after the real one (``"device_id": "victim-laptop"`` added through
    a user agent an app pasted into its JSON) would be scored while the app, a proxy or a log saw
    the other. I-JSON (RFC 7493) forbids repeated names; the API refuses them.

    >>> repeated_member(b'{"user_id": "a", "session": {"acr": "aal1", "acr": "aal3"}}')
    'session.acr'
    >>> repeated_member(b'{"user_id": "a", "session": {"user_id": "a"}}') is None
    True
    """
    return _repeated_in(json.loads(text, object_pairs_hook=_members))


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
    year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
    if second == 60:
        raise ValueError("leap seconds (:60) are not accepted; send :59")
    sign, off_h, off_m = match.group(8, 9, 10)
    try:                                  # ``Z`` (most times): already UTC, no offset to apply
        local = datetime(year, month, day, hour, minute, second, int((match.group(7) or "").ljust(6, "0")[:6]),
                         timezone.utc)
    except ValueError:
        raise ValueError("not a date and time of the calendar (e.g. February 30th or hour 24)") from None
    if sign is None:
        return local
    if int(off_h) > 23 or int(off_m) > 59:
        raise ValueError("the UTC offset must be -23:59 to +23:59")
    offset = (1 if sign == "+" else -1) * (int(off_h) * 60 + int(off_m))
    try:
        return local - timedelta(minutes=offset)
    except OverflowError:
        raise ValueError("outside years 0001 to 9999 once converted to UTC") from None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; the one form we write.

    >>> format_timestamp(parse_timestamp("2026-01-02T03:04:05.5Z"))
    '2026-01-02T03:04:05.500000Z'
    """
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def as_utc(value: object) -> datetime:
    """A wire time: an RFC 3339 string, or a datetime a trusted caller (or the schema) already made."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset")
        return value.astimezone(timezone.utc)
    return parse_timestamp(value)  # type: ignore[arg-type]


Timestamp = Annotated[datetime, PlainValidator(as_utc),
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
