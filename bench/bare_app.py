"""The baseline /score: what a FastAPI user writes, with the same request schema and response model.

An ``async def`` endpoint taking the real ``riskengine.api.schemas.ScoreRequest`` as its body
(strict types, unknown fields refused, lengths and patterns, IP parsed and normalised, RFC 3339
timestamps parsed) and answering a constant decision through the real ``ScoreResponse`` model. No
API-key check, no middleware, no store, no model: what is left is the framework's own cost.

With ``BARE_STACK=1`` it also gets the real service's gate (api/middleware.py: API-key check,
latency metric, rate limit, in-flight cap, body deadline and size limit), still without the
engine: the difference to the plain bare endpoint is that layer's cost.
Run: ``uvicorn --app-dir bench bare_app:app``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from riskengine.api.schemas import ScoreRequest, ScoreResponse

app = FastAPI(title="riskengine bare baseline")
_ANSWER = {"risk_score": 0.02, "risk_level": "low", "decision": "allow", "required_acr": "aal1", "max_age": None,
           "challenge": None, "reasons": [], "exemption": None, "model_version": "bare", "policy_version": "bare"}


@app.post("/score", response_model=ScoreResponse)
async def score(body: ScoreRequest) -> ScoreResponse:
    return ScoreResponse(event_id=body.event_id or "generated", **_ANSWER)


if os.environ.get("BARE_STACK"):
    from riskengine.api.app import PROBES
    from riskengine.api.auth import KeyRing
    from riskengine.api.middleware import Gate
    from riskengine.api.ratelimit import Buckets

    app.add_middleware(Gate, keys=KeyRing(os.environ.get("RISKENGINE_API_KEYS", "")),
                       buckets=Buckets(per_second=1e6, burst=1e6), open_paths=(*PROBES, "/docs", "/openapi.json"),
                       max_body_bytes=64 * 1024, read_timeout=5.0, max_in_flight=1000)
