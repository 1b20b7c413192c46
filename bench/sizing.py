"""Sizing of Memorystore and Cloud Run for the rendezvous (not a test): prints, as Markdown, how many live peers
and registrations a second each Memorystore size serves, and how many Cloud Run replicas that takes.

    .venv/bin/python bench/sizing.py [--registrations 50000] [--run-bench]

Measured in this run, against a local redis-server, through the service's own store code (rendezvous/store.py)
called as the registry calls it (count_request, then register; discover with the rate counter):
  - Redis memory per live registration (used_memory before and after, transient keys dropped), and the
    transient memory (replay nonces, rate counters) each registration leaves for a while;
  - round trips and commands per registration and per discovery, counted at the connection;
  - Redis main-thread CPU per registration and per discovery (INFO cpu, user + sys of the main thread, which
    runs every command and script: what bounds one primary).
One replica's throughput comes from bench/bench_rendezvous.py (its bench/results/latest.json; --run-bench runs
it first, `--quick`). Memorystore's sizes and limits are documented figures, stated as assumptions below.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from rendezvous.connection import RespConnection  # noqa: E402
from rendezvous.cookie import START  # noqa: E402
from rendezvous.keys import KeySchema  # noqa: E402
from rendezvous.record import Registration  # noqa: E402
from rendezvous.settings import Limits  # noqa: E402
from rendezvous.store import Store  # noqa: E402
from shared.envelope import peer_id_from_public_key  # noqa: E402

# ---------------------------------------------------------------- assumptions (documented, not measured)

GIB = 2 ** 30  # Memorystore's "GB" of memory are taken as GiB (Redis's maxmemory is in bytes)
# Memorystore for Redis (one primary): capacities 1-300 GB; maxmemory defaults to the provisioned capacity
# (cloud.google.com/memorystore/docs/redis/memory-management-best-practices). The sizes of the capacity tiers'
# edges, M1 to M5 (cloud.google.com/memorystore/docs/redis/pricing).
INSTANCE_GB = [1, 5, 16, 35, 100, 300]
# Memorystore for Redis Cluster: per node type, the default writable keyspace (maxmemory, 80% of the node's
# memory: the rest is reserved against OOM) and the node's memory, from
# cloud.google.com/memorystore/docs/cluster/cluster-node-specification; 1-250 shards, at most 250 usage units
# = shards x (1 + replicas) per cluster (cloud.google.com/memorystore/docs/cluster/quotas).
NODE_TYPES = {  # name: (writable keyspace GB, node memory GB)
    "redis-shared-core-nano": (1.12, 1.4),
    "redis-standard-small": (5.2, 6.5),
    "redis-highmem-medium": (10.4, 13),
    "redis-standard-large": (20.8, 26),
    "redis-highmem-xlarge": (46.4, 58),
    "redis-highmem-2xlarge": (88, 110),
}
CLUSTERS = [("redis-standard-small", 3), ("redis-standard-small", 10), ("redis-highmem-medium", 10),
            ("redis-highmem-medium", 30), ("redis-highmem-xlarge", 30), ("redis-highmem-xlarge", 125)]
# Google publishes no commands-a-second figure for any Memorystore size. Redis runs every command and Lua
# script on one main thread (I/O threads on larger nodes only move socket work), so one primary's ceiling is
# one core: taken as one core of this machine, measured below, and planned at half of it (headroom for
# failover, replication, RDB snapshots and bursts). Shared-core nano nodes (no SLA) are left out.
PRIMARY_CPU_SHARE = 0.5
# Peers renew at half their TTL (the worker and the clients in shared/registrar.py renew before expiry), and
# the default TTL is Limits.ttl_default.
RENEW_FRACTION_OF_TTL = 0.5

ADDRS = ("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1")
PREFIX = "hp"
CONCURRENCY = 64


class CountingConnection(RespConnection):
    """The service's connection, counting what it sends: one execute() is one round trip."""

    def __init__(self, url: str):
        super().__init__(url)
        self.round_trips = 0
        self.commands = 0

    async def execute(self, commands):
        self.round_trips += 1
        self.commands += len(commands)
        return await super().execute(commands)


@dataclasses.dataclass
class Measured:
    registrations: int
    bytes_live: float  # per live registration, one source per peer (the worst case: a quota set each)
    bytes_live_one_source: float  # per live registration when all come from one address
    bytes_transient: float  # per registration, alive for the nonce TTL
    round_trips_register: float
    commands_register: float
    round_trips_discover: float
    commands_discover: float
    redis_us_register: float  # Redis main-thread CPU per registration
    redis_us_discover: float  # per discovery of a page of 100
    redis_us_index: float  # per update of the one live-namespaces index, a round trip of its own on a cluster


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def info_field(port: int, section: str, field: str) -> float:
    return float(re.search(rf"^{field}:([\d.]+)", redis_cli(port, "info", section), re.M).group(1))


def main_thread_cpu(port: int) -> float:
    return info_field(port, "cpu", "used_cpu_user_main_thread") + info_field(port, "cpu", "used_cpu_sys_main_thread")


def drop_transient_keys(port: int) -> None:
    for pattern in (f"{PREFIX}:*:nonce:*", f"{PREFIX}:*:rate"):
        keys = redis_cli(port, "--scan", "--pattern", pattern).split()
        for start in range(0, len(keys), 1000):
            redis_cli(port, "unlink", *keys[start:start + 1000])


def registration(namespace: str, i: int) -> Registration:
    key = os.urandom(32)
    return Registration(peer_id_from_public_key(key), key, namespace, ADDRS, Limits().ttl_default,
                        f"sizing-nonce-{i:010d}", None)


async def register_all(store: Store, namespace: str, count: int, one_source: bool) -> None:
    async def worker(start: int) -> None:
        for i in range(start, count, CONCURRENCY):
            source = "10.9.9.9" if one_source else f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            await store.register(registration(namespace, i), source)  # counts the request itself

    await asyncio.gather(*(worker(start) for start in range(CONCURRENCY)))


async def discover_all(store: Store, namespace: str, count: int) -> None:
    async def worker(start: int) -> None:
        for i in range(start, count, CONCURRENCY):
            await store.discover(namespace, START, 100, f"10.8.{i >> 8 & 255}.{i & 255}")

    await asyncio.gather(*(worker(start) for start in range(CONCURRENCY)))


async def measure(port: int, count: int) -> Measured:
    limits = Limits(rate_limit_ip_per_minute=10 ** 9, rate_limit_peer_per_minute=10 ** 9,
                    max_peers_per_namespace=10 ** 7, max_registrations_per_source=10 ** 8)
    connection = CountingConnection(f"redis://127.0.0.1:{port}/0")
    store = Store(connection, KeySchema(PREFIX), limits)
    await store.load_scripts()

    def used() -> float:
        return info_field(port, "memory", "used_memory")

    # one source per peer: the memory figure the capacity uses, and the CPU and round trips per registration
    before, cpu, trips, commands = used(), main_thread_cpu(port), connection.round_trips, connection.commands
    await register_all(store, "sizing-many", count, one_source=False)
    register_cpu = main_thread_cpu(port) - cpu
    register_trips, register_commands = connection.round_trips - trips, connection.commands - commands
    with_transient = used()
    drop_transient_keys(port)
    bytes_live = (used() - before) / count
    bytes_transient = (with_transient - used()) / count

    before = used()
    await register_all(store, "sizing-one", count, one_source=True)
    drop_transient_keys(port)
    bytes_one_source = (used() - before) / count

    await register_all(store, "sizing-1k", 1000, one_source=False)
    discoveries = max(2000, count // 2)
    cpu, trips, commands = main_thread_cpu(port), connection.round_trips, connection.commands
    await discover_all(store, "sizing-1k", discoveries)
    discover_cpu = main_thread_cpu(port) - cpu
    discover_trips, discover_commands = connection.round_trips - trips, connection.commands - commands

    # Every registration also updates one key, the live-namespaces index (ZADD GT, KeySchema.namespaces()): on a
    # cluster that key's shard gets it as a round trip of its own, from every registration of every namespace
    async def index_worker(start: int) -> None:
        for i in range(start, count, CONCURRENCY):
            await connection.execute([("ZADD", store.keys.namespaces(), "GT", int(time.time() * 1000), "sizing-many")])

    cpu = main_thread_cpu(port)
    await asyncio.gather(*(index_worker(start) for start in range(CONCURRENCY)))
    index_cpu = main_thread_cpu(port) - cpu
    await store.close()
    return Measured(count, bytes_live, bytes_one_source, bytes_transient,
                    register_trips / count, register_commands / count,
                    discover_trips / discoveries, discover_commands / discoveries,
                    1e6 * register_cpu / count, 1e6 * discover_cpu / discoveries, 1e6 * index_cpu / count)


def replica_throughput(run_bench: bool) -> tuple[float, float, str]:
    """(registrations/s, discoveries/s) of one replica on one core, and where they come from."""
    latest = HERE / "results" / "latest.json"
    if run_bench or not latest.exists():
        subprocess.run([sys.executable, str(HERE / "bench_rendezvous.py"), "--quick"], check=True,
                       stdout=subprocess.DEVNULL)
    results = json.loads(latest.read_text())["results"]
    discover = next(v for k, v in results.items() if k.startswith("discover 100 of 1,000"))
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(latest.stat().st_mtime))
    return results["register (signed)"]["rps"], discover["rps"], f"bench/bench_rendezvous.py, {when}"


def table(m: Measured, replica_register: float, replica_discover: float, high_water: float) -> list[str]:
    ttl = Limits().ttl_default
    renew_every = ttl * RENEW_FRACTION_OF_TTL
    nonce_ttl = 2 * Limits().timestamp_window + 1  # as Store._nonce_ttl_ms: how long a registration's nonce lives
    # Live peers P fill the high-water mark with their records and with the nonces of their renewals:
    # P * bytes_live + (P / renew_every) * nonce_ttl * bytes_transient = high_water * maxmemory
    per_peer = m.bytes_live + nonce_ttl * m.bytes_transient / renew_every
    primary_register = PRIMARY_CPU_SHARE * 1e6 / m.redis_us_register
    primary_discover = PRIMARY_CPU_SHARE * 1e6 / m.redis_us_discover

    rows = []

    def row(name: str, maxmemory_gb: float, primaries: int, cluster: bool) -> None:
        by_memory = high_water * maxmemory_gb * GIB / per_peer
        register, discover = primaries * primary_register, primaries * primary_discover
        if cluster:  # the index's shard takes its share of registrations and every index update
            register = PRIMARY_CPU_SHARE * 1e6 / (m.redis_us_register / primaries + m.redis_us_index)
        by_cpu = register * renew_every  # the peers whose renewals take all the registrations Redis serves
        served = min(by_memory, by_cpu)
        rows.append(f"| {name} | {maxmemory_gb:,.1f} GB | {by_memory:,.0f} | {by_cpu:,.0f} | "
                    f"**{served:,.0f}** ({'memory' if by_memory <= by_cpu else 'CPU'}) | {register:,.0f} | "
                    f"{discover:,.0f} | {math.ceil(register / replica_register):,} | "
                    f"{math.ceil(discover / replica_discover):,} |")

    for gb in INSTANCE_GB:
        row(f"instance {gb} GB", gb, 1, cluster=False)
    for node_type, shards in CLUSTERS:
        row(f"cluster {shards} x {node_type}", NODE_TYPES[node_type][0] * shards, shards, cluster=True)
    return [
        f"| Memorystore | maxmemory | live peers memory holds (to {high_water:.0%}) | live peers Redis CPU renews "
        f"(every {renew_every / 3600:g} h) | live peers served (bound) | registrations/s | discoveries/s "
        "| replicas for those registrations/s | replicas for those discoveries/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registrations", type=int, default=50_000, help="registrations measured (default 50,000)")
    parser.add_argument("--run-bench", action="store_true", help="run bench_rendezvous.py --quick first for the "
                        "replica's throughput (otherwise its last bench/results/latest.json)")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install redis-server")
    replica_register, replica_discover, source = replica_throughput(args.run_bench)

    work = pathlib.Path(tempfile.mkdtemp(prefix="hp-sizing-"))
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                              "--dir", str(work)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        m = asyncio.run(measure(port, args.registrations))
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    high_water = Limits().redis_high_water_percent / 100
    print(f"\nSizing, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; {m.registrations:,} registrations measured\n")
    print("| measured | figure |")
    print("|---|---:|")
    print(f"| Redis memory per live registration (one address per peer) | {m.bytes_live:,.0f} B |")
    print(f"| Redis memory per live registration (all from one address) | {m.bytes_live_one_source:,.0f} B |")
    print(f"| transient memory per registration (nonce, rate counters; {2 * Limits().timestamp_window + 1} s) "
          f"| {m.bytes_transient:,.0f} B |")
    print(f"| round trips / commands per registration | {m.round_trips_register:.2f} / {m.commands_register:.2f} |")
    print(f"| round trips / commands per discovery (page of 100) | {m.round_trips_discover:.2f} / "
          f"{m.commands_discover:.2f} |")
    print(f"| Redis main-thread CPU per registration | {m.redis_us_register:.1f} µs |")
    print(f"| Redis main-thread CPU per discovery (page of 100 of 1,000) | {m.redis_us_discover:.1f} µs |")
    print(f"| Redis main-thread CPU per update of the live-namespaces index (one key) | {m.redis_us_index:.1f} µs |")
    print(f"| one replica (one core): registrations/s, discoveries/s ({source}) | {replica_register:,.0f}, "
          f"{replica_discover:,.0f} |")
    print()
    print("\n".join(table(m, replica_register, replica_discover, high_water)))
    print(f"\nRedis figures at {PRIMARY_CPU_SHARE:.0%} of one primary's core, each column alone (a mix shares it). "
          "On a cluster a namespace's records live in one slot, so one namespace gets one shard's share; the "
          "totals assume many namespaces, and registrations are capped by the shard of the live-namespaces index, "
          "which every registration updates.")


if __name__ == "__main__":
    main()
