"""One send per response: what the app writes to a connection in one turn of the event loop.

uvicorn writes a response's head and its body separately, and uvloop sends each at once: two
system calls (and two TCP segments) for every small JSON answer, about a twentieth of a busy
worker's time. The writes of one turn are joined and sent when the turn ends.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    """Wraps a transport; everything but ``write`` and ``close`` goes straight to it."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()                       # what was written before close still goes out, in order
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
