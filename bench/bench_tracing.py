"""What tracing costs when it is off, and when it is on, per span and per request.

    .venv/bin/python bench/bench_tracing.py

Off: no tracer provider is installed (no OTEL_EXPORTER_OTLP_ENDPOINT, no TRACE_FILE), so every span is the
OpenTelemetry API's no-op. A registration opens three spans on the rendezvous (the request, two Redis round
trips) and injects/extracts one traceparent. The figures are compared with the ~440 µs a registration takes
on the server (README, Performance).
"""
from __future__ import annotations

import subprocess
import sys
import time

CHILD = r"""
import sys, time
from opentelemetry import trace
if sys.argv[1] == "on":
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    trace.set_tracer_provider(provider)
from shared import tracing
N = 200_000
headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
started = time.perf_counter()
for _ in range(N):
    with tracing.span("POST /peers", headers=headers):
        with tracing.span("redis rate+admit"):
            pass
        with tracing.span("redis register+zadd"):
            pass
elapsed = time.perf_counter() - started
print(elapsed / N * 1e6)
"""


def per_request_us(mode: str) -> float:
    output = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout
    return float(output.strip())


def main() -> None:
    server_us = 440.0
    for mode in ("off", "on"):
        runs = sorted(per_request_us(mode) for _ in range(3))
        print(f"tracing {mode:3s}: {runs[1]:7.2f} µs per registration's 3 spans + traceparent extract "
              f"(median of 3 runs of 200k), {runs[1] / server_us * 100:5.2f}% of a {server_us:.0f} µs registration")
    print(f"measured {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
