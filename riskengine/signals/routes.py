"""The transmitter's discovery documents (OpenID SSF 1.0): public, as receivers fetch them unauthenticated."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

router = APIRouter(tags=["shared signals"])


def _transmitter(request: Request):
    transmitter = getattr(request.state, "signals", None)
    if transmitter is None or transmitter.configuration() is None:
        raise HTTPException(status_code=404, detail=[{"field": "path", "message": "no CAEP transmitter configured"}])
    return transmitter


@router.get("/.well-known/ssf-configuration")
async def ssf_configuration(request: Request) -> dict:
    return _transmitter(request).configuration()


@router.get("/jwks.json")
async def jwks(request: Request) -> dict:
    return _transmitter(request).jwks()
