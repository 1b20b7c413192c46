"""Benchmark of watch streams on one replica (not a test): memory per watcher, and signed registrations/s with
no watchers against the same load with N watchers open, measured side by side in one run.

    python bench/bench_watchers.py [--watchers 10000] [--duration 10]

Three phases, each a wrk run of signed registrations (the rendezvous on core 0;
wrk, Redis and the watchers' process on core 1):
  1. no watchers;
  2. N watchers on 100 other namespaces (idle streams: what most watchers are, most of the time);
  3. N watchers on a fresh namespace that the registrations then go to: each is a `join` sent to all N.
Memory per watcher is the rendezvous process's RSS growth while the N idle streams opened, divided by N.
Idle cost is the server's CPU over 15 s with no requests (one heartbeat period), with none and then with the
N idle streams open.
The watchers are raw sockets in one asyncio process that reads and discards, so they cost the server
what EventSource clients would, and little CPU of their own.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
IDLE_SECONDS = 15
sys.path.insert(0, str(HERE.parent))

from bench.bench_rendezvous import (COOKIE_KEY, cpu_seconds, free_port, pinned, sign_bodies,  # noqa: E402
                                     wait_http, wrk)

# The watchers' process: opens N streams, prints "open <n>" once all have their first event, then drains
# until stdin closes.
WATCHERS = r"""
import asyncio, sys
port, count, namespaces = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")

class Drain(asyncio.Protocol):
    def __init__(self, ready):
        self.ready, self.head = ready, b""
    def data_received(self, data):
        if not self.ready.done():
            self.head += data
            # a stream's first event, or a refusal's whole answer (a JSON body: no blank line in it)
            if b"\n\n" in self.head.split(b"\r\n\r\n", 1)[-1] or (b"\r\n\r\n" in self.head and b" 200 " not in self.head.split(b"\r\n", 1)[0]):
                self.ready.set_result(self.head.split(b"\r\n", 1)[0])
                self.head = b""

async def main():
    loop = asyncio.get_running_loop()
    statuses = []
    for start in range(0, count, 100):  # in batches under the listen backlog (128): none waits on a SYN retry
        readies = []
        for i in range(start, min(start + 100, count)):
            ready = loop.create_future()
            ns = namespaces[i % len(namespaces)]
            transport, _ = await loop.create_connection(lambda: Drain(ready), "127.0.0.1", port)
            transport.write(f"GET /peers/watch?namespace={ns} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
            readies.append(ready)
        statuses += await asyncio.gather(*readies)
    bad = [s for s in statuses if b" 200 " not in s]
    print(f"open {count - len(bad)} refused {len(bad)} {bad[:1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def idle_cpu(pid: int, seconds: float) -> float:
    """The share of a core process `pid` spends over `seconds` of no requests (user + system, /proc)."""
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - start) / seconds


def open_watchers(port: int, count: int, namespaces: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(pinned(1, [sys.executable, "-c", WATCHERS, str(port), str(count), ",".join(namespaces)]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith(f"open {count} refused 0"):
        proc.kill()
        raise RuntimeError(f"the watchers did not all open: {line!r}")
    return proc


def close_watchers(proc: subprocess.Popen, port: int) -> None:
    """Close the streams, and wait until the service has let every one go (its gauge at 0): their places in
    the per-source cap are freed in Redis one by one."""
    proc.stdin.close()
    proc.wait(30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        if re.search(r"^rendezvous_watchers 0\.0$", text, re.M):
            return
        time.sleep(0.5)
    raise RuntimeError("the service still counts watchers two minutes after they closed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install wrk redis-server")
    want = args.watchers * 2 + 1024  # the server's sockets and the watchers' (both inherit this limit)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    work = pathlib.Path(tempfile.mkdtemp(prefix="hp-bench-watch-"))
    redis_port, port = free_port(), free_port()
    procs = [subprocess.Popen(pinned(1, ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
                                         "no", "--dir", str(work)]), stdout=subprocess.DEVNULL)]
    rows: dict[str, dict] = {}
    try:
        env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "COOKIE_HMAC_KEY": COOKIE_KEY, "RATE_LIMIT_IP_PER_MINUTE": "100000000",
               "RATE_LIMIT_PEER_PER_MINUTE": "100000000", "MAX_PEERS_PER_NAMESPACE": "10000000",
               "MAX_REGISTRATIONS_PER_SOURCE": "100000000", "WATCH_MAX_PER_SOURCE": str(args.watchers + 10),
               "WATCH_MAX_PER_REPLICA": str(args.watchers + 10), "PROCESSES": "1", "LOG_LEVEL": "WARNING"}
        service = subprocess.Popen(pinned(0, [sys.executable, "-m", "rendezvous.cli"]), env=env,
                                   stdout=subprocess.DEVNULL)
        procs.append(service)
        wait_http(port)
        time.sleep(1)
        bodies = work / "bodies.bin"

        def register(label: str, namespace: str = "bench-post") -> None:
            sign_bodies(args.duration * 10_000, bodies, namespace)  # fresh timestamps, nonces, peers: none replayed
            rows[label] = wrk(port, "/peers", args.duration, [str(HERE / "post_bodies.lua"), str(bodies)],
                              server=service.pid)

        register("no watchers")
        # over one heartbeat period (15 s): every stream's heartbeat and the leases' renewal fall in it
        idle_none = idle_cpu(service.pid, IDLE_SECONDS)
        before = rss_bytes(service.pid)
        idle = open_watchers(port, args.watchers, [f"idle-{i}" for i in range(100)])
        per_watcher = (rss_bytes(service.pid) - before) / args.watchers
        idle_some = idle_cpu(service.pid, IDLE_SECONDS)
        register(f"{args.watchers:,} watchers of other namespaces")
        close_watchers(idle, port)
        # Last, as it leaves the server sending for a while after wrk stops. The namespace is a fresh one:
        # each stream opens with a snapshot of every peer in it, megabytes after a run of registrations.
        busy = open_watchers(port, args.watchers, ["bench-hot"])
        register(f"{args.watchers:,} watchers of the namespace registered to", "bench-hot")
        close_watchers(busy, port)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    base = rows["no watchers"]["rps"]
    print(f"\nsigned registrations/s on one replica (core 0), {args.duration} s per row\n")
    print("| load | reg/s | of no watchers | p50 ms | server CPU µs/req | errors |\n|---|---:|---:|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {row['rps']:,.0f} | {100 * row['rps'] / base:.0f}% | {row['p50']:.2f} | "
              f"{row['cpu_us']:.0f} | {row['errors']} |")
    print(f"\nmemory: {per_watcher / 1024:.1f} KiB per watcher (rendezvous RSS growth over {args.watchers:,} "
          f"streams); target <= 20 KiB")
    print(f"throughput with idle watchers: {100 * rows[list(rows)[1]]['rps'] / base:.0f}% of none (target >= 90%)")
    print(f"server CPU with no requests, over {IDLE_SECONDS} s: {100 * idle_none:.1f}% of a core with no watchers, "
          f"{100 * idle_some:.1f}% with {args.watchers:,} idle watchers of 100 namespaces")


if __name__ == "__main__":
    main()
