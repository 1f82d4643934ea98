"""Prometheus metrics in our own registry (not the process-global default one).

Every label takes values from a closed or operator-set list: route templates, decisions, actions
the policy knows (others: ``other``), reason codes (policy/schema.py), feedback outcomes, policy
versions. The engine's own counts (reload failures), the model and policy serving and the GeoIP
databases' build dates are read from the engine at scrape time.

With ``serve --workers N`` the workers run in prometheus_client's multiprocess mode (the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR``, emptied at start: cli.py): counters and histograms
go to one file per worker, and a scrape, whichever worker answers it, sums every worker's files,
those of workers that have exited included (their counts happened). No gauge is kept in the files:
what would be one is read from the answering worker's engine, the same in every worker. The
process and GC collectors describe one process, the one answering, so they are left out there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest, multiprocess)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from riskengine.policy.schema import REASON_CODES

if TYPE_CHECKING:
    from riskengine.engine import Engine
    from riskengine.policy.decide import Decision, Policy

#: read when prometheus_client is imported, as prometheus_client itself does (its values module)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
#: the metrics below are created in it; in multiprocess mode a scrape reads the files instead (``render``)
REGISTRY = CollectorRegistry()
if not MULTIPROCESS:
    ProcessCollector(registry=REGISTRY)      # process_cpu_seconds_total, process_resident_memory_bytes, fds...
    GCCollector(registry=REGISTRY)           # python_gc_objects_collected_total, python_gc_collections_total
PlatformCollector(registry=REGISTRY)         # python_info
LATENCY = Histogram("riskengine_request_seconds", "Request latency by route", ["route", "method", "status"],
                    registry=REGISTRY,
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
DECISIONS = Counter("riskengine_decisions_total", "Decisions by outcome and action", ["decision", "action"],
                    registry=REGISTRY)
STORE_ERRORS = Counter("riskengine_store_errors_total", "Requests answered 503 because the store failed",
                       registry=REGISTRY)
RISK = Histogram("riskengine_risk_score", "Risk score of answered /score requests, by action", ["action"],
                 registry=REGISTRY, buckets=(.01, .05, .1, .2, .3, .4, .5, .6, .7, .8, .9, .97, 1.0))
REASONS = Counter("riskengine_reasons_total", "Reason codes given in /score answers", ["code"], registry=REGISTRY)
POLICY_DECISIONS = Counter("riskengine_policy_decisions_total", "Decisions by the policy version that made them",
                           ["policy_version", "decision"], registry=REGISTRY)
CONFLICTS = Counter("riskengine_conflicts_total", "Events and step-ups decided again because another writer "
                    "(worker or process) had moved the user first", registry=REGISTRY)
FEEDBACK = Counter("riskengine_feedback_total", "Feedback by outcome; result: recorded or unknown_event",
                   ["outcome", "result"], registry=REGISTRY)
_KNOWN_ACTIONS = {"login", "view_dashboard", "payment", "add_payee", "change_email", "change_password",
                  "export_data"}
_REASON_CODES = frozenset(REASON_CODES)


def action_label(action: str, policy: "Policy | None" = None) -> str:
    """Bound the label's cardinality: client-chosen action names could be anything; the
    built-in actions and those the serving policy names are kept, the rest are ``other``."""
    if action in _KNOWN_ACTIONS or (policy is not None and action in policy.actions):
        return action
    return "other"


def observe(decision: "Decision", action: str, policy: "Policy | None") -> None:
    """What one ``/score`` answer adds: decision, risk score, reason codes, policy version."""
    label = action_label(action, policy)
    DECISIONS.labels(decision=decision.decision, action=label).inc()
    RISK.labels(action=label).observe(decision.risk_score)
    POLICY_DECISIONS.labels(policy_version=decision.policy_version, decision=decision.decision).inc()
    for reason in decision.reasons:
        REASONS.labels(code=reason.code if reason.code in _REASON_CODES else "other").inc()


class _EngineCollector:
    """Counts and dates the serving engine keeps, read when scraped."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def collect(self) -> Iterator[Any]:
        engine = self.engine
        if engine is None:
            return
        failures = CounterMetricFamily("riskengine_reload_failures", "Policy or model reloads refused "
                                       "(the previous one kept serving)", labels=["kind"])
        for kind, count in sorted(engine.reload_failures.items()):
            failures.add_metric([kind], count)
        yield failures
        built = GaugeMetricFamily("riskengine_geoip_build_timestamp_seconds", "Build date of each GeoIP "
                                  "database in use (Unix time, from its metadata)", labels=["database"])
        for database, epoch in sorted(engine.enricher.geo.build_epochs.items()):
            built.add_metric([database], epoch)
        yield built
        serving = GaugeMetricFamily("riskengine_model_info", "The model and policy serving now",
                                    labels=["model_version", "policy_version"])
        serving.add_metric([engine.scorer.version, engine.policy.version], 1)
        yield serving


_ENGINE = _EngineCollector()
REGISTRY.register(_ENGINE)


def render(engine: "Engine") -> tuple[bytes, str]:
    _ENGINE.engine = engine
    if not MULTIPROCESS:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    # prometheus_client's documented multiprocess exposition: a fresh registry per scrape, reading every file
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    PlatformCollector(registry=registry)
    registry.register(_ENGINE)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_exited() -> None:
    """A worker's shutdown: its live gauges' files go (none today; ``mark_process_dead`` keeps a
    gauge added later from outliving its worker). Its counters and histograms stay: they happened."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())
