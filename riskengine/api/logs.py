"""The service's log lines (JSON or text) and the request id every line of a request carries.

The id comes from the request's ``X-Request-ID`` when it is 1 to 128 safe characters, else from
the trace id of a valid W3C ``traceparent``, else it is made here; the gate (api/middleware.py)
puts it in a context variable for the request's lines and returns it as ``X-Request-ID``. Log
lines never hold an API key, a client address or a user id (README: "Logs").
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("riskengine_request_id", default=None)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/@-]{0,127}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
FORMATS = ("json", "text")
_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def request_id(x_request_id: str | None, traceparent: str | None) -> str:
    """The id of one request: the client's if it is safe, else its trace's, else a new one.

    >>> request_id("checkout-42", None)
    'checkout-42'
    >>> request_id("bad id\\n", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    '4bf92f3577b34da6a3ce929d0e0e4736'
    >>> len(request_id(None, "00-00000000000000000000000000000000-00f067aa0ba902b7-01"))
    32
    """
    if (given := client_request_id(x_request_id)) is not None:
        return given
    if traceparent is not None and (trace_id := trace_id_of(traceparent)) is not None:
        return trace_id
    return os.urandom(16).hex()           # a random 128-bit id (uuid4 objects cost several times more)


def client_request_id(x_request_id: str | None) -> str | None:
    """The client's ``X-Request-ID`` when it is 1 to 128 safe characters (letters, digits, ``._:+=/@-``)."""
    return x_request_id if x_request_id is not None and _SAFE_ID.fullmatch(x_request_id) else None


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a valid W3C ``traceparent`` (version ``ff`` and all-zero ids are invalid)."""
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_id, parent_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return None
    return trace_id


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (or ``-`` outside a request) to every record the handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        record.__dict__.pop("color_message", None)       # uvicorn's terminal-coloured copy of the message
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "text":
        return logging.Formatter(_TEXT)
    if fmt != "json":
        raise ValueError(f"RISKENGINE_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {fmt!r}")
    from pythonjsonlogger.json import JsonFormatter

    # pid: which of serve's workers wrote the line
    return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(process)d",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
                         datefmt="%Y-%m-%dT%H:%M:%S%z")


def dict_config(fmt: str = "json", level: str = "INFO") -> dict[str, Any]:
    """``logging.config.dictConfig`` for the service: one stderr handler on the root logger, in
    ``fmt``; uvicorn's loggers go through it. Given to uvicorn as ``log_config``, so every worker
    process sets it up before it logs a line."""
    formatter(fmt)                       # a bad RISKENGINE_LOG_FORMAT is refused here, in one sentence
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"service": {"()": formatter, "fmt": fmt}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "service", "filters": ["request_id"]}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """Set the service's logging up in this process (``dict_config``)."""
    logging.config.dictConfig(dict_config(fmt, level))
