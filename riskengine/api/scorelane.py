"""``POST /score`` without FastAPI's per-request machinery, for the requests that are valid.

FastAPI's routing, dependency solving and response handling cost about 0.3 ms of the event
loop per request (bench/README.md: a plain ASGI app validating the same body with the same
``ScoreRequest`` does ~4x the requests a second): more than scoring the event. This lane sits
inside the service's middleware (metrics, rate limit, body deadline and size limit) and serves
a request itself only when FastAPI would accept it: a JSON content type, a JSON body that
``ScoreRequest`` validates, a known API key. Anything else goes on to FastAPI's own ``/score``
route with the body it sent, so errors are FastAPI's, word for word (400, 401, 422 naming the field).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from riskengine.api.auth import KeyRing
from riskengine.api.routes import score_answer
from riskengine.api.schemas import ScoreRequest

Handler = Callable[[Request, Exception], Awaitable[Any]]


class ScoreLane:
    """ASGI middleware; ``handlers`` answer exceptions (the engine's, the body limits') as the app's do."""

    def __init__(self, app: Any, keys: KeyRing, route: Any, handlers: dict[type[Exception], Handler]) -> None:
        self.app, self.keys, self.route, self.handlers = app, keys, route, handlers

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/score":
            return await self.app(scope, receive, send)
        body, more = b"", True
        try:
            while more:
                message = await receive()                   # the outer middleware's deadline and size limit
                if message["type"] != "http.request":      # the client went away
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
        except tuple(self.handlers) as exc:                 # 408, 413: answered as FastAPI would
            response = await self.handlers[_handler_for(exc, self.handlers)](Request(scope), exc)
            return await response(scope, _replay(b""), send)
        request = self._valid(scope, body)
        if request is None:
            return await self.app(scope, _replay(body), send)
        scope["route"] = self.route                         # the latency metric's route label
        parsed, client = request
        try:
            response = await score_answer(parsed, scope["state"]["engine"], client)
        except tuple(self.handlers) as exc:
            response = await self.handlers[_handler_for(exc, self.handlers)](Request(scope), exc)
        await response(scope, _replay(b""), send)

    def _valid(self, scope: dict, body: bytes) -> tuple[ScoreRequest, str] | None:
        """(request, client) when FastAPI would accept this request as it is; else None."""
        content_type = authorization = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"authorization":
                authorization = value
        if content_type.split(b";")[0].strip().lower() != b"application/json" or not body:
            return None
        client = self.keys.client_for_header(authorization.decode("latin-1"))
        if client is None:
            return None
        try:       # one pass in pydantic's JSON parser; anything it refuses goes to FastAPI's json + model
            return ScoreRequest.model_validate_json(body), client
        except ValidationError:
            return None


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
