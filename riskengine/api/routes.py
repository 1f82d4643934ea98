"""Thin HTTP handlers over the Engine, served at ``/...`` and ``/v1/...`` (the same functions).

Every body is read as bytes and validated once, in pydantic's JSON mode (``json_body``), whatever
its content type; the caller comes from the gate (api/middleware.py) and each route states the
scope it needs (``allowed``). ``/score`` runs on the event loop: scoring is CPU work a thread would
only make wait for the GIL, and the store's commit is awaited. The rest, rare and blocking, run in
FastAPI's threadpool (plain ``def``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from riskengine.api import metrics
from riskengine.api.auth import Client
from riskengine.api.errors import COMMON, WITH_BODY, ErrorResponse, field_error, invalid_body
from riskengine.api.schemas import (FeedbackRequest, FeedbackResponse, HealthResponse, ScoreRequest,
                                    ScoreResponse)
from riskengine.engine import Engine
from riskengine.events import tenant_key
from riskengine.stores import StoreUnavailable

router = APIRouter()
Model = TypeVar("Model", bound=BaseModel)


async def get_engine(request: Request) -> Engine:
    """``async``: a plain ``def`` dependency would cost a threadpool hop per request."""
    return request.state.engine


def json_body(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """The one parser: the raw bytes through ``model.model_validate_json`` (400 not JSON, 422 a field)."""
    async def parsed(request: Request) -> Model:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise invalid_body(exc) from None
    return parsed


def allowed(scope: str) -> Callable[[Request], Awaitable[Client]]:
    """The gate's client, if its key carries ``scope`` (else 403)."""
    async def client(request: Request) -> Client:
        found: Client = request.state.client
        if scope not in found.scopes:
            raise HTTPException(403, detail=f"this API key lacks the {scope!r} scope")
        return found
    return client


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the JSON body ``json_body`` reads (api/openapi.py adds the schema)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


EngineDep = Annotated[Engine, Depends(get_engine)]


@router.post("/score", response_model=ScoreResponse, openapi_extra=body_doc(ScoreRequest),
             responses={**WITH_BODY, 503: {"model": ScoreResponse | ErrorResponse, "description":
                        "nothing was recorded: the store is unreachable (the body carries the policy's fail-closed "
                        "answer for the action), the score could not be computed, or the service is overloaded"}})
async def score(body: Annotated[ScoreRequest, Depends(json_body(ScoreRequest))], engine: EngineDep,
                client: Annotated[Client, Depends(allowed("score"))]) -> Response:
    decision = await engine.score_async(body.to_event(datetime.now(timezone.utc), client.tenant), client.name)
    metrics.DECISIONS.labels(decision=decision.decision, action=metrics.action_label(body.action)).inc()
    content = ScoreResponse.from_decision(decision, client.tenant).model_dump_json()
    if decision.failure == "store_unavailable":
        # a 200 promises a durable record; this answer was not recorded, so it is a 503 whose
        # body still tells a client that reads it what the policy wants (deny or step up, never allow)
        metrics.STORE_ERRORS.inc()
        return Response(content, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(content, media_type="application/json")


@router.post("/feedback", response_model=FeedbackResponse, openapi_extra=body_doc(FeedbackRequest),
             responses={**WITH_BODY, 404: {"model": ErrorResponse, "description": "unknown event_id"}})
def feedback(body: Annotated[FeedbackRequest, Depends(json_body(FeedbackRequest))], engine: EngineDep,
             client: Annotated[Client, Depends(allowed("feedback"))]) -> FeedbackResponse:
    if not engine.feedback(tenant_key(client.tenant, body.event_id), body.outcome, client.name):
        raise field_error(404, "event_id", "unknown event_id")
    return FeedbackResponse(event_id=body.event_id, recorded=True)


@router.delete("/users/{user_id:path}", status_code=204,
               responses={**COMMON, 404: {"model": ErrorResponse, "description": "unknown user_id"},
                          422: {"model": ErrorResponse, "description": "user_id out of bounds"}})
def erase_user(user_id: str, engine: EngineDep, client: Annotated[Client, Depends(allowed("erase"))]) -> Response:
    if not 1 <= len(user_id) <= 256:
        raise field_error(422, "user_id", "1 to 256 characters")
    key = tenant_key(client.tenant, user_id)
    # every scored event creates the user's secret: none means this tenant never saw the user
    known = engine.store.user_secret(key, engine.user_key(key), create=False) is not None
    engine.erase(key, client.name)          # the trail records every erasure request, even of no one
    if not known:
        raise field_error(404, "user_id", "unknown user_id")
    return Response(status_code=204)


@router.get("/health", response_model=HealthResponse, response_model_exclude_none=True,
            responses={503: {"model": ErrorResponse, "description": "the store is not answering"}})
def health(engine: EngineDep) -> HealthResponse | JSONResponse:
    try:
        state = engine.health()
    except StoreUnavailable:                # a load balancer takes this replica out until its store answers
        return JSONResponse({"status": "unavailable", "reason": "profile store not answering"},
                            status_code=503, headers={"Retry-After": "1"})
    return HealthResponse(**{k: without_paths(v) if k.endswith("_error") else v for k, v in state.items()})


class Liveness(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    not_ready: list[str] = []


@router.get("/livez", response_model=Liveness)
async def livez() -> Liveness:
    """The process serves: nothing else is checked, so a store outage never restarts a replica."""
    return Liveness(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(engine: EngineDep) -> Readiness | JSONResponse:
    """Store answering, a model and a policy loaded; else 503 naming which is not."""
    not_ready = [name for name, ready in (("store", _store_answers(engine)), ("model", engine.scorer is not None),
                                          ("policy", engine.policy is not None)) if not ready]
    if not_ready:
        return JSONResponse({"status": "unavailable", "not_ready": not_ready}, status_code=503,
                            headers={"Retry-After": "1"})
    return Readiness(status="ok")


def _store_answers(engine: Engine) -> bool:
    try:
        engine.store.ping()
        return True
    except StoreUnavailable:
        return False


@router.get("/metrics", response_class=Response, responses={**COMMON, 200: {
    "content": {"text/plain": {}}, "description": "Prometheus text format"}})
def prometheus(engine: EngineDep, client: Annotated[Client, Depends(allowed("metrics"))]) -> Response:
    body, content_type = metrics.render(engine)
    return Response(body, media_type=content_type)


_PATH = re.compile(r"(?<![^\s'\"(=])(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"`:]+)+[\\/]([^\\/\s'\"`:]+)")


def without_paths(text: str | None) -> str | None:
    """An error message with every absolute path cut to its file name: answers never show paths.

    >>> without_paths("models/x: sha256 of /srv/re/models/2026/model.pkl differs")
    'models/x: sha256 of model.pkl differs'
    """
    return None if text is None else _PATH.sub(r"\1", text)
