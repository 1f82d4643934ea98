"""Per-API-key rate limits: a token bucket per client, checked (api/middleware.py) before the body is read.

A client that goes over its rate gets ``429`` with ``Retry-After`` and costs one hash of its key:
no body parsing, no store access, no state change. Unknown or missing keys get their ``401``
first. Buckets live in the process: with several workers (or machines) each keeps its own,
so the effective limit is the per-process limit times the number of processes. That is on purpose:
a limit shared through Redis would add a round trip to every request, and an operator sizing
``RISKENGINE_RATE_LIMIT_PER_SECOND`` can divide by the worker count instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prometheus_client import Counter

from riskengine.api.metrics import REGISTRY

RATE_LIMITED = Counter("riskengine_rate_limited_total", "Requests answered 429, by client", ["client"],
                       registry=REGISTRY)


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each request takes one.

    >>> bucket = TokenBucket(rate=1, burst=2, clock=lambda: 0.0)
    >>> bucket.take(), bucket.take(), bucket.take()
    (0.0, 0.0, 1.0)
    """

    __slots__ = ("rate", "burst", "tokens", "updated", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(burst, 1.0), clock
        self.tokens, self.updated = self.burst, clock()

    def take(self) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Buckets:
    """Each client's bucket. Used on the event loop only (no awaits between read and write): no lock."""

    def __init__(self, per_second: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self.buckets: dict[str, TokenBucket] = {}        # one per configured client: bounded by the key list

    def take(self, client: str) -> float:
        """0 when ``client`` may go on (a token taken, or no limit); else the seconds until it may."""
        if self.per_second <= 0:
            return 0.0
        bucket = self.buckets.get(client)
        if bucket is None:
            bucket = self.buckets[client] = TokenBucket(self.per_second, self.burst, self.clock)
        return bucket.take()

async def too_many(send: Callable, wait: float) -> None:
    retry_after = str(max(1, math.ceil(wait))).encode()    # delta-seconds: a whole number (RFC 9110)
    body = b'{"detail":"rate limit exceeded for this API key; retry later"}'
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", retry_after)]})
    await send({"type": "http.response.body", "body": body})
