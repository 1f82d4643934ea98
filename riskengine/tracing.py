"""Optional OpenTelemetry spans: one per request (api/middleware.py) and one per stage of ``/score``.

Off by default. ``RISKENGINE_TRACING=true`` (with ``pip install 'riskengine[otel]'``) turns it on
for the service's lifetime; while off, ``span(name)`` hands back one shared no-op context, so the
engine's stages cost an attribute read and a call each. Spans carry stage names, the route
template and status only: never a user id, an address or a key.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Any

_NULL: AbstractContextManager[Any] = nullcontext()
_tracer: Any = None                    # an opentelemetry Tracer while tracing is on


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the OpenTelemetry packages are not installed."""


def span(name: str) -> AbstractContextManager[Any]:
    """A child span of the current one named ``name``, or a no-op while tracing is off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name)


def enabled() -> bool:
    return _tracer is not None


def enable(provider: Any = None) -> None:
    """Trace from now on, through ``provider`` (a TracerProvider) or the process's global one.

    With no global provider configured (no ``opentelemetry-instrument``, no SDK set up by the
    host), an SDK provider exporting over OTLP/HTTP is installed; the exporter reads the standard
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables.
    """
    global _tracer
    try:
        from opentelemetry import trace
    except ImportError:
        raise TracingUnavailable("RISKENGINE_TRACING is on but OpenTelemetry is not installed: "
                                 "pip install 'riskengine[otel]'") from None
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            provider = _otlp_provider()
            trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("riskengine", tracer_provider=provider)


def disable() -> None:
    global _tracer
    _tracer = None


def request_span(name: str, traceparent: str | None, tracestate: str | None) -> AbstractContextManager[Any]:
    """The server span of one request, continuing the caller's W3C trace when it sent one."""
    if _tracer is None:
        return _NULL
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {k: v for k, v in (("traceparent", traceparent), ("tracestate", tracestate)) if v}
    return _tracer.start_as_current_span(name, context=extract(carrier) if carrier else None, kind=SpanKind.SERVER)


def _otlp_provider() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable("RISKENGINE_TRACING is on but the OpenTelemetry SDK or its OTLP exporter is not "
                                 "installed: pip install 'riskengine[otel]'") from None
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "riskengine"}
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
