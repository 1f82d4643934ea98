"""Thin HTTP handlers over the Engine, served at ``/...`` and ``/v1/...`` (the same functions).

Every body is read as bytes and validated once, in pydantic's JSON mode (``parsed``), whatever its
content type; the caller comes from the gate (api/middleware.py) and each route states the scope
it needs (``allowed``). Both are plain calls in the handler rather than FastAPI dependencies:
dependency solving cost more CPU per ``/score`` than scoring the event (bench/README.md), and the
OpenAPI document gets the bodies and the bearer scheme from api/openapi.py instead. ``/score``
runs on the event loop: scoring is CPU work a thread would only make wait for the GIL, and the
store's commit is awaited. The blocking rest goes to the threadpool (``run_in_threadpool``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from riskengine.api import metrics
from riskengine.tracing import span
from riskengine.api.auth import Client
from riskengine.api.errors import COMMON, WITH_BODY, ErrorResponse, field_error, invalid_body
from riskengine.api.schemas import (FeedbackRequest, FeedbackResponse, HealthResponse, ScoreRequest,
                                    ScoreResponse)
from riskengine.engine import Engine, EventIdTaken
from riskengine.inputs import TEXT_PATTERN, repeated_member, text_problem
from riskengine.events import check_id, tenant_key
from riskengine.stores import StoreUnavailable

router = APIRouter()
Model = TypeVar("Model", bound=BaseModel)


async def parsed(request: Request, model: type[Model]) -> Model:
    """The one parser: the raw bytes through ``model.model_validate_json`` (400 not JSON, 422 a field),
    and a member name given twice refused (``inputs.repeated_member``: readers disagree on which copy counts)."""
    raw = await request.body()
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    try:
        repeated = repeated_member(raw)
    except (ValueError, RecursionError):          # read above, so not expected: refused, never a 500
        raise field_error(400, "body", "not JSON this server can read") from None
    if repeated is not None:
        raise field_error(422, repeated, "given more than once in its object: send each member once "
                                         "(JSON readers disagree on which copy counts)")
    for field in ("user_id", "event_id"):
        if isinstance(value := getattr(body, field, None), str):
            _checked(field, value)
    return body


def _checked(field: str, value: str) -> str:
    """422 for an id holding ``tenant_key``'s separator (it could name another tenant's id)."""
    try:
        return check_id(field, value)
    except ValueError as exc:
        raise field_error(422, field, str(exc).partition(": ")[2]) from None


def allowed(request: Request, scope: str) -> Client:
    """The gate's client, if its key carries ``scope`` (else 403)."""
    client: Client = request.scope["state"]["client"]
    if scope not in client.scopes:
        raise HTTPException(403, detail=f"this API key lacks the {scope!r} scope")
    return client


def engine_of(request: Request) -> Engine:
    return request.scope["state"]["engine"]


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the JSON body ``parsed`` reads (api/openapi.py adds the schema)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


@router.post("/score", response_model=ScoreResponse, openapi_extra=body_doc(ScoreRequest),
             responses={**WITH_BODY,
                        409: {"model": ErrorResponse, "description": "event_id already names another event"},
                        503: {"model": ScoreResponse | ErrorResponse, "description":
                        "nothing was recorded: the store is unreachable (the body carries the policy's fail-closed "
                        "answer for the action), the score could not be computed, or the service is overloaded"}})
async def score(request: Request) -> Response:
    client, engine = allowed(request, "score"), engine_of(request)
    with span("parse"):
        body = await parsed(request, ScoreRequest)
        event = body.to_event(datetime.now(timezone.utc), client.tenant,
                              max_skew_s=request.scope["state"]["max_clock_skew_s"])
    try:
        decision = await engine.score(event, client.name)
    except EventIdTaken as taken:
        raise field_error(409, "event_id", str(taken)) from None
    metrics.observe(decision, body.action, engine.policy)
    content = ScoreResponse.from_decision(decision, client.tenant).model_dump_json()
    if decision.failure == "store_unavailable":
        # a 200 promises a durable record; this answer was not recorded, so it is a 503 whose
        # body still tells a client that reads it what the policy wants (deny or step up, never allow)
        metrics.STORE_ERRORS.inc()
        return Response(content, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(content, media_type="application/json")


@router.post("/feedback", response_model=FeedbackResponse, openapi_extra=body_doc(FeedbackRequest),
             responses={**WITH_BODY, 404: {"model": ErrorResponse, "description": "unknown event_id"}})
async def feedback(request: Request) -> FeedbackResponse:
    client, engine = allowed(request, "feedback"), engine_of(request)
    body = await parsed(request, FeedbackRequest)
    recorded = await engine.feedback(tenant_key(client.tenant, body.event_id), body.outcome, client.name)
    metrics.FEEDBACK.labels(outcome=body.outcome, result="recorded" if recorded else "unknown_event").inc()
    if not recorded:
        raise field_error(404, "event_id", "unknown event_id")
    return FeedbackResponse(event_id=body.event_id, recorded=True)


#: documents the rules ``erase_user`` checks itself (so the answer is its usual 422 body)
UserIdPath = Annotated[str, Path(description="the user id, percent-encoded", json_schema_extra={
    "minLength": 1, "maxLength": 256, "pattern": TEXT_PATTERN})]


@router.delete("/users/{user_id:path}", status_code=204,
               responses={**COMMON, 404: {"model": ErrorResponse, "description": "unknown user_id"},
                          422: {"model": ErrorResponse, "description": "user_id out of bounds"}})
async def erase_user(request: Request, user_id: UserIdPath) -> Response:
    client, engine = allowed(request, "erase"), engine_of(request)
    if not 1 <= len(user_id) <= 256:
        raise field_error(422, "user_id", "1 to 256 characters")
    if (problem := text_problem(user_id)) is not None:
        raise field_error(422, "user_id", problem)
    _checked("user_id", user_id)
    if not await run_in_threadpool(_erase, engine, tenant_key(client.tenant, user_id), client.name):
        raise field_error(404, "user_id", "unknown user_id")
    return Response(status_code=204)


def _erase(engine: Engine, user_id: str, client: str) -> bool:
    """Whether this tenant knew the user (every scored event creates the user's secret); the trail
    records every erasure request, even of no one."""
    known = engine.store.user_secret(user_id, engine.user_key(user_id), create=False) is not None
    engine.erase(user_id, client)
    return known


@router.get("/health", response_model=HealthResponse, response_model_exclude_none=True,
            responses={503: {"model": ErrorResponse, "description": "the store is not answering"}})
def health(request: Request) -> HealthResponse | JSONResponse:
    try:
        state = engine_of(request).health()
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
def readyz(request: Request) -> Readiness | JSONResponse:
    """Store answering, a model and a policy loaded; else 503 naming which is not."""
    engine = engine_of(request)
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
def prometheus(request: Request) -> Response:
    allowed(request, "metrics")
    body, content_type = metrics.render(engine_of(request))
    return Response(body, media_type=content_type)


_PATH = re.compile(r"(?<![^\s'\"(=])(?:[A-Za-z]:)?(?:[\\/][^\\/\s'\"`:]+)+[\\/]([^\\/\s'\"`:]+)")


def without_paths(text: str | None) -> str | None:
    """An error message with every absolute path cut to its file name: answers never show paths.

    >>> without_paths("models/x: sha256 of /srv/re/models/2026/model.pkl differs")
    'models/x: sha256 of model.pkl differs'
    """
    return None if text is None else _PATH.sub(r"\1", text)
