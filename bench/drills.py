"""Reliability drills of the rendezvous (not tests, though tests/test_drills.py runs the first two on a short
clock): each starts its own redis-server and rendezvous processes on loopback, drives load, injects the
fault, and prints what it measured.

    python bench/drills.py failover [--lag 1.0] [--promote-after 1.0]   # Redis primary killed, replica promoted
    python bench/drills.py drain [--no-resend]                          # a replica SIGTERMed, then one SIGKILLed
    python bench/drills.py soak [--minutes 10]                          # mixed load: memory, 5xx

Needs redis-server. Every drill accepts --clients and --rate (requests per second per client).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import logging
import os
import pathlib
import random
import signal
import sys
import time
import uuid

import httpx
import nacl.signing
import redis
import trio

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rendezvous.keys import KeySchema  # noqa: E402
from shared.envelope import peer_id_from_public_key  # noqa: E402
from shared.identity import Identity  # noqa: E402
from shared.registrar import Registrar  # noqa: E402
from shared.registration import sign_registration, sign_unregistration  # noqa: E402
from shared.rendezvous_client import RendezvousClient  # noqa: E402
from tests.lb import Balancer, Replica, TcpProxy, drill_dir, process_rss_kib, replica_env  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

ADDRS = ["/ip4/203.0.113.7/tcp/4001"]
OCTET = {"Content-Type": "application/octet-stream"}
LOAD_NS, WORKER_NS, SOAK_NS = "load", "workers", "soak"
LOAD_TTL = 3600  # the load's registrations outlive the drill: one missing afterwards was lost, not expired


def peer_of(key: nacl.signing.SigningKey) -> str:
    return peer_id_from_public_key(bytes(key.verify_key))


@dataclasses.dataclass
class Tally:
    """What the load saw: answers by status ("transport" when none came), registrations acknowledged, and
    when the first and last 503 answered."""
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    acked: list[str] = dataclasses.field(default_factory=list)
    first_503: float | None = None
    last_503: float | None = None
    ok_after: dict[str, int] = dataclasses.field(default_factory=dict)  # successes after a named moment
    marks: dict[str, float] = dataclasses.field(default_factory=dict)

    def note(self, status: int | str) -> None:
        now = trio.current_time()
        self.statuses[status] += 1
        if status == 503:
            self.first_503 = self.first_503 if self.first_503 is not None else now
            self.last_503 = now
        if isinstance(status, int) and status < 400:
            for name, at in self.marks.items():
                if now > at:
                    self.ok_after[name] = self.ok_after.get(name, 0) + 1

    def mark(self, name: str) -> None:
        self.marks[name] = trio.current_time()

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == "transport" or status >= 400)

    @property
    def seconds_of_503(self) -> float:
        return 0.0 if self.first_503 is None else self.last_503 - self.first_503


async def paced(rate: float, stop: trio.Event, step) -> None:
    """Call `step` `rate` times a second until `stop`; a late step never makes the next ones burst."""
    interval, next_at = 1.0 / rate, trio.current_time()
    while not stop.is_set():
        await step()
        next_at = max(next_at + interval, trio.current_time())
        with trio.move_on_at(next_at):
            await stop.wait()


async def registration_load(url: str, tally: Tally, rate: float, stop: trio.Event, discover_share: float = 0.0):
    """One client: every step registers a new peer in LOAD_NS (or, with `discover_share`, lists a page)."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        async def step():
            try:
                if random.random() < discover_share:
                    response = await http.get("/peers", params={"namespace": LOAD_NS, "limit": "50"})
                    tally.note(response.status_code)
                    return
                key = nacl.signing.SigningKey.generate()
                response = await http.post("/peers", content=sign_registration(key, LOAD_NS, ADDRS, LOAD_TTL),
                                           headers=OCTET)
            except httpx.HTTPError:
                tally.note("transport")
                return
            tally.note(response.status_code)
            if response.status_code in (200, 201):
                tally.acked.append(peer_of(key))
        await paced(rate, stop, step)


async def present(http: httpx.AsyncClient, url: str, namespace: str) -> set[str]:
    """Every peer ID live in `namespace`, all pages; httpx.HTTPStatusError while the service fails."""
    seen: set[str] = set()
    cookie = None
    while True:
        params = {"namespace": namespace, "limit": "1000", **({"cookie": cookie} if cookie else {})}
        response = await http.get(f"{url}/peers", params=params)
        response.raise_for_status()
        page = response.json()
        seen |= {peer["ID"] for peer in page["Peers"]}
        if not page["More"]:
            return seen
        cookie = page["Cookie"]


async def until_present(url: str, namespace: str, wanted: set[str], timeout: float) -> tuple[float | None, int]:
    """Poll until every one of `wanted` is live. -> (seconds it took or None, how many the first answer lacked)."""
    started, first_missing = trio.current_time(), None
    async with httpx.AsyncClient(timeout=2.0) as http:
        with trio.move_on_after(timeout):
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    missing = len(wanted - await present(http, url, namespace))
                    first_missing = missing if first_missing is None else first_missing
                    if not missing:
                        return trio.current_time() - started, first_missing
                await trio.sleep(0.1)
    return None, first_missing or 0


def start_workers(nursery: trio.Nursery, url: str, count: int, ttl: int) -> list[tuple[Registrar, RendezvousClient]]:
    """`count` peers each kept registered in WORKER_NS by a Registrar, as workers keep themselves."""
    workers = []
    for _ in range(count):
        client = RendezvousClient(url, Identity.from_seed(os.urandom(32)))
        registrar = Registrar(client, WORKER_NS, ttl, lambda: ADDRS)
        nursery.start_soon(registrar.keep_registered)
        workers.append((registrar, client))
    return workers


def worker_ids(workers) -> set[str]:
    return {str(client.identity.peer_id) for _, client in workers}


async def in_thread(function, *args):
    return await trio.to_thread.run_sync(function, *args)


def wait_replication(replica: RedisServer, timeout: float = 20.0) -> None:
    client, deadline = redis.Redis(port=replica.port), time.monotonic() + timeout
    while client.info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica never caught up with the primary")
        time.sleep(0.05)


# --- failover ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FailoverFigures:
    requests: int
    failed: int
    statuses: dict
    seconds_of_503: float  # first 503 to last
    last_503_after_move: float | None  # from the endpoint's move to the promoted replica to the last 503
    acked: int
    acked_missing: int  # acknowledged, then lost with the primary
    acked_during_lag: int
    workers: int
    workers_lost: int  # Registrar-driven peers missing at the first answer after the failover
    workers_back_after: float | None  # from the endpoint's move until every one of them was registered again

    def report(self) -> str:
        return "\n".join([
            f"requests {self.requests}, failed {self.failed} ({_statuses(self.statuses)})",
            f"seconds of 503s: {self.seconds_of_503:.2f} (last 503 {_secs(self.last_503_after_move)} after the "
            f"endpoint moved to the promoted replica)",
            f"acknowledged registrations: {self.acked}, {self.acked_during_lag} of them while replication lagged; "
            f"missing after the failover: {self.acked_missing}",
            f"workers: {self.workers}, {self.workers_lost} lost with the primary; every one registered again "
            f"{_secs(self.workers_back_after)} after the failover"])


async def failover(clients: int = 8, rate: float = 20, workers: int = 20, worker_ttl: int = 30, lag: float = 1.0,
                   promote_after: float = 1.0, warmup: float = 3.0, after: float = 12.0) -> FailoverFigures:
    """A primary and a replica redis-server, replication through a proxy that can lag, the service's endpoint a
    proxy too; two rendezvous replicas behind a balancer under registration load, and workers kept registered
    by Registrars, half of them registered while replication lags. Then: SIGKILL the primary, REPLICAOF NO ONE
    the replica after `promote_after` s, move the endpoint to it."""
    primary = RedisServer()
    with drill_dir() as logs, contextlib.ExitStack() as stack:
        await in_thread(primary.start)
        stack.callback(primary.stop)
        async with trio.open_nursery() as nursery:
            link = await nursery.start(TcpProxy(primary.port).run)
            replica = RedisServer("--replicaof", "127.0.0.1", str(link.port))
            await in_thread(replica.start)
            stack.callback(replica.stop)
            await in_thread(wait_replication, replica)
            endpoint = await nursery.start(TcpProxy(primary.port).run)
            env = replica_env(f"redis://127.0.0.1:{endpoint.port}/0", "drill")
            services = [Replica(env, logs) for _ in range(2)]
            for service in services:
                stack.callback(service.stop)
                await in_thread(service.start)
            balancer = await nursery.start(Balancer([s.url for s in services]).run)

            early = start_workers(nursery, balancer.url, workers // 2, worker_ttl)
            if (await until_present(balancer.url, WORKER_NS, worker_ids(early), 20))[0] is None:
                raise RuntimeError("the first workers never registered")
            tally, stop = Tally(), trio.Event()
            for _ in range(clients):
                nursery.start_soon(registration_load, balancer.url, tally, rate, stop)
            await trio.sleep(warmup)

            link.stall()  # from here, what the primary acknowledges never reaches the replica
            acked_before_lag = len(tally.acked)
            late = start_workers(nursery, balancer.url, workers - len(early), worker_ttl)
            await trio.sleep(lag)
            if not all(registrar.registered_addrs for registrar, _ in late):
                raise RuntimeError(f"the late workers did not register within the {lag} s of lag")
            primary.proc.kill()  # SIGKILL: what is only in its memory dies with it
            link.drop()
            acked_during_lag = len(tally.acked) - acked_before_lag
            await trio.sleep(promote_after)
            await in_thread(lambda: redis.Redis(port=replica.port).replicaof("NO", "ONE"))
            endpoint.point_to(replica.port)
            moved_at = trio.current_time()

            everyone = worker_ids(early) | worker_ids(late)
            back_after, lost = await until_present(balancer.url, WORKER_NS, everyone, after + 20)
            await trio.sleep(max(0.0, moved_at + after - trio.current_time()))
            stop.set()
            await trio.sleep(0.5)  # the last requests come back
            async with httpx.AsyncClient(timeout=10.0) as http:
                live = await present(http, balancer.url, LOAD_NS)
            nursery.cancel_scope.cancel()
        for _, client in early + late:
            await client.aclose()
    return FailoverFigures(
        requests=tally.requests, failed=tally.failed, statuses=dict(tally.statuses),
        seconds_of_503=tally.seconds_of_503,
        last_503_after_move=None if tally.last_503 is None else max(0.0, tally.last_503 - moved_at),
        acked=len(tally.acked), acked_missing=len(set(tally.acked) - live), acked_during_lag=acked_during_lag,
        workers=len(everyone), workers_lost=lost, workers_back_after=back_after)


# --- drain and kill ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Phase:
    requests: int
    failed: int
    statuses: dict
    in_flight: int  # at the signal, at the balancer, to the signalled replica
    exit_seconds: float | None  # from the signal until the process was gone
    exit_code: int | None
    ok_after: int  # requests answered well after the signal
    refused: int  # connections the balancer found refused, their requests sent to the other replica
    resent: dict  # requests left unanswered (closed or reset) and sent to the other replica, by cause
    gateway_failures: dict  # the balancer's own 502s, by cause

    def report(self, name: str) -> str:
        return (f"{name}: requests {self.requests}, failed {self.failed} ({_statuses(self.statuses)}); "
                f"{self.in_flight} in flight to it at the signal; it exited {_secs(self.exit_seconds)} later "
                f"(status {self.exit_code}); {self.ok_after} answered well after it\n"
                f"  the balancer found {self.refused} connections refused and sent them on; resent unanswered: "
                f"{_statuses(self.resent) or 'none'}; its 502s: {_statuses(self.gateway_failures) or 'none'}")


@dataclasses.dataclass
class DrainFigures:
    sigterm: Phase
    sigkill: Phase
    resend_unanswered: bool

    def report(self) -> str:
        mode = "resends" if self.resend_unanswered else "does not resend (502)"
        return "\n".join([f"the balancer {mode} requests left unanswered",
                          self.sigterm.report("SIGTERM"), self.sigkill.report("SIGKILL")])


async def drain(clients: int = 8, rate: float = 20, before: float = 3.0, after: float = 4.0,
                resend_unanswered: bool = True) -> DrainFigures:
    """Two replicas behind the balancer under load (registrations and discovery); SIGTERM one mid-load;
    then, a fresh replica beside the survivor, SIGKILL the survivor mid-load."""
    server = RedisServer()
    with drill_dir() as logs, contextlib.ExitStack() as stack:
        await in_thread(server.start)
        stack.callback(server.stop)
        env = replica_env(server.url, "drill")

        async def new_replica() -> Replica:
            service = Replica(env, logs)
            stack.callback(service.stop)
            return await in_thread(service.start)

        async with trio.open_nursery() as nursery:
            one, two = await new_replica(), await new_replica()
            balancer = await nursery.start(Balancer([one.url, two.url], resend_unanswered).run)

            async def phase(victim: Replica, signum: int) -> Phase:
                tally, stop = Tally(), trio.Event()
                refused, resent, failures = balancer.retried, balancer.resent.copy(), balancer.failures.copy()
                for _ in range(clients):
                    nursery.start_soon(registration_load, balancer.url, tally, rate, stop, 0.3)
                await trio.sleep(before)
                in_flight = balancer.backend(victim.url).in_flight
                signalled = trio.current_time()
                victim.signal(signum)
                tally.mark("signal")
                code = await in_thread(victim.proc.wait, 15)
                exit_seconds = trio.current_time() - signalled
                await trio.sleep(max(0.0, signalled + after - trio.current_time()))
                stop.set()
                await trio.sleep(0.5)
                return Phase(tally.requests, tally.failed, dict(tally.statuses), in_flight, exit_seconds, code,
                             tally.ok_after.get("signal", 0), balancer.retried - refused,
                             dict(balancer.resent - resent), dict(balancer.failures - failures))

            term = await phase(one, signal.SIGTERM)
            balancer.add((await new_replica()).url)
            await trio.sleep(0.5)
            kill = await phase(two, signal.SIGKILL)
            nursery.cancel_scope.cancel()
    return DrainFigures(term, kill, resend_unanswered)


# --- soak ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SoakFigures:
    minutes: float
    requests: int
    by_operation: dict
    five_xx: int
    rss_kib: dict  # process -> (at warm-up, at the end)
    redis_used_memory: tuple[int, int]
    live_peers: tuple[tuple[int, int], tuple[int, int]]  # (live peers, Redis keys) at warm-up and at the end

    def report(self) -> str:
        lines = [f"{self.minutes:g} minutes, {self.requests} requests, {self.five_xx} answered 5xx"]
        lines += [f"  {op}: {_statuses(statuses)}" for op, statuses in sorted(self.by_operation.items())]
        for name, (warm, end) in self.rss_kib.items():
            lines.append(f"RSS {name}: {warm / 1024:.1f} MiB at warm-up, {end / 1024:.1f} MiB at the end "
                         f"({100 * (end - warm) / warm:+.1f}%)")
        lines.append(f"Redis used_memory: {self.redis_used_memory[0] / 2**20:.2f} MiB at warm-up, "
                     f"{self.redis_used_memory[1] / 2**20:.2f} MiB at the end, holding {self.live_peers[0][0]} "
                     f"and {self.live_peers[1][0]} live peers ({self.live_peers[0][1]} and "
                     f"{self.live_peers[1][1]} keys, nonces included)")
        return "\n".join(lines)


def bad_request(key: nacl.signing.SigningKey) -> tuple[str, str, dict]:
    """One of the kinds of bad input a public endpoint gets: (method, path, httpx keyword arguments)."""
    body = sign_registration(key, SOAK_NS, ADDRS, 60)
    return random.choice([
        ("POST", "/peers", {"content": os.urandom(random.randint(1, 300)), "headers": OCTET}),
        ("POST", "/peers", {"content": body[:-1] + bytes([body[-1] ^ 1]), "headers": OCTET}),  # signature broken
        ("POST", "/peers", {"content": sign_registration(key, "no spaces allowed", ADDRS, 60), "headers": OCTET}),
        ("GET", "/peers", {"params": {"namespace": SOAK_NS, "limit": "many"}}),
        ("GET", "/peers", {"params": {"namespace": SOAK_NS, "cookie": uuid.uuid4().hex}}),
        ("DELETE", f"/peers/{peer_of(key)}", {"content": b"not signed"}),
    ])


async def soak(minutes: float = 10.0, clients: int = 8, rate: float = 20, peers: int = 2000, ttl: int = 60,
               progress=None) -> SoakFigures:
    """Mixed load on two replicas (clients alternate between them): register or renew one of `peers` keys,
    discover, look up, delete, and 5% bad input; RSS and Redis memory at warm-up and at the end."""
    server = RedisServer()
    keys = [nacl.signing.SigningKey.generate() for _ in range(peers)]
    by_operation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    weights = {"register": 0.40, "discover": 0.25, "lookup": 0.15, "delete": 0.15, "bad": 0.05}
    # steady once registrations (`ttl`) and nonces (kept 121 s: twice the 60 s timestamp window, plus 1 s) have
    # turned over: the keys' count stops climbing there
    duration = minutes * 60
    warmup = min(duration / 2, max(150.0, 2.0 * ttl))
    with drill_dir() as logs, contextlib.ExitStack() as stack:
        await in_thread(server.start)
        stack.callback(server.stop)
        services = [Replica(replica_env(server.url, "soak"), logs) for _ in range(2)]
        for service in services:
            stack.callback(service.stop)
            await in_thread(service.start)
        raw = redis.Redis(port=server.port)

        def measure() -> tuple[dict, int, int]:
            rss = {f"rendezvous {i + 1}": s.rss_kib() for i, s in enumerate(services)}
            rss["redis-server"] = process_rss_kib(server.proc.pid)
            live = raw.zcard(KeySchema("soak").namespace(SOAK_NS).expiries)
            return rss, raw.info("memory")["used_memory"], (live, raw.dbsize())

        async def client(stop: trio.Event) -> None:
            turn = random.randrange(2)
            async with httpx.AsyncClient(timeout=10.0) as http:
                async def step():
                    nonlocal turn
                    turn += 1
                    base, key = services[turn % 2].url, random.choice(keys)
                    op = random.choices(list(weights), list(weights.values()))[0]
                    if op == "register":
                        method, path, kwargs = "POST", "/peers", {"content": sign_registration(key, SOAK_NS, ADDRS, ttl),
                                                                  "headers": OCTET}
                    elif op == "discover":
                        method, path, kwargs = "GET", "/peers", {"params": {"namespace": SOAK_NS, "limit": "100"}}
                    elif op == "lookup":
                        method, path, kwargs = "GET", f"/peers/{peer_of(key)}", {"params": {"namespace": SOAK_NS}}
                    elif op == "delete":
                        method, path, kwargs = "DELETE", f"/peers/{peer_of(key)}", {
                            "content": sign_unregistration(key, SOAK_NS)}
                    else:
                        method, path, kwargs = bad_request(key)
                    try:
                        status = (await http.request(method, base + path, **kwargs)).status_code
                    except httpx.HTTPError:
                        status = "transport"
                    by_operation[op][status] += 1
                await paced(rate, stop, step)

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(client, stop)
            started = trio.current_time()
            await trio.sleep(warmup)
            rss_warm, memory_warm, live_warm = await in_thread(measure)
            while trio.current_time() < started + duration:
                await trio.sleep(min(30.0, started + duration - trio.current_time()))
                if progress:
                    progress(f"{(trio.current_time() - started) / 60:.1f} min, "
                             f"{sum(sum(c.values()) for c in by_operation.values())} requests")
            rss_end, memory_end, live_end = await in_thread(measure)
            stop.set()
        raw.close()
    counts = {op: dict(c) for op, c in by_operation.items()}
    five_xx = sum(n for c in by_operation.values() for status, n in c.items()
                  if status == "transport" or status >= 500)
    return SoakFigures(minutes, sum(sum(c.values()) for c in by_operation.values()), counts, five_xx,
                       {name: (rss_warm[name], rss_end[name]) for name in rss_warm}, (memory_warm, memory_end),
                       (live_warm, live_end))


def _statuses(statuses: dict) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=lambda item: str(item[0])))


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", choices=["failover", "drain", "soak"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20, help="requests per second per client")
    parser.add_argument("--lag", type=float, default=1.0, help="failover: seconds of replication lag before the crash")
    parser.add_argument("--promote-after", type=float, default=1.0,
                        help="failover: seconds from the crash until the replica is promoted and the endpoint moves")
    parser.add_argument("--workers", type=int, default=20, help="failover: Registrar-driven peers")
    parser.add_argument("--worker-ttl", type=int, default=30,
                        help="failover: the workers' TTL (they look their registration up every quarter of it)")
    parser.add_argument("--no-resend", action="store_true",
                        help="drain: the balancer answers 502 for a request left unanswered instead of resending it")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak: how long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the Registrars' warnings during the outage are expected
    if args.drill == "failover":
        figures = trio.run(lambda: failover(args.clients, args.rate, args.workers, args.worker_ttl, lag=args.lag,
                                            promote_after=args.promote_after))
    elif args.drill == "drain":
        figures = trio.run(lambda: drain(args.clients, args.rate, resend_unanswered=not args.no_resend))
    else:
        figures = trio.run(lambda: soak(args.minutes, args.clients, args.rate, progress=print))
    print(figures.report())


if __name__ == "__main__":
    main()
