"""Redis clients side by side on the service's own hot paths (issue 18, item 4). Not a test.

    python bench/bench_redis_clients.py [--seconds 5] [--concurrency 50] [--clients-path DIR]

Measures, on the same redis-server and at the same concurrency, the round trips the service makes:
- "register": the one-script registration a single node runs (lua.py REGISTER, EVALSHA with 11 keys and
  15 arguments, each call a new peer, built by the store's own `register_arguments`);
- "discover": what GET /peers sends, one round trip of two scripts (the source's rate counter, then a page of
  100 of a 1,000-peer namespace), whose reply carries 100 stored records.
through four clients:
- ours: rendezvous/connection.py RespConnection (one connection, every caller's commands pipelined on it,
  hiredis parsing);
- redis-py 8 asyncio with hiredis (what the Cluster path uses): execute_command, or a non-transactional
  pipeline for the two-script read;
- valkey-glide 2.x (Rust core, asyncio): custom_command, or a non-atomic Batch;
- coredis 6.x (anyio): evalsha, or a non-transactional pipeline.
Every client runs in a process of its own on core 0 (uvloop, as the service), `--concurrency` tasks calling
in a loop for `--seconds`; Redis runs on core 1. It prints ops/s and the client process's CPU-us per op (all
its threads: glide's Rust runtime included), and Redis's CPU-us per op, side by side. The arguments are
built before the clock starts, so only the client is measured.

valkey-glide and coredis are not dependencies of the project: install them apart, e.g.
`pip install --target ~/.cache/holepunch-services/bench-clients "valkey-glide>=2,<3" "coredis>=6,<7"`, and
pass that directory as --clients-path (the default); a client missing there is left out of the table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CLIENTS = ("ours", "redis-py", "glide", "coredis")
DEFAULT_CLIENTS_PATH = pathlib.Path.home() / ".cache/holepunch-services/bench-clients"
LOADS = ("register", "discover")


# --- the parent: Redis, the namespace to read, one child process per client and load ------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per client and load (default 5)")
    parser.add_argument("--concurrency", type=int, default=50, help="tasks calling at once (default 50, as wrk -c50)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is shown (default 3)")
    parser.add_argument("--clients-path", default=str(DEFAULT_CLIENTS_PATH),
                        help="where valkey-glide and coredis are installed (pip install --target)")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "LOAD", "PORT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        client, load, port, path = args.child
        print(json.dumps(child(client, load, int(port), path, args.seconds, args.concurrency)))
        return

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from bench_rendezvous import cpu_seconds, fill, free_port, pinned

    work = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"hp-clients-{os.getpid()}"
    work.mkdir(exist_ok=True)
    port = free_port()
    redis = subprocess.Popen(pinned(1, ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                                        "--dir", str(work)]), stdout=subprocess.DEVNULL)
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        time.sleep(0.5)
        asyncio.run(fill(f"redis://127.0.0.1:{port}/0", "bench-1k", 1_000))
        available = [c for c in CLIENTS if c in ("ours", "redis-py") or _importable(c, args.clients_path)]
        for _ in range(args.rounds):
            for load in LOADS:
                for client in available:
                    redis_before = cpu_seconds(redis.pid)
                    out = subprocess.run(pinned(0, [sys.executable, __file__, "--seconds", str(args.seconds),
                                                    "--concurrency", str(args.concurrency),
                                                    "--child", client, load, str(port), args.clients_path]),
                                         capture_output=True, text=True, cwd=ROOT)
                    if out.returncode != 0:
                        sys.exit(f"{client} {load} failed:\n{out.stderr[-3000:]}")
                    result = json.loads(out.stdout.splitlines()[-1])
                    result["redis_us"] = 1e6 * (cpu_seconds(redis.pid) - redis_before) / result["ops"]
                    rows.setdefault((client, load), []).append(result)
    finally:
        redis.terminate()
        redis.wait(10)
    report(rows, available, args)


def _importable(client: str, path: str) -> bool:
    module = {"glide": "glide", "coredis": "coredis"}[client]
    code = f"import sys; sys.path.insert(0, {path!r}); import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def report(rows: dict, available: list[str], args) -> None:
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    print(f"\nRedis clients on the service's round trips, {args.concurrency} concurrent callers, {args.seconds:g} s "
          f"each, median of {args.rounds} interleaved rounds; client on core 0, Redis on core 1\n")
    print("| client | " + " | ".join(f"{load}: ops/s | client CPU-us/op | Redis CPU-us/op" for load in LOADS) + " |")
    print("|---|" + "---:|---:|---:|" * len(LOADS))
    figures = {}
    for client in available:
        cells = []
        for load in LOADS:
            runs = rows[(client, load)]
            ops = median([r["ops"] / r["seconds"] for r in runs])
            cpu = median([1e6 * r["cpu"] / r["ops"] for r in runs])
            figures[(client, load)] = (ops, cpu)
            cells.append(f"{ops:,.0f} | {cpu:.1f} | {median([r['redis_us'] for r in runs]):.1f}")
        print(f"| {client} | " + " | ".join(cells) + " |")
    print()
    for load in LOADS:
        ours_ops, ours_cpu = figures[("ours", load)]
        for client in available[1:]:
            ops, cpu = figures[(client, load)]
            print(f"{load}: ours takes {ours_cpu:.1f} CPU-us a call against {client}'s {cpu:.1f} "
                  f"({cpu / ours_cpu:.2f}x), and makes {ours_ops / ops:.2f}x its calls a second")


# --- a child: one client, one load ------------------------------------------------------------------------------

def child(client: str, load: str, port: int, path: str, seconds: float, concurrency: int) -> dict:
    if client in ("glide", "coredis"):
        sys.path.insert(0, path)
    sys.path.insert(0, str(ROOT))
    import uvloop

    return uvloop.run(_child(client, load, port, seconds, concurrency))


async def _child(client: str, load: str, port: int, seconds: float, concurrency: int) -> dict:
    calls = _workload(load, port, concurrency, seconds)
    send, close = await _client(client, port)
    try:
        await send(calls[0][0])  # connected, and the scripts known to Redis
        ops = 0
        stop = False

        async def caller(mine: list) -> None:
            nonlocal ops
            for commands in mine[1:]:
                if stop:
                    return
                replies = await send(commands)
                if any(isinstance(r, Exception) for r in replies):
                    raise RuntimeError(f"{client}: {replies}")
                ops += 1

        started, cpu_started = time.perf_counter(), time.process_time()
        tasks = [asyncio.ensure_future(caller(mine)) for mine in calls]
        await asyncio.sleep(seconds)
        stop = True
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        await asyncio.gather(*tasks)
    finally:
        await close()
    return {"ops": ops, "seconds": elapsed, "cpu": cpu}


def _workload(load: str, port: int, concurrency: int, seconds: float) -> list[list[list[tuple]]]:
    """Per caller, its round trips (each a list of commands), built before the clock starts."""
    from rendezvous import lua
    from rendezvous.keys import KeySchema
    from rendezvous.record import Registration
    from rendezvous.settings import Limits
    from rendezvous.store import _SHA, Store
    from shared.envelope import peer_id_from_public_key

    limits = Limits(rate_limit_ip_per_minute=10**9, rate_limit_peer_per_minute=10**9,
                    max_peers_per_namespace=10**7, max_registrations_per_source=10**8)
    store = Store(None, KeySchema("hp"), limits)
    per_caller = int(seconds * 40_000 / concurrency) + 2  # more than any client makes (below 20,000/s here)
    calls = []
    for n in range(concurrency):
        mine = [[("SCRIPT", "LOAD", lua.ALL["register"])]]
        if load == "register":
            namespace = f"bench-clients-{os.getpid()}"
            for i in range(per_caller):
                key = os.urandom(32)
                reg = Registration(peer_id_from_public_key(key), key, namespace,
                                   ("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"), 3600,
                                   f"nonce-{n}-{i}-0123456789", None)
                keys, *arguments = store.register_arguments(reg, f"10.{n}.{i // 256 % 256}.{i % 256}", 10**8)
                mine.append([("EVALSHA", _SHA["register"], len(keys), *keys, *arguments)])
        else:
            keys = KeySchema("hp")
            trip = [("EVALSHA", _SHA["rate"], 1, keys.ip_rate(f"10.0.0.{n}"), 60_000),
                    ("EVALSHA", _SHA["discover"], 5, *keys.namespace("bench-1k").all(), "0", 100)]
            mine += [trip] * per_caller
        calls.append(mine)
    return calls


async def _client(name: str, port: int):
    """-> (send a round trip's commands: their replies, an error reply as an exception value), close."""
    if name == "ours":
        from rendezvous.connection import RespConnection

        connection = RespConnection(f"redis://127.0.0.1:{port}/0")
        return connection.execute, connection.aclose
    if name == "redis-py":
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=port, max_connections=1000)

        async def send(commands):
            if len(commands) == 1:
                try:
                    return [await client.execute_command(*commands[0])]
                except Exception as exc:
                    return [exc]
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)

        return send, client.aclose
    if name == "glide":
        from glide import Batch, GlideClient, GlideClientConfiguration, NodeAddress

        client = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", port)]))

        def text(command):
            return [a if isinstance(a, (bytes, str)) else str(a) for a in command]

        async def send(commands):
            if len(commands) == 1:
                try:
                    return [await client.custom_command(text(commands[0]))]
                except Exception as exc:
                    return [exc]
            batch = Batch(is_atomic=False)
            for command in commands:
                batch.custom_command(text(command))
            return await client.exec(batch, raise_on_error=False)

        return send, client.close
    if name == "coredis":
        import contextlib

        import coredis

        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(coredis.Redis(port=port, max_connections=1000, decode_responses=False))

        def call(target, command):
            if command[0] == "EVALSHA":
                _, sha, count, *rest = command
                return target.evalsha(sha, keys=rest[:count], args=rest[count:])
            return target.script_load(command[2])

        async def send(commands):
            if len(commands) == 1:
                try:
                    return [await call(client, commands[0])]
                except Exception as exc:
                    return [exc]
            async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                requests = [call(pipe, command) for command in commands]
            return [await request for request in requests]

        return send, stack.aclose
    raise ValueError(name)


if __name__ == "__main__":
    main()
