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
from shared.registration import sign_registration, sign_unregistration
from tests.servers import RedisServer, free_port, make_settings, serve
from tests.helpers import new_key, peer_id
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
    redis_calls = sample("rendezvous_redis_round_trip_seconds_count", operation="register")
    requests = sample("rendezvous_http_requests_total", route="/peers", method="POST", status="201")
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        response = await http.post("/peers", data=sign_registration(new_key(), "metrics", ["/ip4/1.2.3.4/tcp/1"], 60))
        assert response.status == 201
        metrics_text = await (await http.get("/metrics")).text()
    assert sample("rendezvous_registrations_total", outcome="created") == created + 1
    # one round trip on a single node: counted, admitted and written by one script
    assert sample("rendezvous_redis_round_trip_seconds_count", operation="register") == redis_calls + 1
    assert sample("rendezvous_http_requests_total", route="/peers", method="POST", status="201") == requests + 1
    assert 'rendezvous_live_peers{namespace="metrics"} 1.0' in metrics_text


def rendezvous_counts() -> dict[tuple[str, tuple], float]:
    """Every rendezvous counter sample, and every latency histogram's count, in this process."""
    counts = {}
    for family in REGISTRY.collect():
        if family.name.startswith("rendezvous_") and family.type in ("counter", "histogram"):
            for s in family.samples:
                if s.name.endswith(("_total", "_count")) and not s.name.startswith("rendezvous_redis_round_trip"):
                    counts[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return counts


def moved(before: dict, after: dict) -> dict:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()
            if after.get(key, 0) != before.get(key, 0)}


async def test_every_rendezvous_counter_moves_by_exactly_what_it_counts(key_prefix):
    server = RedisServer().start()  # its own, to stop
    admin = {"Authorization": "Bearer admin-token-0123456789"}
    one, two = new_key(), new_key()
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            before = rendezvous_counts()
            statuses = [
                (await http.post("/peers", data=sign_registration(one, "counted", [], 60))).status,
                (await http.post("/peers", data=sign_registration(one, "counted", [], 60))).status,
                (await http.post("/peers", data=b"garbage")).status,
                (await http.post("/peers", data=sign_registration(two, "counted", [], 60))).status,
                (await http.delete(f"/peers/{peer_id(one)}", data=sign_unregistration(one))).status,
                (await http.delete(f"/peers/{peer_id(two)}", headers=admin)).status,
                (await http.delete(f"/peers/{peer_id(two)}", headers=admin)).status,  # nothing left to remove
            ]
            server.stop()
            statuses += [(await http.get("/peers", params={"namespace": "counted"})).status,
                         (await http.post("/peers", data=sign_registration(two, "counted", [], 60))).status]
            after = rendezvous_counts()
    finally:
        server.stop()
    assert statuses == [201, 200, 400, 201, 200, 200, 404, 503, 503]
    post, get, delete = ("/peers", "POST"), ("/peers", "GET"), ("/peers/{peer_id}", "DELETE")

    def requests(route_method, status):
        route, method = route_method
        return ("rendezvous_http_requests_total", (("method", method), ("route", route), ("status", status)))

    def latency(route_method):
        route, method = route_method
        return ("rendezvous_http_request_duration_seconds_count", (("method", method), ("route", route)))

    assert moved(before, after) == {
        ("rendezvous_registrations_total", (("outcome", "created"),)): 2,
        ("rendezvous_registrations_total", (("outcome", "renewed"),)): 1,
        ("rendezvous_registrations_total", (("outcome", "bad_envelope"),)): 1,
        ("rendezvous_registrations_total", (("outcome", "store_unavailable"),)): 1,
        ("rendezvous_deregistrations_total", (("by", "peer"),)): 1,
        ("rendezvous_deregistrations_total", (("by", "admin"),)): 1,
        ("rendezvous_store_errors_total", ()): 2,  # the two requests answered 503
        ("rendezvous_redis_errors_total", ()): 2,  # one failed round trip each
        requests(post, "201"): 2, requests(post, "200"): 1, requests(post, "400"): 1, requests(post, "503"): 1,
        requests(delete, "200"): 2, requests(delete, "404"): 1, requests(get, "503"): 1,
        latency(post): 5, latency(delete): 3, latency(get): 1,
    }


def test_relay_and_worker_metrics_move_with_a_relayed_connection():
    with rendezvous_process() as url:
        async def body(nursery):
            relayed_bytes = sample("relay_relayed_bytes_total")
            accepted = sample("relay_reservations_total", outcome="accepted", reason="")
            connections = sample("worker_connections_total", path="relayed")
            echoes = sample("worker_echo_rtt_seconds_count", over="relayed")
            registered = sample("worker_registrations_total", outcome="ok")
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
            assert sample("worker_registrations_total", outcome="ok") >= registered + 2  # both workers, maybe renewed
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
    # one script on a single node: counted, the source's quota and the peer admitted, the namespace written
    assert {s["parent_id"] for s in redis} == {server[0]["span_id"]} and len(redis) == 1


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


# what a metric's last word may be: a counter counts (_total), a histogram measures in a base unit, and a
# gauge says what it holds, in the plural (a gauge's noun may stand alone: rendezvous_watchers)
UNITS = {"counter": {"total"}, "histogram": {"seconds", "bytes"}, "gauge": {"peers", "reservations", "watchers", "mappings"}}


def test_metric_names_follow_role_thing_unit():
    import relay.metrics
    import rendezvous.metrics
    import worker.metrics

    def problem(role: str, kind: str, name: str) -> str | None:
        thing = r"(?:[a-z0-9]+_)*" if kind == "gauge" else r"(?:[a-z0-9]+_)+"
        shape = re.fullmatch(rf"{role}_({thing})([a-z]+)", name)
        if not shape:
            return f"{name}: not {role}_<thing>_<unit>"
        if shape.group(2) not in UNITS[kind]:
            return f"{name}: a {kind} ends in one of {sorted(UNITS[kind])}"
        return None

    problems = []
    for module, role in ((rendezvous.metrics, "rendezvous"), (worker.metrics, "worker"), (relay.metrics, "relay")):
        metrics = [m for m in vars(module).values() if hasattr(m, "_name") and hasattr(m, "_documentation")]
        assert metrics, module
        for metric in metrics:
            kind = metric._type
            # prometheus_client keeps a counter's name without its _total; the exposed name has it
            name = f"{metric._name}_total" if kind == "counter" else metric._name
            problems.append(problem(role, kind, name))
    assert [p for p in problems if p] == []


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
