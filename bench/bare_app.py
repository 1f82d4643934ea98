"""The baseline /score: FastAPI with the same request schema and response model, and no engine.

It parses and validates the body exactly as the real endpoint does (``riskengine.api.schemas.
ScoreRequest``: strict types, unknown fields refused, lengths and patterns, IP parsed and
normalised, RFC 3339 timestamps parsed), runs in FastAPI's threadpool like the real plain-``def``
handler, and answers a constant decision through the real ``ScoreResponse`` model. No API-key
check, no middleware, no store, no model: what is left is the framework's own cost per request.

With ``BARE_STACK=1`` it also gets the real service's HTTP layer (API-key check, latency
middleware, rate limit, body deadline and size limit), still without the engine: the difference
to the plain bare endpoint is that layer's cost, the rest of /score's is the engine and store.
Run: ``uvicorn --app-dir bench bare_app:app``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskengine.api.schemas import ScoreRequest, ScoreResponse  # noqa: E402

app = FastAPI(title="riskengine bare baseline")
_ANSWER = {"risk_score": 0.02, "risk_level": "low", "decision": "allow", "required_acr": "aal1", "max_age": None,
           "challenge": None, "reasons": [], "exemption": None, "model_version": "bare", "policy_version": "bare"}

if os.environ.get("BARE_STACK"):
    from riskengine.api import app as service
    from riskengine.api.auth import ClientDep, KeyRing
    from riskengine.api.ratelimit import Buckets, RateLimit
    from riskengine.api.timeouts import BodyTimeout

    keys = KeyRing(os.environ.get("RISKENGINE_API_KEYS", ""))
    app.state.keys = keys

    @app.post("/score", response_model=ScoreResponse)
    def score_with_stack(body: ScoreRequest, client: ClientDep) -> ScoreResponse:
        return ScoreResponse(event_id=body.event_id or "generated", **_ANSWER)

    app.add_middleware(service.BodyLimit, max_bytes=64 * 1024)
    app.add_middleware(BodyTimeout, seconds=5.0)
    app.add_middleware(RateLimit, buckets=Buckets(keys, per_second=1e6, burst=1e6))
    app.add_middleware(service.Observe)
else:
    @app.post("/score", response_model=ScoreResponse)
    def score(body: ScoreRequest) -> ScoreResponse:
        return ScoreResponse(event_id=body.event_id or "generated", **_ANSWER)
