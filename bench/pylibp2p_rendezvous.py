"""py-libp2p's own RendezvousService and RendezvousClient, for bench_rendezvous.py's side-by-side figure.

    python bench/pylibp2p_rendezvous.py serve PORT NAMESPACE COUNT
    python bench/pylibp2p_rendezvous.py drive SERVER_MULTIADDR CLIENTS SECONDS NAMESPACE

`serve` runs libp2p.discovery.rendezvous.RendezvousService on a host built like ours (shared/host.py:
Noise only, yamux, no auto-dialing), with NAMESPACE holding COUNT registrations, and prints its multiaddr.
`drive` runs CLIENTS hosts, each with the library's RendezvousClient in a loop (one request in flight per
client, as a wrk connection has), first registering for SECONDS and then discovering a page of 100 of
NAMESPACE for SECONDS. It prints a line when each measured window begins and ends, so the caller can read
the server's CPU time across exactly that window.

Nothing here is tuned: both sides use the library as shipped (a new stream per request).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import multiaddr  # noqa: E402
import trio  # noqa: E402
from libp2p.discovery.rendezvous import RendezvousClient, RendezvousService  # noqa: E402
from libp2p.discovery.rendezvous.service import RegistrationRecord  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402
from libp2p.peer.peerinfo import info_from_p2p_addr  # noqa: E402

from shared.host import ListenPlan, build_host, running  # noqa: E402
from shared.identity import Identity  # noqa: E402

# The same two addresses the HTTP side registers, so a page carries the same information on both sides.
ADDRS = [multiaddr.Multiaddr(a).to_bytes() for a in ("/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1")]
PAGE = 100
WARMUP = 1.0


def say(line: str) -> None:
    print(line, flush=True)


async def serve(port: int, namespace: str, count: int) -> None:
    plan = ListenPlan(host="127.0.0.1", tcp_port=port, ws_port=None)
    host = build_host(Identity.from_seed(os.urandom(32)), plan)
    async with running(host, plan):
        service = RendezvousService(host)
        # When a window ends the clients are cancelled mid-request and the service logs an error for each
        # stream cut short; the clients count any failure inside a window themselves.
        logging.getLogger("libp2p.discovery.rendezvous.service").setLevel(logging.CRITICAL)
        # Filled through the library's own record type (what a REGISTER stores), not over the wire: 1,000
        # registrations would need 1,000 client identities and connections, and only the stored state matters.
        service.registrations[namespace] = {
            peer: RegistrationRecord(peer, list(ADDRS), namespace, 3600)
            for peer in (ID(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32)) for _ in range(count))}
        say(f"/ip4/127.0.0.1/tcp/{port}/p2p/{host.get_id()}")
        await trio.sleep_forever()


async def drive(server: str, clients: int, seconds: float, namespace: str) -> None:
    info = info_from_p2p_addr(multiaddr.Multiaddr(server))
    async with trio.open_nursery() as nursery:
        hosts = []
        for _ in range(clients):
            # A client host must listen somewhere: RendezvousClient.register refuses a host with no address.
            plan = ListenPlan(host="127.0.0.1", tcp_port=0, ws_port=None)
            host = build_host(Identity.from_seed(os.urandom(32)), plan)
            ready = trio.Event()
            nursery.start_soon(_hold, host, plan, ready)
            await ready.wait()
            await host.connect(info)
            hosts.append(host)
        for op in ("register", "discover"):
            say(json.dumps({"op": op, **await _window(hosts, info.peer_id, op, seconds, namespace)}))
        nursery.cancel_scope.cancel()


async def _hold(host, plan: ListenPlan, ready: trio.Event) -> None:
    async with running(host, plan):
        ready.set()
        await trio.sleep_forever()


async def _window(hosts: list, server: ID, op: str, seconds: float, namespace: str) -> dict:
    """Every client loops on `op`; requests that complete within the measured window are counted, the
    warm-up before it is not. The caller samples the server's CPU on the `begin` line and the result line."""
    counts = {"ops": 0, "errors": 0, "peers": 0}
    measuring = False
    began = ended = 0.0

    async def client(host) -> None:
        rendezvous = RendezvousClient(host, server)
        while True:
            try:
                if op == "register":
                    await rendezvous.register("bench-post", 3600)
                else:
                    peers, _ = await rendezvous.discover(namespace, PAGE)
                    if measuring:
                        counts["peers"] += len(peers)
            except Exception:  # counted, not hidden: a non-zero error count invalidates the figure
                if measuring:
                    counts["errors"] += 1
                continue
            if measuring:
                counts["ops"] += 1

    async with trio.open_nursery() as nursery:
        for host in hosts:
            nursery.start_soon(client, host)
        await trio.sleep(WARMUP)
        say(f"begin {op}")
        measuring, began = True, time.monotonic()
        await trio.sleep(seconds)
        measuring, ended = False, time.monotonic()
        nursery.cancel_scope.cancel()
    return {"seconds": ended - began, **counts}


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "serve":
        trio.run(serve, int(args[0]), args[1], int(args[2]))
    elif command == "drive":
        trio.run(drive, args[0], int(args[1]), float(args[2]), args[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
