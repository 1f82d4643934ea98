"""Every error answer the service gives, its body model (for OpenAPI) and its handler.

Bodies name the field at fault (``{"detail": [{"field": ..., "message": ...}]}``) or say in one
sentence what went wrong (``{"detail": "..."}``); none holds a user id, an IP or a file path.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from riskengine.api import metrics
from riskengine.engine import ScoreUnavailable
from riskengine.stores import Conflict, Refused, StoreUnavailable

log = logging.getLogger("riskengine.api")


class FieldError(BaseModel):
    field: str
    message: str
    type: str | None = None


class ErrorResponse(BaseModel):
    detail: str | list[FieldError]
    failure: str | None = None


def field_error(status: int, field: str, message: str, **headers: str) -> HTTPException:
    """An ``HTTPException`` whose body names ``field``."""
    return HTTPException(status, detail=[{"field": field, "message": message}], headers=headers or None)


def invalid_body(exc: ValidationError) -> RequestValidationError:
    """pydantic's verdict on a body, as the 400 (not JSON) / 422 (wrong field) answer."""
    return RequestValidationError(exc.errors(include_url=False, include_context=False, include_input=False))


def _described(text: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": text}


#: the error answers every authenticated route can give (OpenAPI ``responses``)
COMMON: dict[int | str, dict[str, Any]] = {
    401: _described("missing or unknown API key"),
    403: _described("the API key lacks this endpoint's scope"),
    408: _described("the request body did not arrive in time"),
    413: _described("the request body is too large"),
    429: _described("this API key is over its rate limit; see Retry-After"),
    503: _described("the service is overloaded or its store is unavailable; see Retry-After"),
}
WITH_BODY: dict[int | str, dict[str, Any]] = {
    **COMMON,
    400: _described("the body is not JSON"),
    422: _described("a field is missing or invalid; the body names it"),
}


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _unavailable)
    app.add_exception_handler(ScoreUnavailable, _score_unavailable)
    app.add_exception_handler(Conflict, _contended)
    app.add_exception_handler(ClientDisconnect, _gone)
    app.add_exception_handler(Refused, _refused)


def _field(loc: tuple[Any, ...]) -> str:
    """``("session", "auth_time")`` -> ``"session.auth_time"``."""
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or "body"


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": "body" if e["type"] == "json_invalid" else _field(e["loc"]),
               "message": e["msg"].removeprefix("Value error, "), "type": e["type"]} for e in exc.errors()]
    status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
    return JSONResponse({"detail": errors}, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    metrics.STORE_ERRORS.inc()
    log.error("store unavailable: %s", type(exc).__name__)
    return JSONResponse({"detail": "profile store unavailable; retry later"}, status_code=503,
                        headers={"Retry-After": "1"})


async def _score_unavailable(request: Request, exc: ScoreUnavailable) -> JSONResponse:
    """The action's policy says ``on_failure: unavailable``: no guess, the client retries."""
    log.error("risk score unavailable: answering 503 as the policy says")
    return JSONResponse({"detail": "risk score unavailable; retry later", "failure": "score_unavailable"},
                        status_code=503, headers={"Retry-After": "1"})


async def _contended(request: Request, exc: Conflict) -> JSONResponse:
    """Writers in other processes kept moving this user on: nothing was recorded, retry."""
    log.warning("gave up on a user other processes kept updating; answering 503")
    return JSONResponse({"detail": "this user is being updated concurrently; retry"}, status_code=503,
                        headers={"Retry-After": "1"})


async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client left mid-body: nothing was recorded, and nobody reads this answer."""
    return JSONResponse({"detail": [{"field": "body", "message": "client disconnected"}]}, status_code=400)


async def _refused(request: Request, exc: Refused) -> JSONResponse:
    """The store could not hold this one item (its group went ahead without it): the input's fault,
    which the input rules should have caught; nothing of it was recorded."""
    log.warning("store refused one item: %s", type(exc).__name__)
    return JSONResponse({"detail": [{"field": "body", "message": "a value could not be stored; nothing was recorded"}]},
                        status_code=422)
