"""The transmitter's discovery documents (OpenID SSF 1.0): public, as receivers fetch them unauthenticated."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from riskengine.api.errors import ErrorResponse

router = APIRouter(tags=["shared signals"])


def _transmitter(request: Request):
    transmitter = getattr(request.state, "signals", None)
    if transmitter is None or transmitter.configuration() is None:
        raise HTTPException(status_code=404, detail=[{"field": "path", "message": "no CAEP transmitter configured"}])
    return transmitter


#: without CAEP these documents do not exist (API.md); the body is the service's usual error body
_ABSENT = {404: {"model": ErrorResponse, "description": "no CAEP transmitter configured"}}


@router.get("/.well-known/ssf-configuration", responses=_ABSENT)
async def ssf_configuration(request: Request) -> dict:
    return _transmitter(request).configuration()


@router.get("/jwks.json", responses=_ABSENT)
async def jwks(request: Request) -> dict:
    return _transmitter(request).jwks()
