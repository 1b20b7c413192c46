"""OpenTelemetry tracing for every role, off (the API's no-op tracer, a few hundred nanoseconds a span)
unless configured:

- OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT): spans go over OTLP/HTTP in batches,
  to an OpenTelemetry Collector that exports to Cloud Trace, or to any OTLP backend;
- TRACE_FILE=path: spans are appended to that file as JSON lines (for debugging, and the tests).

W3C `traceparent` headers carry a trace from the worker's HTTP calls into the rendezvous, so one trace shows
a registration across both processes. Log lines written inside a span carry its IDs (logs.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

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


class JsonLinesExporter(SpanExporter):
    """Spans as JSON lines in a file: name, trace and span IDs (hex), parent, kind, times, attributes."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context, parent = span.get_span_context(), span.parent
            lines.append(json.dumps({
                "name": span.name, "service": span.resource.attributes.get("service.name"),
                "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None, "kind": span.kind.name,
                "start": span.start_time, "end": span.end_time, "attributes": dict(span.attributes or {}),
                "status": span.status.status_code.name}, default=str))
        with self.lock, open(self.path, "a") as out:
            out.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def configure(service_name: str, environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Install a tracer provider for this process if tracing is configured; returns whether it is on."""
    otlp = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    trace_file = environ.get("TRACE_FILE")
    if not otlp and not trace_file:
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    trace.set_tracer_provider(provider)
    return True


def current_ids() -> tuple[str, str, bool] | None:
    """(trace ID, span ID, sampled) of the span this code runs in, or None outside any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", context.trace_flags.sampled
