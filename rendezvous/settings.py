"""The rendezvous service's configuration: every option a flag and an environment variable
(`rendezvous --help`), read once at start into one Settings object (shared/settings.py)."""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import secrets
from typing import Mapping, Sequence

from redis.asyncio.connection import parse_url

from shared.registration import SPEC_MAX_TTL_SECONDS
from shared.settings import (OBSERVABILITY_OPTIONS, ConfigError, Observability, Option, boolean, comma_list, integer,
                             namespace, observability, optional_text, parse_options, peer_ids, port, port_or_off,
                             problem, text)

COOKIE_KEY_MIN_CHARS = 32
MAX_PROCESSES = 256
ADMIN_TOKEN_MIN_CHARS = 16
WEB_DIR = str(pathlib.Path(__file__).resolve().parents[1] / "web")


@dataclasses.dataclass(frozen=True)
class Limits:
    ttl_min: int = 10
    ttl_default: int = 2 * 3600
    ttl_max: int = SPEC_MAX_TTL_SECONDS
    timestamp_window: int = 60
    max_body_bytes: int = 8192
    body_read_timeout: int = 30
    max_addrs: int = 16
    max_addr_length: int = 256
    max_registrations_per_peer: int = 32
    max_peers_per_namespace: int = 200_000
    rate_limit_ip_per_minute: int = 600
    rate_limit_peer_per_minute: int = 60
    discover_limit_default: int = 100
    discover_limit_max: int = 1000
    max_registration_bytes: int = 2048
    max_registrations_per_source: int = 10_000
    redis_high_water_percent: int = 80
    watch_max_per_source: int = 20
    watch_max_per_replica: int = 10_000
    watch_heartbeat_seconds: int = 15
    # Cloud Run ends a request at its timeout (300 s unless the service sets one; terraform/ sets none): a
    # watch stream ends cleanly before, and the client resumes with Last-Event-ID
    watch_max_seconds: int = 270
    watch_stream_max_events: int = 1000
    watch_resume_seconds: int = 300


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    processes: int = 1  # worker processes sharing the HTTP port (rendezvous/cli.py); PROCESSES=auto: the CPUs given
    redis_url: str | None = None  # None: the embedded in-process store
    redis_cluster: bool = False
    redis_iam_auth: bool = False
    cookie_key: bytes = b""
    admin_token: str | None = None
    default_namespace: str = "default"
    key_prefix: str = "hp"
    trusted_proxy_hops: int = 0
    limits: Limits = dataclasses.field(default_factory=Limits)
    # the libp2p door (/rendezvous/1.0.0 over TCP), off unless LIBP2P_TCP_PORT is set
    libp2p_tcp_port: int | None = None
    libp2p_host: str = "0.0.0.0"
    libp2p_identity_key: str | None = None
    libp2p_identity_file: str | None = None
    # the browser demo (rendezvous/http/demo.py)
    web_dir: str = WEB_DIR
    demo_namespace: str = "browser-demo"
    relay_namespace: str = "relays"
    relay_peer_ids: tuple[str, ...] | None = ()  # None: any relay registered in relay_namespace
    demo_relay_addrs: tuple[str, ...] = ()
    demo_ice_servers: tuple[str, ...] = ()
    observability: Observability = dataclasses.field(default_factory=Observability)

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        values = parse_options("rendezvous", DESCRIPTION, OPTIONS, argv, environ)
        limits = Limits(**{field.name: values.pop(field.name) for field in dataclasses.fields(Limits)})
        if not limits.ttl_min <= limits.ttl_default <= limits.ttl_max:
            raise problem(_OPTION["ttl_default"], "must lie between TTL_MIN_SECONDS and TTL_MAX_SECONDS")
        if limits.discover_limit_default > limits.discover_limit_max:
            raise problem(_OPTION["discover_limit_default"], "must not exceed DISCOVER_LIMIT_MAX")
        if values["processes"] is None:
            # the embedded store lives inside one process: a second worker would hold other registrations
            values["processes"] = 1 if values["redis_url"] is None else available_cpus()
        elif values["processes"] > 1 and values["redis_url"] is None:
            raise problem(_OPTION["processes"], "more than 1 needs REDIS_URL (the embedded store lives in one "
                                                "process, so each worker would hold registrations of its own)")
        cookie_key = values.pop("cookie_key")
        if cookie_key is None:
            if values["redis_url"] is not None:
                # Replicas sharing a Redis must share the key, or one replica's cookies fail on another.
                raise problem(_OPTION["cookie_key"], "required when REDIS_URL is set (all replicas must share it)")
            cookie_key = secrets.token_hex(32)
        return cls(limits=limits, cookie_key=cookie_key.encode(), observability=observability(values), **values)


def available_cpus(cgroup_root: pathlib.Path = pathlib.Path("/sys/fs/cgroup")) -> int:
    """The CPUs this container is given: the CPUs it may run on (its affinity), capped by its cgroup's CPU
    quota rounded down, at least 1. A container sees every CPU of its host in os.cpu_count() and usually in
    its affinity too; Cloud Run and docker --cpus give it its vCPUs as a quota (cgroup v2 cpu.max, v1
    cpu.cfs_quota_us over cpu.cfs_period_us)."""
    cpus = len(os.sched_getaffinity(0))
    for quota in _cpu_quotas(cgroup_root):
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def _cpu_quotas(root: pathlib.Path) -> list[float]:
    """The CPU quotas (in CPUs) that bind this process: its cgroup v2 group's and its ancestors', or v1's."""
    quotas = []
    try:
        groups = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    v2 = [line.split("::", 1)[1] for line in groups if line.startswith("0::")]
    if v2:
        group = root / v2[0].lstrip("/")
        for directory in (group, *group.parents):
            quotas += _read_quota(directory / "cpu.max", None, "max")
            if directory == root:
                break
    quotas += _read_quota(root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us", "-1")
    return quotas


def _read_quota(quota_file: pathlib.Path, period_file: pathlib.Path | None, unlimited: str) -> list[float]:
    try:
        fields = quota_file.read_text().split()
        if period_file is not None:
            fields.append(period_file.read_text().strip())
        if fields[0] == unlimited:
            return []
        quota, period = int(fields[0]), int(fields[1])
    except (OSError, IndexError, ValueError):
        return []  # no such controller here (or not readable): no quota known
    return [quota / period] if quota > 0 and period > 0 else []


def _processes(value: str) -> int | None:
    if value.strip().lower() == "auto":
        return None
    return integer(1, MAX_PROCESSES)(value)


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    parse_url(value)  # its ValueError says what is wrong
    return value


def _secret(min_chars: int):
    def parse(value: str) -> str:
        if len(value) < min_chars:
            raise ValueError(f"must be at least {min_chars} characters")
        return value
    return parse


def _limit(flag: str, env: str, low: int, high: int, help_text: str, field: str | None = None) -> Option:
    return Option(flag, env, integer(low, high), str(getattr(Limits(), field or flag[2:].replace("-", "_"))), help_text)


DESCRIPTION = ("The rendezvous service: signed, TTL-expiring peer registrations in Redis, discovered with "
               "GET /peers; optionally the libp2p rendezvous protocol from the same state.")
SPEC_MAX = SPEC_MAX_TTL_SECONDS
OPTIONS = [
    Option("--host", "HOST", text, "0.0.0.0", "address the HTTP service listens on"),
    Option("--port", "PORT", port, "8080", "HTTP port (Cloud Run sets PORT)"),
    Option("--processes", "PROCESSES", _processes, "auto",
           "worker processes serving PORT together (SO_REUSEPORT), each on its own core; auto: the CPUs this "
           "container is given (its CPU affinity and cgroup CPU quota, rounded down, at least 1), 1 with the "
           "embedded store"),
    Option("--redis-url", "REDIS_URL", _redis_url, None,
           "redis://, rediss:// (TLS) or unix:// URL, AUTH as rediss://:PASSWORD@host:6378/0; unset: the embedded "
           "in-process store", secret=True),
    Option("--redis-cluster", "REDIS_CLUSTER", boolean, "false", "REDIS_URL is a Redis Cluster"),
    Option("--redis-iam-auth", "REDIS_IAM_AUTH", boolean, "false",
           "authenticate to the Redis Cluster with the service account's access token (Memorystore for Redis "
           "Cluster's IAM AUTH), fetched from the metadata server"),
    Option("--cookie-key", "COOKIE_HMAC_KEY", _secret(COOKIE_KEY_MIN_CHARS), None,
           f"key of the discovery cookies' HMAC, at least {COOKIE_KEY_MIN_CHARS} characters, the same on every "
           "replica; required with REDIS_URL (unset: random, embedded store only)", secret=True),
    Option("--admin-token", "ADMIN_TOKEN", _secret(ADMIN_TOKEN_MIN_CHARS), None,
           f"bearer token (at least {ADMIN_TOKEN_MIN_CHARS} characters) for DELETE by an operator; unset: off",
           secret=True),
    Option("--default-namespace", "DEFAULT_NAMESPACE", namespace, "default", "the namespace of plain GET /peers"),
    Option("--key-prefix", "KEY_PREFIX", text, "hp", "prefix of every Redis key"),
    Option("--trusted-proxy-hops", "TRUSTED_PROXY_HOPS", integer(0, 10), "0",
           "proxies that append to X-Forwarded-For (1 behind Cloud Run, 2 behind a load balancer in front of it)"),
    _limit("--ttl-min", "TTL_MIN_SECONDS", 1, SPEC_MAX, "shortest registration TTL, seconds"),
    _limit("--ttl-default", "TTL_DEFAULT_SECONDS", 1, SPEC_MAX, "TTL of a registration that names none"),
    _limit("--ttl-max", "TTL_MAX_SECONDS", 1, SPEC_MAX, "longest registration TTL (the spec's maximum is 72 h)"),
    _limit("--timestamp-window", "TIMESTAMP_WINDOW_SECONDS", 1, 3600, "accepted clock skew of a signed request, s"),
    _limit("--max-body-bytes", "MAX_BODY_BYTES", 512, 1 << 20, "request body cap"),
    _limit("--body-read-timeout", "BODY_READ_TIMEOUT_SECONDS", 1, 3600,
           "seconds a request body may take to arrive; then 408 and the connection is closed"),
    _limit("--max-addrs", "MAX_ADDRS", 1, 256, "addresses per registration"),
    _limit("--max-addr-length", "MAX_ADDR_LENGTH", 16, 1024, "characters per address"),
    _limit("--max-registrations-per-peer", "MAX_REGISTRATIONS_PER_PEER", 1, 10_000, "namespaces one peer may be in"),
    _limit("--max-peers-per-namespace", "MAX_PEERS_PER_NAMESPACE", 1, 100_000_000, "live peers in one namespace"),
    _limit("--rate-limit-ip-per-minute", "RATE_LIMIT_IP_PER_MINUTE", 1, 100_000_000,
           "API calls per client IP per minute, all replicas together"),
    _limit("--rate-limit-peer-per-minute", "RATE_LIMIT_PEER_PER_MINUTE", 1, 100_000_000,
           "signed requests per peer per minute"),
    _limit("--discover-limit-default", "DISCOVER_LIMIT_DEFAULT", 1, 10_000, "page size when none is asked"),
    _limit("--discover-limit-max", "DISCOVER_LIMIT_MAX", 1, 10_000, "largest page size"),
    _limit("--max-registration-bytes", "MAX_REGISTRATION_BYTES", 256, 65_536,
           "bytes one stored registration may take (its peer object: ID, addresses, signed peer record)"),
    _limit("--max-registrations-per-source", "MAX_REGISTRATIONS_PER_SOURCE", 1, 100_000_000,
           "live registrations one source (an IPv4 address, an IPv6 /64) may hold, all namespaces together"),
    _limit("--redis-high-water-percent", "REDIS_HIGH_WATER_PERCENT", 1, 100,
           "share of Redis's maxmemory past which registrations are refused (507 store_full) while reads go on"),
    Option("--libp2p-tcp-port", "LIBP2P_TCP_PORT", port_or_off, None,
           "serve the libp2p rendezvous protocol (/rendezvous/1.0.0) on this TCP port too; unset: off"),
    Option("--libp2p-host", "LIBP2P_HOST", text, "0.0.0.0", "address the libp2p door listens on"),
    Option("--libp2p-identity-key", "LIBP2P_IDENTITY_KEY", optional_text, None,
           "the door's identity: a base64 32-byte Ed25519 seed (a secret); unset: a new identity each start",
           secret=True),
    Option("--libp2p-identity-file", "LIBP2P_IDENTITY_FILE", optional_text, None,
           "file holding the door's identity seed, created when missing"),
    Option("--web-dir", "WEB_DIR", text, WEB_DIR, "where the demo page and its built bundle are"),
    Option("--demo-namespace", "DEMO_NAMESPACE", namespace, "browser-demo", "the demo page's namespace"),
    Option("--relay-namespace", "RELAY_NAMESPACE", namespace, "relays",
           "where relays register; the demo page's relays come from there"),
    Option("--relay-peer-ids", "RELAY_PEER_IDS", peer_ids, "",
           "comma-separated peer IDs of the relays the demo page may be given from RELAY_NAMESPACE ('*': any; "
           "empty: none, only DEMO_RELAY_ADDRS): anyone can register there"),
    Option("--demo-relay-addrs", "DEMO_RELAY_ADDRS", comma_list, "",
           "comma-separated relay WebSocket multiaddrs for the page, instead of the registered ones"),
    Option("--demo-ice-servers", "DEMO_ICE_SERVERS", comma_list, "", "comma-separated ICE server URLs for the page"),
    _limit("--watch-max-per-source", "WATCH_MAX_PER_SOURCE", 1, 1_000_000,
           "watch streams (GET /peers/watch) one source may hold open, all replicas together"),
    _limit("--watch-max-per-replica", "WATCH_MAX_PER_REPLICA", 1, 10_000_000, "watch streams one replica serves"),
    _limit("--watch-heartbeat-seconds", "WATCH_HEARTBEAT_SECONDS", 1, 3600,
           "seconds between heartbeat comments on an idle watch stream (so proxies keep it open)"),
    _limit("--watch-max-seconds", "WATCH_MAX_SECONDS", 1, 86_400,
           "a watch stream ends cleanly after this long (below the platform's request timeout); the client "
           "resumes with Last-Event-ID"),
    _limit("--watch-stream-max-events", "WATCH_STREAM_MAX_EVENTS", 1, 10_000_000,
           "events a namespace's stream keeps (about: Redis trims whole blocks); a watcher further behind resyncs"),
    _limit("--watch-resume-seconds", "WATCH_RESUME_SECONDS", 1, 86_400,
           "how long a namespace's events are kept for watchers to resume from (within the length bound)"),
    *OBSERVABILITY_OPTIONS,
]
_OPTION = {option.dest: option for option in OPTIONS}

# the option names above are the Limits fields, so Settings.parse can gather them by name
assert {f.name for f in dataclasses.fields(Limits)} <= set(_OPTION), "every limit needs its option"

__all__ = ["ConfigError", "Limits", "Settings", "OPTIONS"]
