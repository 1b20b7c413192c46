"""Benchmark of the rendezvous (not a test): prints a table of figures measured side by side in one run.

    python bench/bench_rendezvous.py [--duration 10] [--quick]

Needs wrk (apt-get install wrk) and redis-server. The server under test runs on core 0, wrk and Redis on
core 1; every figure is compared with a bare aiohttp endpoint measured in the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import nacl.signing

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from rendezvous.connection import RespConnection  # noqa: E402
from shared.envelope import peer_id_from_public_key  # noqa: E402
from rendezvous.keys import KeySchema  # noqa: E402
from rendezvous.record import Registration  # noqa: E402
from shared.registration import sign_registration  # noqa: E402
from rendezvous.settings import Limits  # noqa: E402
from rendezvous.store import Store  # noqa: E402

ADDRS = ("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1")
COOKIE_KEY = "b" * 40
PREFIX = "hp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int, command: list[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if shutil.which("taskset") and os.cpu_count() > 1 else []) + command


def wait_http(port: int, path: str = "/peers", seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on port {port}")


def wrk(port: int, path: str, duration: int, script: list[str] | None = None) -> dict:
    command = pinned(1, ["wrk", "-t1", "-c50", f"-d{duration}s", "--latency"])
    if script:
        command += ["-s", script[0], f"http://127.0.0.1:{port}{path}", "--", *script[1:]]
    else:
        command += [f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": _latency(out, "50%"), "p99": _latency(out, "99%"),
            "errors": int(errors.group(1)) if errors else 0}


def _latency(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def sign_bodies(count: int, path: pathlib.Path) -> None:
    with path.open("wb") as f:
        for _ in range(count):
            body = sign_registration(nacl.signing.SigningKey.generate(), "bench-post", list(ADDRS), 3600)
            f.write(b"%05d" % len(body) + body)


async def fill(redis_url: str, namespace: str, count: int) -> None:
    """Write `count` registrations through the service's own store code (the stored bytes are the service's)."""
    limits = Limits(rate_limit_ip_per_minute=10**9, rate_limit_peer_per_minute=10**9, max_peers_per_namespace=10**7,
                    max_registrations_per_source=10**8)
    store = Store(RespConnection(redis_url), KeySchema(PREFIX), limits)
    await store.load_scripts()

    async def worker(start: int) -> None:
        for i in range(start, count, 64):
            key = os.urandom(32)
            registration = Registration(peer_id_from_public_key(key), key, namespace, ADDRS, 3600,
                                        f"fill-nonce-{i:010d}", None)
            await store.register(registration, "10.9.9.9")

    await asyncio.gather(*(worker(start) for start in range(64)))
    await store.close()


def drop_transient_keys(port: int) -> None:
    for pattern in ("*:nonce:*", "*:rate"):
        keys = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", pattern],
                              capture_output=True, text=True).stdout.split()
        for start in range(0, len(keys), 1000):
            subprocess.run(["redis-cli", "-p", str(port), "unlink", *keys[start:start + 1000]],
                           capture_output=True, check=True)


def used_memory(port: int) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
    return int(re.search(r"used_memory:(\d+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 3 s per load, 10,000 peers")
    args = parser.parse_args()
    duration = 3 if args.quick else args.duration
    big = 10_000 if args.quick else 100_000
    for tool in ("wrk", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install wrk redis-server")

    work = pathlib.Path(tempfile.mkdtemp(prefix="hp-bench-"))
    redis_port, bare_port, service_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [subprocess.Popen(pinned(1, ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
                                         "no", "--dir", str(work)]), stdout=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen(pinned(0, [sys.executable, str(HERE / "bare_app.py"), str(bare_port)])))
        env = {**os.environ, "PORT": str(service_port), "HOST": "127.0.0.1", "REDIS_URL": redis_url,
               "COOKIE_HMAC_KEY": COOKIE_KEY, "RATE_LIMIT_IP_PER_MINUTE": "100000000",
               "RATE_LIMIT_PEER_PER_MINUTE": "100000000", "MAX_PEERS_PER_NAMESPACE": "10000000",
               "MAX_REGISTRATIONS_PER_SOURCE": "100000000",
               "LOG_LEVEL": "WARNING"}
        procs.append(subprocess.Popen(pinned(0, [sys.executable, "-m", "rendezvous.cli"]), env=env,
                                      stdout=subprocess.DEVNULL))
        wait_http(bare_port)
        wait_http(service_port)
        time.sleep(1)

        results: dict[str, dict] = {}
        results["bare GET"] = wrk(bare_port, "/peers", duration)
        bodies = work / "bodies.bin"
        sign_bodies(max(20_000, duration * 4_000), bodies)
        results["bare POST"] = wrk(bare_port, "/peers", duration, [str(HERE / "post_bodies.lua"), str(bodies)])

        before = used_memory(redis_port)
        asyncio.run(fill(redis_url, "bench-big", big))
        drop_transient_keys(redis_port)  # used nonces and rate counters expire within 2 minutes
        bytes_per_registration = (used_memory(redis_port) - before) / big
        asyncio.run(fill(redis_url, "bench-1k", 1_000))
        results["discover 100 of 1,000"] = wrk(service_port, "/peers?namespace=bench-1k&limit=100", duration)
        results[f"discover 100 of {big:,}"] = wrk(service_port, "/peers?namespace=bench-big&limit=100", duration)
        sign_bodies(max(20_000, duration * 4_000), bodies)  # fresh timestamps and nonces
        results["register (signed)"] = wrk(service_port, "/peers", duration,
                                           [str(HERE / "post_bodies.lua"), str(bodies)])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    report(results, bytes_per_registration, big, duration)


def report(results: dict, bytes_per_registration: float, big: int, duration: int) -> None:
    floors = {"GET": results["bare GET"]["rps"], "POST": results["bare POST"]["rps"]}
    print(f"\nrendezvous benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, wrk -t1 -c50 -d{duration}s\n")
    print("| load | req/s | p50 ms | p99 ms | % of bare | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        floor = floors["POST"] if ("POST" in name or "register" in name) else floors["GET"]
        print(f"| {name} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {100 * r['rps'] / floor:.0f}% "
              f"| {r['errors']} |")
    register = results["register (signed)"]["rps"] / floors["POST"]
    small, large = results["discover 100 of 1,000"], results[f"discover 100 of {big:,}"]
    checks = [
        ("signed registrations >= 40% of bare POST", register >= 0.40, f"{100 * register:.0f}%"),
        ("discover (page of 100) >= 25% of bare GET", small["rps"] / floors["GET"] >= 0.25,
         f"{100 * small['rps'] / floors['GET']:.0f}%"),
        (f"discover p50 at {big:,} within 1.2x of 1,000", large["p50"] <= 1.2 * small["p50"],
         f"{large['p50'] / small['p50']:.2f}x"),
        ("Redis memory per registration <= 600 B", bytes_per_registration <= 600, f"{bytes_per_registration:.0f} B"),
        ("registrations >= 40x py-libp2p's RendezvousService (72/s, shared/notes)",
         results["register (signed)"]["rps"] >= 40 * 72, f"{results['register (signed)']['rps'] / 72:.0f}x"),
    ]
    print()
    for label, ok, figure in checks:
        print(f"{'PASS' if ok else 'MISS'}  {label}: {figure}")
    if any(r["errors"] for r in results.values()):
        print("WARNING: some requests failed (non-2xx); the figures above are not valid")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({"results": results, "bytes_per_registration": bytes_per_registration},
                                                indent=2))


if __name__ == "__main__":
    main()
