"""Prometheus metrics in our own registry (not the process-global default one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from riskengine.engine import Engine

REGISTRY = CollectorRegistry()
LATENCY = Histogram("riskengine_request_seconds", "Request latency by route", ["route", "method", "status"],
                    registry=REGISTRY,
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
DECISIONS = Counter("riskengine_decisions_total", "Decisions by outcome and action", ["decision", "action"],
                    registry=REGISTRY)
STORE_ERRORS = Counter("riskengine_store_errors_total", "Requests answered 503 because the store failed",
                       registry=REGISTRY)
MODEL = Gauge("riskengine_model_info", "The model and policy serving now", ["model_version", "policy_version"],
              registry=REGISTRY)
_KNOWN_ACTIONS = {"login", "view_dashboard", "payment", "add_payee", "change_email", "change_password",
                  "export_data"}


def action_label(action: str) -> str:
    """Bound the label's cardinality: client-chosen action names could be anything."""
    return action if action in _KNOWN_ACTIONS else "other"


def render(engine: "Engine") -> tuple[bytes, str]:
    MODEL.clear()
    MODEL.labels(engine.scorer.version, engine.policy.version).set(1)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
