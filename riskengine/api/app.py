"""The ASGI app: ``create_app(settings)`` wires the Engine into FastAPI's lifespan.

One path for every request: the gate (api/middleware.py: metric, key, rate limit, load cap, body
guard), FastAPI's router, a thin route (api/routes.py), the error handlers (api/errors.py). The
routes are mounted twice, at ``/`` and ``/v1/``: the same functions, not a copy.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from riskengine import tracing
from riskengine.api import errors, metrics, openapi, routes
from riskengine.api.auth import KeyRing
from riskengine.api.middleware import Gate
from riskengine.api.ratelimit import Buckets
from riskengine.engine import Engine
from riskengine.home import open_engine
from riskengine.settings import Settings
from riskengine.signals import routes as signal_routes

log = logging.getLogger("riskengine.api")
PROBES = ("/health", "/livez", "/readyz")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
#: the Shared Signals discovery documents: public by design (OpenID SSF 1.0), so receivers fetch them unauthenticated
DISCOVERY = ("/.well-known/ssf-configuration", "/jwks.json")


#: FastAPI's own OpenTelemetry (its ``telemetry`` option, in recent versions) traces through the
#: global provider with raw paths (``DELETE /users/<id>``) and client addresses; the spans of
#: riskengine.tracing carry neither, so FastAPI's are switched off wherever it has them.
_WITHOUT_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    keys = KeyRing(settings.api_keys.get_secret_value(), settings.api_keys_file)
    if not len(keys):
        log.warning("no API keys configured (RISKENGINE_API_KEYS): every authenticated request gets 401")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.worker_threads > 0:     # plain-def handlers share the GIL: few threads, no convoy
            anyio.to_thread.current_default_thread_limiter().total_tokens = settings.worker_threads
        if settings.tracing:
            tracing.enable()
        try:
            with (engine or open_engine(settings)) as opened, _signals(settings, opened) as signals:
                opened.conflicted = metrics.CONFLICTS.inc
                gc.freeze()     # the model, GeoIP tables, policy...: kept for good, so no collection walks them
                yield {"engine": opened, "signals": signals, "max_clock_skew_s": settings.max_clock_skew_seconds}
        finally:
            metrics.process_exited()
            if settings.tracing:
                tracing.disable()

    docs = settings.docs
    app = FastAPI(title="riskengine", version="1", lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url="/redoc" if docs else None, openapi_url="/openapi.json" if docs else None,
                  **_WITHOUT_NATIVE_TELEMETRY)
    app.state.keys = keys
    app.include_router(routes.router)
    app.include_router(routes.router, prefix="/v1")
    app.include_router(signal_routes.router)
    errors.install(app)
    openapi.install(app, open_paths=(*PROBES, *DISCOVERY))
    open_paths = [*PROBES, *(f"/v1{p}" for p in PROBES), *DISCOVERY, *(DOCS if docs else ())]
    app.add_middleware(Gate, keys=keys, buckets=Buckets(settings.rate_limit_per_second, settings.rate_limit_burst),
                       open_paths=open_paths, max_body_bytes=settings.max_body_bytes,
                       read_timeout=settings.read_timeout_seconds, max_in_flight=settings.max_in_flight,
                       access_log=settings.access_log)
    return app


@contextmanager
def _signals(settings: Settings, engine: Engine) -> Iterator[Any]:
    """Webhooks and CAEP when ``RISKENGINE_SIGNALS`` names a file; a broken file stops the start."""
    if settings.signals is None:
        yield None
        return
    from riskengine.signals.config import load_config
    from riskengine.signals.transmitter import Transmitter

    transmitter = Transmitter(load_config(settings.signals), engine.pseudonyms.subject)
    engine.listeners.append(transmitter.on_recorded)
    try:
        yield transmitter
    finally:
        engine.listeners.remove(transmitter.on_recorded)
        transmitter.close()
