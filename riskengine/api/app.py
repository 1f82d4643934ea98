"""The ASGI app: ``create_app(settings)`` wires the Engine into FastAPI's lifespan."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from riskengine.api import metrics, routes
from riskengine.api.auth import KeyRing
from riskengine.api.ratelimit import Buckets, RateLimit
from riskengine.api.scorelane import ScoreLane
from riskengine.api.timeouts import BodyTimeout
from riskengine.engine import Engine, ScoreUnavailable
from riskengine.settings import Settings
from riskengine.signals import routes as signal_routes
from riskengine.stores import Conflict, StoreUnavailable

log = logging.getLogger("riskengine.api")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = KeyRing(settings.api_keys.get_secret_value(), settings.api_keys_file)
    if not len(keys):
        log.warning("no API keys configured (RISKENGINE_API_KEYS): every authenticated request gets 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.worker_threads > 0:     # plain-def handlers share the GIL: few threads, no convoy
            anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        with (engine or Engine.open(settings)) as opened, _signals(settings, opened) as signals:
            gc.freeze()     # the model, GeoIP tables, policy...: kept for good, so no collection walks them
            yield {"engine": opened, "signals": signals, "max_clock_skew_s": settings.max_clock_skew_seconds}

    buckets = Buckets(keys, settings.rate_limit_per_second, settings.rate_limit_burst)
    deadline = BodyTimeout(None, seconds=settings.read_timeout_seconds)
    limit = BodyLimit(None, max_bytes=settings.max_body_bytes)
    score_route = next(r for r in routes.router.routes if getattr(r, "path", None) == "/score")
    handlers = {StoreUnavailable: _unavailable, ScoreUnavailable: _score_unavailable, Conflict: _contended,
                StarletteHTTPException: _http_error, RequestValidationError: _invalid}
    app = _Service(title="riskengine", version="1", lifespan=lifespan,
                   lane=lambda stack: ScoreLane(stack, keys, score_route, handlers, buckets, deadline, limit))
    app.state.keys = keys
    app.include_router(routes.router)
    app.include_router(signal_routes.router)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _unavailable)
    app.add_exception_handler(ScoreUnavailable, _score_unavailable)
    app.add_exception_handler(Conflict, _contended)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BodyTimeout, seconds=settings.read_timeout_seconds)
    app.add_middleware(RateLimit, buckets=buckets)      # outermost of these: a 429 reads no body
    app.add_middleware(Observe)
    return app


@contextmanager
def _signals(settings: Settings, engine: Engine) -> Iterator[Any]:
    """Webhooks and CAEP when ``RISKENGINE_SIGNALS`` names a file; a broken file stops the start."""
    if settings.signals is None:
        yield None
        return
    from riskengine.signals.config import load_config
    from riskengine.signals.transmitter import Transmitter

    transmitter = Transmitter(load_config(settings.signals), engine.subject)
    engine.listeners.append(transmitter.on_recorded)
    try:
        yield transmitter
    finally:
        engine.listeners.remove(transmitter.on_recorded)
        transmitter.close()


class _Service(FastAPI):
    """FastAPI with the score lane in front of its whole middleware stack (scorelane.py)."""

    def __init__(self, *args: Any, lane: Callable[[Any], Any], **kwargs: Any) -> None:
        self._lane = lane
        super().__init__(*args, **kwargs)

    def build_middleware_stack(self) -> Any:
        return self._lane(super().build_middleware_stack())


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "session", "auth_time")`` -> ``"session.auth_time"``."""
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return ".".join(parts) or "body"


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": "body" if e["type"] == "json_invalid" else _field(e["loc"]),
               "message": e["msg"].removeprefix("Value error, "), "type": e["type"]} for e in exc.errors()]
    status = 400 if any(e["type"] == "json_invalid" for e in errors) else 422
    return JSONResponse({"detail": errors}, status_code=status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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


class Observe:
    """Latency by route template: never the raw path, which may hold a user id.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware costs about
    0.3 ms of CPU per request (a task and memory streams), a third of this service's HTTP layer.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def observed(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            metrics.LATENCY.labels(template, scope["method"], str(status)).observe(time.perf_counter() - started)


class BodyLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.announced_too_large(scope):
            return await _too_large(send)
        try:
            await self.app(scope, self.limited(receive), send)
        except _TooLarge:
            await _too_large(send)

    def announced_too_large(self, scope) -> bool:
        return any(name == b"content-length" and value.isdigit() and int(value) > self.max_bytes
                   for name, value in scope.get("headers", ()))

    def limited(self, receive):
        """``receive`` that raises ``_TooLarge`` past the limit (the score lane reads through it too)."""
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge()
            return message

        return limited


class _TooLarge(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through to the 413 handler (not a 400)."""

    def __init__(self) -> None:
        super().__init__(413, detail=[{"field": "body", "message": "request body too large"}])


async def _too_large(send) -> None:
    body = b'{"detail":[{"field":"body","message":"request body too large"}]}'
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
