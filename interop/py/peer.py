"""Our interop peer (issue 15): a listener or a dialer built from this repo's own pieces, so the interop
cells test what the worker runs: shared.host.build_host (Noise only, yamux), py-libp2p's circuit relay v2
client (CircuitV2Transport, as worker/node.py sets it up) and worker.holepunch.HolePuncher for DCUtR.
MODE=relay runs this repo's relay (relay.node.Relay), the same code as the `relay` console script.

Configured by environment variables only and printing one JSON object per line on stdout, as the interop
contract (README, Interop) says; logs go to stderr.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import multiaddr
import trio
from libp2p.abc import INetConn, INetwork
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import PING_LENGTH
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.protocol_muxer.multiselect_client import MultiselectClient
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.relay.circuit_v2 import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.tools.anyio_service import background_trio_service

from shared.host import ConnectionWatch, ListenPlan, build_host, connections_to, install_library_patches, is_relayed, running
from shared.identity import Identity
from worker.holepunch import HolePuncher

log = logging.getLogger("interop.py")
HOLEPUNCH_DIAL_TIMEOUT = 3  # seconds, as the worker sets it (worker/node.py)


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Config:
    def __init__(self, environ: dict[str, str]):
        self.mode = environ.get("MODE", "")
        self.transport = environ.get("TRANSPORT", "tcp")
        if self.mode not in ("listener", "dialer") or self.transport not in ("tcp", "quic"):
            raise SystemExit(f"MODE must be listener or dialer (relay runs ours), TRANSPORT tcp or quic: "
                             f"{self.mode!r}, {self.transport!r}")
        seed = environ.get("SEED")
        self.identity = Identity.from_seed(bytes.fromhex(seed) if seed else os.urandom(32))
        ip, port = environ.get("LISTEN_IP", "0.0.0.0"), int(environ.get("LISTEN_PORT", "0"))
        self.plan = (ListenPlan(ip, tcp_port=port, ws_port=None) if self.transport == "tcp"
                     else ListenPlan(ip, tcp_port=None, ws_port=None, quic_port=port))
        self.relay_addr = multiaddr.Multiaddr(environ["RELAY_ADDR"])
        self.relay_id = ID.from_base58(self.relay_addr.get_peer_id())
        self.remote = environ.get("REMOTE_PEER")
        self.timeout = float(environ.get("TIMEOUT_S", "30"))


class ListenerWatch(ConnectionWatch):
    """The listener's side of DCUtR: prints every direct connection a peer other than the relay opens, and
    starts the hole punch the moment a relayed connection comes in. The DCUtR spec has the peer that
    accepted the relayed connection initiate, and go's and rust's dialers wait for it to; the puncher's own
    loop would only notice the connection at its next 2 s tick."""

    def __init__(self, host, relay_id: ID, puncher: HolePuncher | None = None):
        super().__init__(host)
        self.relay_id, self.puncher = relay_id, puncher
        self.nursery: trio.Nursery | None = None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        await super().connected(network, conn)
        peer = conn.muxed_conn.peer_id
        addrs = conn.get_transport_addresses()
        if peer == self.relay_id or not addrs or self.puncher is None:
            return
        if not any(is_relayed(a) for a in addrs):
            emit(event="direct", peer=str(peer), remote_addr=str(addrs[0]))
        elif self.nursery is not None:
            self.nursery.start_soon(self._punch, peer)

    async def _punch(self, peer: ID) -> None:
        with trio.move_on_after(HOLEPUNCH_DIAL_TIMEOUT + 2):
            await self.puncher.initiate_hole_punch(peer)


def direct_conn(host, peer: ID):
    for conn in connections_to(host, peer):
        if getattr(conn, "is_closed", False):
            continue
        addrs = conn.get_transport_addresses()
        if addrs and not any(is_relayed(a) for a in addrs):
            return conn
    return None


async def ping_over(conn) -> float:
    """One /ipfs/ping/1.0.0 round trip on a stream of this very connection -> RTT in ms (host.new_stream
    could pick the relayed connection)."""
    stream = await conn.new_stream()
    try:
        await MultiselectClient().select_one_of([PING_PROTOCOL], MultiselectCommunicator(stream))
        payload = os.urandom(PING_LENGTH)
        began = time.monotonic()
        await stream.write(payload)
        echo = b""
        while len(echo) < PING_LENGTH:
            echo += await stream.read(PING_LENGTH - len(echo))
        rtt = time.monotonic() - began
    finally:
        await stream.close()
    if echo != payload:
        raise ValueError("the ping answer differs from what was sent")
    return round(rtt * 1000, 3)


async def reach_relay(host, config: Config) -> None:
    while True:
        try:
            with trio.fail_after(5):
                await host.connect(PeerInfo(config.relay_id, [config.relay_addr]))
            return
        except Exception as exc:  # the relay may still be starting: try again until the deadline
            log.info("relay dial failed: %r", exc)
            await trio.sleep(0.2)


async def run(config: Config) -> int:
    host = build_host(config.identity, config.plan)
    circuit = CircuitV2Protocol(host, allow_hop=False)
    relay_transport = CircuitV2Transport(host, circuit, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
    puncher = HolePuncher(host, dial_timeout=HOLEPUNCH_DIAL_TIMEOUT)
    watch = ListenerWatch(host, config.relay_id, puncher if config.mode == "listener" else None)
    async with (running(host, config.plan), background_trio_service(circuit), background_trio_service(puncher),
                trio.open_nursery() as nursery):
        emit(event="listening", peer_id=str(config.identity.peer_id),
             addrs=[str(a) for a in host.get_addrs() if not is_relayed(a)])
        if config.mode == "listener":
            watch.nursery = nursery
            with trio.fail_after(config.timeout):
                await reach_relay(host, config)
                stream = await host.new_stream(config.relay_id, [HOP_PROTOCOL])
                reserved = await relay_transport.reserve(stream, config.relay_id, nursery)
                await stream.close()
            if not reserved:
                raise SystemExit("the relay refused the reservation")
            emit(event="reserved")
            # until SIGTERM (the puncher answers, and drives, DCUtR meanwhile); then leave through the async
            # withs, which close every connection: a QUIC peer that just vanishes holds its reservation at
            # our relay until py-libp2p's 600 s idle timeout, and 8 such filled router A's per-IP quota
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
            return 0
        code = await dial(host, relay_transport, puncher, watch, config)
        nursery.cancel_scope.cancel()
    return code


async def dial(host, relay_transport, puncher: HolePuncher, watch: ConnectionWatch, config: Config) -> int:
    remote = ID.from_base58(config.remote)
    path = "none"
    with trio.move_on_after(config.timeout):
        await reach_relay(host, config)
        target = multiaddr.Multiaddr(f"{config.relay_addr}/p2p-circuit/p2p/{remote}")
        began = time.monotonic()
        while True:
            try:
                with trio.fail_after(10):
                    await relay_transport.dial(target)
                break
            except Exception as exc:
                log.info("relayed dial failed: %r", exc)
                await trio.sleep(0.2)
        relayed_at = time.monotonic()
        path = "relayed"
        emit(event="relayed", ms=round((relayed_at - began) * 1000, 3))
        # start the exchange at once, as worker/connector.py does, rather than at the puncher's next tick
        while not await watch.wait_until(lambda: direct_conn(host, remote) is not None, 0.05):
            if not puncher.manager.is_running:
                break
            with trio.move_on_after(HOLEPUNCH_DIAL_TIMEOUT + 2):
                await puncher.initiate_hole_punch(remote)
            await watch.wait_until(lambda: direct_conn(host, remote) is not None, 1.0)
        conn = direct_conn(host, remote)
        to_direct = round((time.monotonic() - relayed_at) * 1000, 3)
        rtt = await ping_over(conn)
        emit(event="result", path="direct", time_to_direct_ms=to_direct, rtt_ms=rtt,
             remote_addr=str(conn.get_transport_addresses()[0]))
        return 0
    why = "no relayed connection" if path == "none" else "no direct connection before TIMEOUT_S (DCUtR did not succeed)"
    emit(event="result", path=path, error=why)
    return 1


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    install_library_patches()
    config = Config(dict(os.environ))
    try:
        code = trio.run(run, config)
    except trio.TooSlowError:
        log.error("no relay reservation before TIMEOUT_S")
        code = 1
    sys.stdout.flush()
    os._exit(code)  # py-libp2p leaves non-daemon threads behind; do not wait for them


if __name__ == "__main__":
    main()
