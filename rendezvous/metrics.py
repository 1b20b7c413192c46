"""Prometheus metrics of the rendezvous role, named rendezvous_<thing>_<unit>."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("rendezvous_http_requests_total", "HTTP requests by route, method and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("rendezvous_http_request_duration_seconds", "HTTP request latency by route",
                         ["route", "method"],
                         buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
REGISTRATIONS = Counter("rendezvous_registrations_total",
                        "Registration attempts by outcome (created, renewed, or the error code)", ["outcome"])
DEREGISTRATIONS = Counter("rendezvous_deregistrations_total", "Deregistrations by who asked (peer, admin)",
                          ["by"])
LIVE_PEERS = Gauge("rendezvous_live_peers", "Live registrations per namespace (read from Redis at scrape)",
                   ["namespace"])
STORE_ERRORS = Counter("rendezvous_store_errors_total", "Requests refused because Redis was unavailable")
REDIS_LATENCY = Histogram("rendezvous_redis_round_trip_seconds", "One pipelined round trip to Redis, by operation",
                          ["operation"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1))
# named <thing>_<unit> as every gauge here (tests/test_observability.py): a watcher is a peer (a worker, a page)
WATCHERS = Gauge("rendezvous_watchers", "Watch streams (GET /peers/watch) open on this replica")
WATCH_EVENTS = Counter("rendezvous_watch_events_total",
                       "Events sent to watchers by kind (join, renew, leave, expire, snapshot, resync)", ["kind"])
WATCH_LAG = Histogram("rendezvous_watch_event_lag_seconds",
                      "From a change's write in Redis (its stream entry ID, Redis clock) to its event's send here",
                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
WATCH_REFUSED = Counter("rendezvous_watch_refused_total", "Watch streams refused by cap (source, replica)",
                        ["cap"])
REDIS_ERRORS = Counter("rendezvous_redis_errors_total", "Round trips to Redis that failed (connection, timeout)")


def set_live_peers(counts: dict[str, int]) -> None:
    LIVE_PEERS.clear()  # namespaces that emptied disappear from the scrape
    for namespace, count in counts.items():
        LIVE_PEERS.labels(namespace).set(count)
