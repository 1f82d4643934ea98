"""Slow clients cannot hold the service: deadlines for a request's headers and for its body.

uvicorn times out idle keep-alive connections but not a client that trickles its headers or its
body a byte at a time, and with ``limit_concurrency`` such connections would soon turn every other
request into a 503. So:

- ``BodyTimeout`` (ASGI middleware): the whole body must arrive within ``seconds`` of the app
  asking for it, or the client gets ``408`` and the connection is closed;
- ``HeaderDeadlineProtocol`` (uvicorn's httptools protocol plus two checks): a request's headers
  must be complete within ``seconds`` of its first byte (or of the connection opening) and may not
  exceed ``max_head_bytes``; otherwise ``408`` / ``431`` and the connection is closed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from riskengine.api.transport import CoalescedWrites


class BodyTimeout:
    """408 when the request body is not complete ``seconds`` after the app starts reading it.

    The timeout is raised as an ``HTTPException`` from ``receive``: FastAPI passes those through
    its body parsing untouched, and the app's error handler answers (``Connection: close``).
    """

    def __init__(self, app: Any, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            return await self.app(scope, receive, send)
        await self.app(scope, self.timed(receive), send)

    def timed(self, receive: Callable) -> Callable[[], Awaitable[dict]]:
        """``receive`` under this deadline (the score lane reads its body through it too)."""
        if self.seconds <= 0:
            return receive
        deadline: float | None = None
        body_done = False

        async def timed_receive() -> dict:
            nonlocal deadline, body_done
            if body_done:                             # after the body: http.disconnect waits freely
                return await receive()
            if deadline is None:
                deadline = time.monotonic() + self.seconds
            try:
                message = await _within(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                raise HTTPException(408, detail=[{"field": "body", "message": "request body not received in time"}],
                                    headers={"Connection": "close"}) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        return timed_receive


async def _within(waiting: Awaitable[dict], seconds: float) -> dict:
    """``asyncio.timeout`` where there is one (3.11+: no extra task per receive), else ``wait_for``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(max(seconds, 0.0)):
            return await waiting
    return await asyncio.wait_for(waiting, max(seconds, 0.0))


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; a request's head must arrive in time and stay small."""

    header_timeout: float = 5.0
    max_head_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_since = 0.0
        self._head_bytes = 0
        self._in_head = False
        self._heard = False                           # any byte at all on this connection

    @classmethod
    def configured(cls, header_timeout: float, max_head_bytes: int) -> type["HeaderDeadlineProtocol"]:
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout, "max_head_bytes": max_head_bytes})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescedWrites(transport, self.loop))    # type: ignore[arg-type]
        self._start_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            self._start_head()                        # the next request on a kept-alive connection

    def data_received(self, data: bytes) -> None:
        self._heard = True
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                return self._refuse(431, b"request header fields too large")
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._stop_head()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _start_head(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._head_since = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(self._head_since + self.header_timeout, self._head_check)

    def _stop_head(self) -> None:
        """The timer is left to lapse: arming and cancelling one per request cost more than the check."""
        self._in_head = False

    def _head_check(self) -> None:
        """The timer fired: a head still arriving since longer than allowed is late; a newer one
        gets the timer again at its own deadline; between requests the timer lapses."""
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        late_at = self._head_since + self.header_timeout
        if self.loop.time() < late_at:
            self._head_timer = self.loop.call_at(late_at, self._head_check)
            return
        if self._heard:
            self._refuse(408, b"request headers not received in time")
        else:
            self.transport.close()                    # opened and said nothing: just close

    def _refuse(self, status: int, message: bytes) -> None:
        self._stop_head()
        if self.transport.is_closing():
            return
        body = b'{"detail":"' + message + b'"}'
        reason = b"Request Timeout" if status == 408 else b"Request Header Fields Too Large"
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
        self.transport.close()
