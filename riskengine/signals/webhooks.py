"""Webhook bodies and their signatures, in the Standard Webhooks form (as Svix, Stripe-like receivers verify):
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>``.
The timestamp lets a receiver refuse replays; the id lets it drop duplicates of a retried call.

>>> headers = sign(b"s3cret", "msg_1", 1700000000, b'{"a":1}')
>>> headers["webhook-signature"]
'v1,JTnXZsicQmbYBUKbG0PXd2OqV6VmCFiMTEvW8yxopSo='
>>> verify(b"s3cret", headers, b'{"a":1}', now=1700000010)
True
>>> verify(b"s3cret", headers, b'{"a":2}', now=1700000010)
False
"""

from __future__ import annotations

import base64
import hashlib
import hmac

TOLERANCE_S = 300


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    mac = hmac.digest(secret, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode(), "content-type": "application/json"}


def verify(secret: bytes, headers: dict[str, str], body: bytes, now: int) -> bool:
    """What a receiver does (and what the tests do): recompute, compare in constant time, check freshness."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = sign(secret, headers["webhook-id"], timestamp, body)["webhook-signature"]
    except (KeyError, ValueError):
        return False
    fresh = abs(now - timestamp) <= TOLERANCE_S
    return fresh and any(hmac.compare_digest(expected, sig) for sig in headers.get("webhook-signature", "").split())
