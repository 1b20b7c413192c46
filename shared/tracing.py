"""OpenTelemetry tracing for every role, off (the API's no-op tracer, a few hundred nanoseconds a span)
unless configured:

- OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): spans go over OTLP/HTTP in batches,
  to an OpenTelemetry Collector that exports to Cloud Trace, or to any OTLP backend;
- TRACE_FILE=path: spans are appended to that file as JSON lines (for debugging, and the tests).

W3C `traceparent` headers carry a trace from the worker's HTTP calls into the rendezvous, so one trace shows
a registration across both processes. Log lines written inside a span carry its IDs (shared/logs.py).
"""
from __future__ import annotations

import contextlib
from typing import Mapping

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from shared.settings import Observability

tracer = trace.get_tracer("holepunch-services")
_OFF = contextlib.nullcontext(trace.INVALID_SPAN)  # reusable: a span that records nothing


def enabled() -> bool:
    """Whether a tracer provider is installed (by configure, or by a test).

    Read from the API's global rather than through get_tracer_provider(), which consults os.environ on
    every call: this runs three times a request, and with tracing off it is the whole cost."""
    return trace._TRACER_PROVIDER is not None  # opentelemetry-api 1.x


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, attributes: dict | None = None,
         headers: Mapping[str, str] | None = None):
    """A span as the current one, continuing the trace in `headers` (W3C traceparent) if given. With
    tracing off it is a shared no-op: no traceparent parsing, no context switch (bench/bench_tracing.py)."""
    if not enabled():
        return _OFF
    context = propagate.extract(headers) if headers is not None else None
    return tracer.start_as_current_span(name, kind=kind, attributes=attributes, context=context)


def inject(headers: dict[str, str]) -> None:
    """Add the current trace's traceparent to outgoing headers (nothing when tracing is off)."""
    if enabled():
        propagate.inject(headers)


def configure(service_name: str, settings: Observability) -> bool:
    """Install a tracer provider for this process if tracing is configured; returns whether it is on. The
    SDK is imported only then: with tracing off a process never loads it (~80 ms of start-up)."""
    if not settings.otlp_endpoint and not settings.trace_file:
        return False
    from shared.trace_export import install

    install(service_name, otlp_enabled=bool(settings.otlp_endpoint), trace_file=settings.trace_file)
    return True


def current_ids() -> tuple[str, str, bool] | None:
    """(trace ID, span ID, sampled) of the span this code runs in, or None outside any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled


def add_event(name: str, attributes: dict) -> None:
    """An event on the current span (nothing when tracing is off or outside any span)."""
    if enabled():
        trace.get_current_span().add_event(name, {k: v if isinstance(v, (str, int, float, bool)) else str(v)
                                                  for k, v in attributes.items() if v is not None})
