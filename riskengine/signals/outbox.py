"""One background sender for every outbound signal: a bounded queue, retries with backoff, no waiting.

``put`` never blocks the caller (the event loop serving ``/score``): when the queue is full the
message is dropped and counted, because a slow receiver must not become the engine's outage.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

log = logging.getLogger("riskengine.signals")


@dataclass(slots=True)
class Message:
    """One delivery: where, what, and how often to try. ``build`` runs on the sender's thread
    (signing, reading the user's pseudonym) so nothing of it costs the request path."""

    url: str
    build: Callable[[], tuple[bytes, dict[str, str]]]
    max_attempts: int
    label: str                                   # "webhook" or "caep": for logs and counters, never ids


@dataclass
class Counters:
    delivered: int = 0
    failed: int = 0                              # gave up after max_attempts
    dropped: int = 0                             # queue full
    by_label: dict[str, int] = field(default_factory=dict)


class Outbox:
    def __init__(self, max_queued: int = 10_000, timeout_s: float = 5.0, base_delay_s: float = 0.5,
                 max_delay_s: float = 60.0) -> None:
        self._queue: queue.Queue[Message | None] = queue.Queue(max_queued)
        self._http = httpx.Client(timeout=timeout_s)
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.counters = Counters()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riskengine-signals", daemon=True)
        self._thread.start()

    def put(self, message: Message) -> bool:
        try:
            self._queue.put_nowait(message)
            return True
        except queue.Full:
            self.counters.dropped += 1
            log.warning("signals outbox full: a %s message was dropped", message.label)
            return False

    def close(self, drain_s: float = 2.0) -> None:
        """Deliver what is queued for up to ``drain_s``, then stop (retries in progress are abandoned)."""
        deadline = time.monotonic() + drain_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        while True:                               # what is still queued is dropped, and counted
            try:
                if self._queue.get_nowait() is not None:
                    self.counters.dropped += 1
            except queue.Empty:
                break
        self._queue.put(None)
        self._thread.join(timeout=drain_s + 1)    # a delivery in flight may outlive this; it builds nothing more
        if not self._thread.is_alive():
            self._http.close()

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            if self._stopping.is_set():           # closing: nothing more is built (the engine is going away)
                self.counters.dropped += 1
                continue
            try:
                self._deliver(message)
            except Exception:                     # a bug in one message must not stop the sender
                log.exception("signals: a %s message could not be built", message.label)
                self.counters.failed += 1

    def _deliver(self, message: Message) -> None:
        body, headers = message.build()
        for attempt in range(message.max_attempts):
            if attempt:
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
                if self._stopping.wait(delay * random.uniform(0.8, 1.2)):
                    return
            try:
                status = self._http.post(message.url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
                log.info("signals: %s delivery attempt %d failed (%s)", message.label, attempt + 1,
                         type(exc).__name__)
                continue
            if 200 <= status < 300:
                self.counters.delivered += 1
                self.counters.by_label[message.label] = self.counters.by_label.get(message.label, 0) + 1
                return
            if 400 <= status < 500 and status not in (408, 429):
                break                             # the receiver refuses this message: retrying won't help
            log.info("signals: %s delivery attempt %d got %d", message.label, attempt + 1, status)
        self.counters.failed += 1
        log.warning("signals: gave up on a %s message after %d attempts", message.label, message.max_attempts)
