"""The OpenTelemetry SDK side of tracing.py, loaded only when tracing is configured: the tracer provider
and its exporters (OTLP over HTTP in batches; JSON lines in a file)."""
from __future__ import annotations

import json
import threading
from typing import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult


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


def install(service_name: str, otlp_enabled: bool, trace_file: str | None) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if otlp_enabled:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    trace.set_tracer_provider(provider)
