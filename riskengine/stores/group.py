"""Group commit: one writer thread per store commits whatever arrived while its last
transaction ran, so a busy service pays one COMMIT (and fsync, or round trip) for many events.

``submit`` hands back a ``concurrent.futures.Future``: the service awaits it on its event
loop (``asyncio.wrap_future``) instead of parking a thread per request, and ``commit``
callers block on ``.result()``. A future resolves only once its group is durable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from riskengine.stores.base import StoreUnavailable

#: run(items) -> one outcome per item: None, or the exception that item's caller gets
GroupRun = Callable[[list[Any]], list[BaseException | None]]


def done(outcome: BaseException | None = None) -> Future:
    """An already resolved future, for stores that write in the caller's thread."""
    future: Future = Future()
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
    return future


class GroupCommit:
    """A writer thread running ``run(group)``; an exception from ``run`` itself (the transaction
    failed) goes to every caller of that group."""

    def __init__(self, run: GroupRun, name: str, max_group: int = 64) -> None:
        self._run, self._name, self._max = run, name, max_group
        self._queue: list[tuple[Any, Future]] = []
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: Any) -> Future:
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            if self._thread is None:          # started on first use: a store only read never needs it
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._queue.append((item, future))
            self._ready.notify()
        return future

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return                    # closed and drained
                group, self._queue = self._queue[: self._max], self._queue[self._max:]
            try:
                outcomes = self._run([item for item, _ in group])
            except BaseException as failed:   # noqa: BLE001 - handed to each caller, who raises it
                outcomes = [failed] * len(group)
            for (_, future), outcome in zip(group, outcomes):
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)
