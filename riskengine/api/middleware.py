"""The one gate every HTTP request passes: request id, latency metric, API key, rate limit, load cap, body guard.

Plain ASGI rather than ``BaseHTTPMiddleware`` (which costs a task and two memory streams per
request), and one class rather than four stacked ones: each request costs one header scan, one
key lookup and one bucket. In order:

1. the request id (api/logs.py), returned as ``X-Request-ID``; with tracing on, the request's
   span; latency by route template (never the raw path, which may hold a user id), for every
   answer; with ``RISKENGINE_ACCESS_LOG``, one log line (method, route template, status, time);
2. the probes (``/health``, ``/livez``, ``/readyz``, and the docs when enabled) go straight on;
3. the API key: missing or unknown -> ``401`` (the client it names is put in ``scope["state"]``);
4. the client's rate limit -> ``429``; more than ``max_in_flight`` requests being served -> ``503``;
5. a body announced larger than ``max_body_bytes`` -> ``413`` before it is read; the body read
   later must stay within that size (``413``) and arrive within ``read_timeout`` seconds of the
   app asking for it (``408``).

Connections that are open but send nothing never reach this gate, so they take no request's
place (README: "Connections and reverse proxies").
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.exceptions import HTTPException

from riskengine import tracing
from riskengine.api import logs, metrics
from riskengine.api.auth import KeyRing
from riskengine.api.ratelimit import RATE_LIMITED, Buckets, too_many

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
_access = logging.getLogger("riskengine.access")


class Gate:
    def __init__(self, app: Any, keys: KeyRing, buckets: Buckets, open_paths: Collection[str],
                 max_body_bytes: int, read_timeout: float, max_in_flight: int, access_log: bool = False) -> None:
        self.app, self.keys, self.buckets, self.open_paths = app, keys, buckets, frozenset(open_paths)
        self.access_log = access_log
        self.max_body_bytes, self.read_timeout, self.max_in_flight = max_body_bytes, read_timeout, max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, template = time.perf_counter(), 500, "unmatched"
        given = traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"traceparent":
                traceparent = value.decode("latin-1")
            elif name == b"tracestate":
                tracestate = value.decode("latin-1")
        request_id = logs.request_id(given, traceparent)
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = logs.REQUEST_ID.set(request_id)
        try:
            with tracing.request_span(scope["method"], traceparent, tracestate) as span:
                if span is not None:
                    header = self._traced(span, scope, given, header)
                try:
                    if scope["path"] in self.open_paths:
                        await self.app(scope, receive, observed)
                    else:
                        await self._guarded(scope, receive, observed)
                finally:
                    template = getattr(scope.get("route"), "path", "unmatched")
                    if span is not None:
                        span.update_name(f"{scope['method']} {template}")
                        span.set_attribute("http.route", template)
                        span.set_attribute("http.response.status_code", status)
        finally:
            elapsed = time.perf_counter() - started
            metrics.LATENCY.labels(template, scope["method"], str(status)).observe(elapsed)
            if self.access_log:
                _access.info("%s %s %d %.1f ms", scope["method"], template, status, elapsed * 1000,
                             extra={"method": scope["method"], "route": template, "status": status,
                                    "duration_ms": round(elapsed * 1000, 3)})
            logs.REQUEST_ID.reset(token)

    @staticmethod
    def _traced(span: Any, scope: Scope, given: str | None, header: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        """With tracing on, a request that named no id of its own is known by its trace id."""
        span.set_attribute("http.request.method", scope["method"])
        if logs.client_request_id(given) is None:
            trace_id = format(span.get_span_context().trace_id, "032x")
            logs.REQUEST_ID.set(trace_id)
            return (b"x-request-id", trace_id.encode())
        return header

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization, length = "", b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        client = self.keys.client_for_header(authorization)
        if client is None:
            return await _answer(send, 401, b'{"detail":"missing or unknown API key"}',
                                 (b"www-authenticate", b"Bearer"))
        if (wait := self.buckets.take(client.name)) > 0:
            RATE_LIMITED.labels(client.name).inc()
            return await too_many(send, wait)
        if self.in_flight >= self.max_in_flight > 0:
            return await _answer(send, 503, b'{"detail":"too many requests in flight; retry later"}',
                                 (b"retry-after", b"1"))
        if length.isdigit() and int(length) > self.max_body_bytes:
            return await _answer(send, 413, _TOO_LARGE)
        scope.setdefault("state", {})["client"] = client
        self.in_flight += 1
        try:
            await self.app(scope, self._body_guard(receive), send)
        finally:
            self.in_flight -= 1

    def _body_guard(self, receive: Receive) -> Receive:
        """``receive`` that raises ``413`` past the size limit and ``408`` past the deadline; once the
        body is complete it hands on ``http.disconnect`` with no deadline."""
        seen, deadline, done = 0, 0.0, False

        async def guarded() -> dict:
            nonlocal seen, deadline, done
            if done or self.read_timeout <= 0:
                return await receive()
            if not deadline:
                deadline = time.monotonic() + self.read_timeout
            try:
                message = await _within(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                raise HTTPException(408, detail=[{"field": "body", "message": "request body not received in time"}],
                                    headers={"Connection": "close"}) from None
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise HTTPException(413, detail=[{"field": "body", "message": "request body too large"}],
                                    headers={"Connection": "close"})
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return guarded


async def _within(waiting: Awaitable[dict], seconds: float) -> dict:
    """``asyncio.timeout`` where there is one (3.11+: no extra task per receive), else ``wait_for``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(max(seconds, 0.0)):
            return await waiting
    return await asyncio.wait_for(waiting, max(seconds, 0.0))


_TOO_LARGE = b'{"detail":[{"field":"body","message":"request body too large"}]}'


async def _answer(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
