"""``POST /score`` without FastAPI's per-request machinery, for the requests that are valid.

FastAPI's routing, dependency solving and response handling cost about 0.3 ms of the event
loop per request (bench/README.md: a plain ASGI app validating the same body with the same
``ScoreRequest`` does ~4x the requests a second): more than scoring the event. This lane is the
app's outermost layer, in front of FastAPI's middleware stack, and serves a request itself only
when FastAPI would accept it: a JSON content type, a known API key within its rate limit, a body
within the size limit and deadline that ``ScoreRequest`` validates. It applies the service
middleware's own rate limit, deadline, size limit and latency metric to what it serves (the same
objects). Anything else goes on to the whole stack and FastAPI's own ``/score`` route with the
body it sent, so errors are FastAPI's, word for word (400, 401, 413, 422 naming the field, 429).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from riskengine.api import metrics
from riskengine.api.auth import KeyRing
from riskengine.api.ratelimit import TAKEN, Buckets
from riskengine.api.routes import score_answer
from riskengine.api.schemas import ScoreRequest
from riskengine.api.timeouts import BodyTimeout

Handler = Callable[[Request, Exception], Awaitable[Any]]


class ScoreLane:
    """The app's outermost ASGI layer; ``handlers`` answer exceptions (the engine's, the body
    limits') as the app's do; ``buckets``, ``deadline`` and ``limit`` are the service middleware's."""

    def __init__(self, app: Any, keys: KeyRing, route: Any, handlers: dict[type[Exception], Handler],
                 buckets: Buckets, deadline: BodyTimeout, limit: Any) -> None:
        self.app, self.keys, self.route, self.handlers = app, keys, route, handlers
        self.buckets, self.deadline, self.limit = buckets, deadline, limit
        self._caught = tuple(handlers)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/score":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        client = self._client(scope)
        if client is None or self.limit.announced_too_large(scope) or self.buckets.take(client) > 0:
            return await self.app(scope, receive, send)     # the stack answers: 401, 413, 415, 429
        scope[TAKEN] = True                                 # this request's token is taken
        body, more = b"", True
        reading = self.limit.limited(self.deadline.timed(receive))
        try:
            while more:
                message = await reading()
                if message["type"] != "http.request":      # the client went away
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
        except self._caught as exc:                         # 408, 413: answered as FastAPI would
            return await self._answer(scope, send, await self._handled(scope, exc), started)
        try:       # one pass in pydantic's JSON parser; anything it refuses goes to FastAPI's json + model
            parsed = ScoreRequest.model_validate_json(body)
        except ValidationError:
            return await self.app(scope, _replay(body), send)
        scope["route"] = self.route
        try:
            state = scope["state"]
            response = await score_answer(parsed, state["engine"], client, state["max_clock_skew_s"])
        except self._caught as exc:
            response = await self._handled(scope, exc)
        await self._answer(scope, send, response, started)

    def _client(self, scope: dict) -> str | None:
        """The API key's client, when the request is JSON with a known key; else None."""
        content_type = authorization = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
        if content_type.split(b";")[0].strip().lower() != b"application/json":
            return None
        return self.keys.client_for_header(authorization.decode("latin-1"))

    async def _handled(self, scope: dict, exc: Exception) -> Any:
        return await self.handlers[_handler_for(exc, self.handlers)](Request(scope), exc)

    async def _answer(self, scope: dict, send: Callable, response: Any, started: float) -> None:
        await response(scope, _replay(b""), send)
        metrics.LATENCY.labels(self.route.path, "POST", str(response.status_code)).observe(
            time.perf_counter() - started)                 # as the Observe middleware labels it


def _handler_for(exc: Exception, handlers: dict[type[Exception], Handler]) -> type[Exception]:
    return next(kind for kind in type(exc).__mro__ if kind in handlers)


def _replay(body: bytes) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that hands the already read body over once, then reports a disconnect."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
