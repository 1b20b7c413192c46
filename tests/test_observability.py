"""Metrics move when what they count happens; one trace spans a worker and the rendezvous; log lines are
JSON and carry the trace inside a span."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import subprocess
import time

import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from shared import tracing
from shared.logs import JsonFormatter
from shared.registration import sign_registration
from tests.servers import free_port, make_settings, serve
from tests.helpers import new_key
from tests.p2p import (BIN, new_identity, ordered_identities, record_of, relay_settings, rendezvous_process, run,
                       start_relay, start_worker, until, worker_settings)
from shared.rendezvous_client import RendezvousClient

ROOT = pathlib.Path(__file__).resolve().parents[1]

def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """This test process's spans (a tracer provider can be installed once per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_rendezvous_metrics_move_with_registrations_and_redis_calls(redis_server, key_prefix):
    created = sample("rendezvous_registrations_total", outcome="created")
    redis_calls = sample("rendezvous_redis_round_trip_seconds_count", operation="rate+admit")
    requests = sample("rendezvous_http_requests_total", route="/peers", method="POST", status="201")
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        response = await http.post("/peers", data=sign_registration(new_key(), "metrics", ["/ip4/1.2.3.4/tcp/1"], 60))
        assert response.status == 201
        metrics_text = await (await http.get("/metrics")).text()
    assert sample("rendezvous_registrations_total", outcome="created") == created + 1
    assert sample("rendezvous_redis_round_trip_seconds_count", operation="rate+admit") == redis_calls + 1
    assert sample("rendezvous_http_requests_total", route="/peers", method="POST", status="201") == requests + 1
    assert 'rendezvous_live_peers{namespace="metrics"} 1.0' in metrics_text


def test_relay_and_worker_metrics_move_with_a_relayed_connection():
    with rendezvous_process() as url:
        async def body(nursery):
            relayed_bytes = sample("relay_relayed_bytes_total")
            accepted = sample("relay_reservations_total", outcome="accepted", reason="")
            connections = sample("worker_connections_total", path="relayed")
            echoes = sample("worker_echo_rtt_seconds_count", over="relayed")
            relay = await start_relay(nursery, relay_settings())
            dialer_id, hidden_id = ordered_identities(2)
            addr = relay.multiaddrs()[0]
            hidden = await start_worker(nursery, worker_settings(url, [addr], NAMESPACE="metrics-relay", TCP_PORT="off",
                                                                 WS_PORT="off", HOLEPUNCH="false"), hidden_id)
            dialer = await start_worker(nursery, worker_settings(url, [addr], NAMESPACE="metrics-relay",
                                                                 HOLEPUNCH="false"), dialer_id)
            await until(lambda: record_of(dialer, hidden), what="a relayed connection")
            assert sample("relay_reservations_total", outcome="accepted", reason="") >= accepted + 2
            assert sample("relay_relayed_bytes_total") > relayed_bytes
            assert sample("worker_connections_total", path="relayed") == connections + 1
            assert sample("worker_echo_rtt_seconds_count", over="relayed") >= echoes + 1
            assert sample("worker_registrations_total", outcome="ok") >= 2
        run(body)


def test_one_trace_spans_a_worker_registration_and_the_rendezvous(tmp_path, spans):
    trace_file = tmp_path / "rendezvous-spans.jsonl"
    with rendezvous_process({"TRACE_FILE": str(trace_file)}) as url:
        async def body(nursery):
            client = RendezvousClient(url, new_identity())
            with tracing.tracer.start_as_current_span("register"):
                await client.register("traced", ["/ip4/192.0.2.1/tcp/4001"], 60)
            await client.aclose()
        run(body)
        time.sleep(0.2)
    ours = {s.name: s for s in spans.get_finished_spans()}
    trace_id = f"{ours['register'].context.trace_id:032x}"
    http_span = f"{ours['POST /peers'].context.span_id:016x}"
    theirs = [json.loads(line) for line in trace_file.read_text().splitlines()]
    server = [s for s in theirs if s["name"] == "POST /peers"]
    assert server and server[0]["trace_id"] == trace_id and server[0]["parent_id"] == http_span
    assert server[0]["kind"] == "SERVER" and server[0]["attributes"]["http.response.status_code"] == 201
    redis = [s for s in theirs if s["name"].startswith("redis ") and s["trace_id"] == trace_id]
    assert {s["parent_id"] for s in redis} == {server[0]["span_id"]} and len(redis) == 2  # admit, then write


def test_a_worker_log_line_inside_a_span_carries_it_and_one_outside_does_not(spans):
    # the worker side, in this process: a line inside a span, one outside
    formatter = JsonFormatter("worker")
    logger = logging.getLogger("tests.observability")
    with tracing.tracer.start_as_current_span("connect") as span:
        inside = json.loads(formatter.format(logger.makeRecord("t", logging.INFO, "", 0, "holepunch: x", (), None,
                                                               extra={"event": "connected"})))
    outside = json.loads(formatter.format(logger.makeRecord("t", logging.INFO, "", 0, "plain", (), None)))
    assert inside["logging.googleapis.com/spanId"] == f"{span.get_span_context().span_id:016x}"
    assert inside["event"] == "connected" and "logging.googleapis.com/trace" not in outside


def test_rendezvous_log_lines_parse_and_carry_the_request_trace(tmp_path):
    trace_file = tmp_path / "spans.jsonl"
    port = free_port()
    proc = subprocess.Popen([str(BIN / "rendezvous")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "TRACE_FILE": str(trace_file),
                                 "LOG_LEVEL": "DEBUG", "GOOGLE_CLOUD_PROJECT": "demo-project"})
    try:
        url = f"http://127.0.0.1:{port}"

        async def body(nursery):
            with trio.fail_after(20):
                while True:
                    try:
                        client = RendezvousClient(url, new_identity())
                        await client.register("logged", ["/ip4/192.0.2.1/tcp/4001"], 60)
                        await client.aclose()
                        return
                    except Exception:
                        await trio.sleep(0.2)
        run(body)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0]
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    registered = [line for line in lines if line["message"] == "registered"]
    server = [json.loads(s) for s in trace_file.read_text().splitlines() if '"POST /peers"' in s]
    assert registered and server
    assert registered[-1]["logging.googleapis.com/trace"] == f"projects/demo-project/traces/{server[-1]['trace_id']}"
    assert registered[-1]["logging.googleapis.com/spanId"] == server[-1]["span_id"]
    assert all("severity" in line and "message" in line for line in lines)


def test_metric_names_follow_role_thing_unit():
    import relay.metrics
    import rendezvous.metrics
    import worker.metrics

    for module, role in ((rendezvous.metrics, "rendezvous"), (worker.metrics, "worker"), (relay.metrics, "relay")):
        names = [m._name for m in vars(module).values() if hasattr(m, "_name") and hasattr(m, "_documentation")]
        assert names, module
        for name in names:
            assert name.startswith(f"{role}_"), name


@pytest.mark.parametrize("filename", ["grafana.json", "cloud-monitoring.json"])
def test_the_dashboards_show_the_operator_questions_with_metrics_that_exist(filename):
    import relay.metrics  # noqa: F401  (registers the relay's metrics)
    import worker.metrics  # noqa: F401

    text = (ROOT / "terraform" / "dashboards" / filename).read_text()
    json.loads(text)
    known = {name for names in REGISTRY._collector_to_names.values() for name in names}
    used = set(re.findall(r"\b((?:rendezvous|worker|relay)_[a-z_]+)", text))
    assert used and all(name in known for name in used), used - known
    for needed in ("rendezvous_live_peers", "rendezvous_http_requests_total", "worker_connections_total",
                   "rendezvous_http_request_duration_seconds_bucket", "worker_holepunch_time_to_direct_seconds_bucket"):
        assert needed in used
