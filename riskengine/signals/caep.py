"""OpenID Shared Signals: CAEP events as Security Event Tokens (RFC 8417), signed with ES256 (joserfc).

The transmitter's key is an EC P-256 private JWK in a file of the operator's (created 0600 when
missing); receivers fetch the public half from ``/jwks.json``, which the SSF configuration
(``/.well-known/ssf-configuration``) names. Delivery is push (RFC 8935): one SET per POST,
``Content-Type: application/secevent+jwt``; a receiver answers 202.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISK_LEVEL_CHANGE = CAEP + "risk-level-change"
CREDENTIAL_CHANGE = CAEP + "credential-change"
PUSH = "urn:ietf:rfc:8935"
SET_TYPE = "secevent+jwt"


def load_key(path: Path) -> ECKey:
    """The signing key: read, or created once with owner-only permissions (like the audit key)."""
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text(encoding="utf-8")))
    key = ECKey.generate_key("P-256", private=True, auto_kid=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(key.as_dict(private=True), out)
    return key


def jwks(key: ECKey) -> dict[str, Any]:
    public = key.as_dict(private=False)
    return {"keys": [{**public, "use": "sig", "alg": "ES256"}]}


def configuration(issuer: str) -> dict[str, Any]:
    """SSF transmitter metadata (OpenID SSF 1.0 §7.1): what a receiver needs to trust our SETs."""
    base = issuer.rstrip("/")
    return {"spec_version": "1_0", "issuer": issuer, "jwks_uri": f"{base}/jwks.json",
            "delivery_methods_supported": [PUSH], "default_subjects": "NONE",
            "events_supported": [RISK_LEVEL_CHANGE, CREDENTIAL_CHANGE]}


def security_event(key: ECKey, issuer: str, audience: str, subject: dict[str, str], event_type: str,
                   payload: dict[str, Any], now: float | None = None) -> bytes:
    """One SET: ``iss``, ``aud``, ``jti``, ``iat``, ``sub_id`` and exactly one event."""
    claims = {"iss": issuer, "aud": audience, "jti": uuid.uuid4().hex, "iat": int(now or time.time()),
              "sub_id": subject, "events": {event_type: payload}}
    header = {"alg": "ES256", "typ": SET_TYPE, "kid": key.kid}
    return jwt.encode(header, claims, key).encode("ascii")
