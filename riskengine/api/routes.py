"""Thin HTTP handlers over the Engine. ``/score`` runs on the event loop (see ``score``); the rest,
rare and blocking, in FastAPI's threadpool (plain ``def``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from riskengine.api import metrics
from riskengine.api.auth import ClientDep
from riskengine.api.schemas import (FeedbackRequest, FeedbackResponse, HealthResponse, ScoreRequest,
                                    ScoreResponse)
from riskengine.engine import Engine
from riskengine.inputs import text_problem
from riskengine.stores import StoreUnavailable

router = APIRouter()


async def get_engine(request: Request) -> Engine:
    """``async``: a plain ``def`` dependency would cost a threadpool hop per request."""
    return request.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


@router.post("/score", response_model=ScoreResponse,
             responses={503: {"model": ScoreResponse, "description": "the store is unreachable: nothing was "
                              "recorded; the body carries the policy's fail-closed answer for the action"}})
async def score(body: ScoreRequest, engine: EngineDep, client: ClientDep, request: Request) -> Response:
    """The contract of /score. Valid requests are served by ``ScoreLane`` (scorelane.py) with this
    same schema; this handler answers the ones it hands over, and defines the OpenAPI entry."""
    return await score_answer(body, engine, client, request.state.max_clock_skew_s)


async def score_answer(body: ScoreRequest, engine: Engine, client: str, max_clock_skew_s: float) -> Response:
    """On the event loop: scoring is CPU work that a thread would only make wait for the GIL, and
    the store's commit, in a group with the rest of the loop turn's, is awaited (``Engine.score_async``)."""
    event = body.to_event(datetime.now(timezone.utc), max_skew_s=max_clock_skew_s)
    decision = await engine.score_async(event, client)
    metrics.DECISIONS.labels(decision=decision.decision, action=metrics.action_label(body.action)).inc()
    content = orjson.dumps(decision.to_dict())     # ScoreResponse's fields (test_api checks it); no re-validation
    if decision.failure == "store_unavailable":
        # a 200 promises a durable record; this answer was not recorded, so it is a 503 whose
        # body still tells a client that reads it what the policy wants (deny or step up, never allow)
        metrics.STORE_ERRORS.inc()
        return Response(content, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(content, media_type="application/json")


@router.post("/feedback", response_model=FeedbackResponse)
def feedback(body: FeedbackRequest, engine: EngineDep, client: ClientDep) -> FeedbackResponse:
    if not engine.feedback(body.event_id, body.outcome, client):
        raise HTTPException(status_code=404, detail=[{"field": "event_id", "message": "unknown event_id"}])
    return FeedbackResponse(event_id=body.event_id, recorded=True)


@router.delete("/users/{user_id:path}", status_code=204)
def erase_user(user_id: str, engine: EngineDep, client: ClientDep) -> Response:
    problem = text_problem(user_id) if 1 <= len(user_id) <= 256 else "1 to 256 characters"
    if problem is not None:
        raise HTTPException(status_code=422, detail=[{"field": "user_id", "message": problem}])
    engine.erase(user_id, client)
    return Response(status_code=204)


@router.get("/health", response_model=HealthResponse, response_model_exclude_none=True)
def health(engine: EngineDep) -> HealthResponse | JSONResponse:
    try:
        return HealthResponse(**engine.health())
    except StoreUnavailable:                # a load balancer takes this replica out until its store answers
        return JSONResponse({"status": "unavailable", "reason": "profile store not answering"},
                            status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics")
def prometheus(engine: EngineDep, client: ClientDep) -> Response:
    body, content_type = metrics.render(engine)
    return Response(body, media_type=content_type)
