"""An app whose sensitive routes riskengine guards: run riskengine (`make serve`), then

    RISKENGINE_URL=http://127.0.0.1:8000 RISKENGINE_API_KEY=demo-key \\
        .venv/bin/uvicorn examples.guarded_app:app --port 8080

and try `curl -H 'X-User: alice' localhost:8080/dashboard`. A real app takes the user and session
from its own login cookie; the X-User / X-Session-* headers only stand in for that here, and
X-Forwarded-For is only to be trusted when the app sits behind a proxy that sets it.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request

from riskengine.integration import AsyncRiskClient, RiskGuard, Subject

api = FastAPI(title="guarded example")


@api.get("/dashboard")
async def dashboard(request: Request) -> dict:
    return {"page": "dashboard", "risk_level": request.state.risk.risk_level}


@api.post("/payments")
async def pay(request: Request) -> dict:
    return {"paid": (await request.json())["amount"], "risk_level": request.state.risk.risk_level}


@api.post("/account/close")
async def close_account() -> dict:
    return {"closed": True}


async def subject(scope: dict, body: bytes) -> Subject | None:
    """Who is acting: here from demo headers; in a real app from its session cookie."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    if "x-user" not in headers:
        return None
    session = {k: headers[f"x-session-{k.replace('_', '-')}"] for k in ("id", "acr", "auth_time")
               if f"x-session-{k.replace('_', '-')}" in headers}
    extra = {}
    if body:
        sent = json.loads(body)
        extra = {k: sent[k] for k in ("amount", "currency", "payee_id") if k in sent}
    ip = headers.get("x-forwarded-for", (scope.get("client") or ("127.0.0.1", 0))[0]).split(",")[0].strip()
    return Subject(headers["x-user"], ip, headers.get("user-agent"), headers.get("x-device"),
                   session or None, extra)


def build(engine_url: str, api_key: str) -> RiskGuard:
    routes = {("GET", "/dashboard"): "view_dashboard", ("POST", "/payments"): "payment",
              ("POST", "/account/close"): "delete_account"}
    return RiskGuard(api, AsyncRiskClient(engine_url, api_key), routes, subject)


app = build(os.environ.get("RISKENGINE_URL", "http://127.0.0.1:8000"), os.environ.get("RISKENGINE_API_KEY", ""))
