"""Prometheus metrics of the rendezvous role, named rendezvous_<thing>_<unit>.

With PROCESSES > 1 (rendezvous/cli.py) every worker process keeps its values in prometheus_client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, a directory the supervisor owns), and /metrics on any worker
shows their sum: counters and histograms add up; a gauge says how it combines (`multiprocess_mode`).
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY, Counter, Gauge,
                               Histogram)
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter("rendezvous_http_requests_total", "HTTP requests by route, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("rendezvous_http_request_duration_seconds", "HTTP request latency by route",
                         ["route", "method"],
                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
REGISTRATIONS = Counter("rendezvous_registrations_total",
                        "Registration attempts by outcome (created, renewed, or the error code)", ["outcome"])
DEREGISTRATIONS = Counter("rendezvous_deregistrations_total", "Deregistrations by who asked (peer, admin)",
                          ["by"])
STORE_ERRORS = Counter("rendezvous_store_errors_total", "Requests refused because Redis was unavailable")
REDIS_LATENCY = Histogram("rendezvous_redis_round_trip_seconds", "One pipelined round trip to Redis, by operation",
                          ["operation"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1))
# named <thing>_<unit> as every gauge here (tests/test_observability.py): a watcher is a peer (a worker, a page)
WATCHERS = Gauge("rendezvous_watchers", "Watch streams (GET /peers/watch) open on this replica",
                 multiprocess_mode="livesum")  # the sum over the replica's live processes
WATCH_EVENTS = Counter("rendezvous_watch_events_total",
                       "Events sent to watchers by kind (join, renew, leave, expire, snapshot, resync)", ["kind"])
WATCH_LAG = Histogram("rendezvous_watch_event_lag_seconds",
                      "From a change's write in Redis (its stream entry ID, Redis clock) to its event's send here",
                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
WATCH_REFUSED = Counter("rendezvous_watch_refused_total", "Watch streams refused by cap (source, replica)",
                        ["cap"])
REDIS_ERRORS = Counter("rendezvous_redis_errors_total", "Round trips to Redis that failed (connection, timeout)")


class _LivePeers(Collector):
    """rendezvous_live_peers{namespace}: read from Redis by the process being scraped, just before the
    scrape. Not a Gauge: it is one fact about the shared Redis, not a per-process value to combine across
    workers, and a namespace that emptied must leave the scrape, which prometheus_client's multiprocess
    files cannot do (no label is ever removed from them)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("rendezvous_live_peers", "Live registrations per namespace (read from Redis "
                                   "at scrape)", labels=["namespace"])
        for namespace, count in self.counts.items():
            family.add_metric([namespace], count)
        yield family


LIVE_PEERS = _LivePeers()
REGISTRY.register(LIVE_PEERS)


def set_live_peers(counts: dict[str, int]) -> None:
    LIVE_PEERS.counts = dict(counts)  # namespaces that emptied disappear from the scrape


def count_across_processes() -> None:
    """In a worker of several (PROMETHEUS_MULTIPROC_DIR was set before prometheus_client was imported):
    make the default registry, which /metrics exposes, show every worker's sum, read from the multiprocess
    files, instead of this process's own values. The process_* and python_* collectors go too: they would
    describe whichever worker was scraped, under names that look like the replica's."""
    metrics = [value for value in globals().values() if isinstance(value, (Counter, Gauge, Histogram))]
    for collector in (*metrics, PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        REGISTRY.unregister(collector)
    MultiProcessCollector(REGISTRY)
