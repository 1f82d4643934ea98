"""The OpenAPI document: FastAPI's, plus what it cannot see.

Routes read their bodies themselves (one JSON-mode parser, api/routes.py), so the body schemas are
added here; the bearer scheme is declared and required on every operation but the probes. Done
through ``app.openapi``, the hook FastAPI documents for extending the schema.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from riskengine.api.schemas import FeedbackRequest, ScoreRequest

BODIES = (ScoreRequest, FeedbackRequest)


def install(app: FastAPI, open_paths: Collection[str]) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, open_paths)
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def build(app: FastAPI, open_paths: Collection[str]) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for model in BODIES:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(body.pop("$defs", {}))
        models[model.__name__] = body
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "an API key from RISKENGINE_API_KEYS"}}
    for path, operations in schema["paths"].items():
        if path.removeprefix("/v1") not in open_paths:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
    return schema
