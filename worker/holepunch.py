"""DCUtR, tuned so a relayed connection turns direct in well under a second, over QUIC when both peers have it.

py-libp2p 0.8.1's DCUtRProtocol does the exchange itself in ~0.25 s, but by default it is reached only
from a loop that looks at relayed connections every 2 s, and it first spends up to its dial timeout on a
"unilateral" direct dial to whatever addresses the peerstore holds (usually the peer's private LAN
addresses). Our connector has already tried the direct dial before going through the relay, so here the
unilateral step is skipped and the connector starts the exchange the moment the relayed connection exists.
The library's choice of TCP listener to punch from is mended by shared.host.install_library_patches.

QUIC. The library punches TCP only: it sends only TCP addresses in CONNECT (predicted from the TCP listen
port, or LAN listen addresses when it has none), dials QUIC "as responder", which its swarm refuses, and
sprays from a new socket whose NAT mapping nobody dials. Here, as the DCUtR spec and go-libp2p do:
- CONNECT carries our QUIC addresses too: the observed public IPs with the QUIC listen port (which port
  preserving NATs keep), and any QUIC address a peer saw us at;
- when both CONNECT messages hold QUIC addresses (so both peers decide alike), the punch is QUIC: the
  peer that received SYNC (the spec's A) dials QUIC at once, as the QUIC client; the one that sent SYNC
  (B) waits half the relay RTT, then sends random UDP datagrams every 10-200 ms to the peer's QUIC
  addresses, from its QUIC listen socket, so that its NAT lets the dial in; the listener accepts it;
- otherwise TCP, as the library does.
Both ends use the listen port: the dial leaves from it by shared.host's patch, the spray from the listener's
own socket. Any other port has a NAT mapping the peer never aimed at, and a port-restricted NAT drops it.
"""
from __future__ import annotations

import logging
import os
import random
import socket

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import MAX_OBSERVED_ADDRS, DCUtRProtocol

from shared.host import ConnectionWatch, connections_to, is_relayed, transport_of

# One punch over QUIC: the dialer's handshake resends its Initial on its own timer (~0.3 s, doubling), so
# the window spans a few of those; the spray stops as soon as a direct connection exists.
QUIC_PUNCH_WINDOW = 5.0
SPRAY_INTERVAL = (0.01, 0.2)  # seconds between random datagrams, as the spec says
SPRAY_BYTES = 64
AUTO_DRIVE_TICK_S = 2.0  # as the library's own loop

log = logging.getLogger("worker.holepunch")


class HolePuncher(DCUtRProtocol):
    def __init__(self, host: IHost, *args, **kwargs):
        super().__init__(host, *args, **kwargs)
        self._watch = ConnectionWatch(host)

    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        return False  # the connector dialed the peer's direct addresses already

    async def _auto_drive_loop(self) -> None:
        # The library's loop starts DCUtR on every relayed connection it sees, every 2 s. Our connector
        # starts it the moment its relayed connection exists, so the peer's loop, ticking at that moment,
        # made a second session whose dials collided with the first's on the same ports: the first round
        # failed and the punch came 10 s later (1 run in 6 in the NAT lab). Here a relayed connection is
        # driven only once it has been seen on two ticks (2-4 s old, no direct connection): a peer that
        # leaves the initiative to us (go and rust dialers do) is still driven, two seconds later.
        seen: set[ID] = set()
        while True:
            await trio.sleep(AUTO_DRIVE_TICK_S)
            relayed_only = {peer for peer in list(self.host.get_network().connections)
                            if connection_kinds(self.host, peer) == {"relayed"}}
            for peer in relayed_only & seen:
                if peer not in self._in_progress:
                    try:
                        await self.initiate_hole_punch(peer)
                    except Exception as exc:  # one peer's failure must not end the loop
                        log.debug("driving a hole punch failed", extra={"peer": str(peer), "error": repr(exc)})
            seen = relayed_only

    async def _get_observed_addrs(self) -> list[bytes]:
        quic = [a.to_bytes() for a in self._quic_addrs_to_advertise()]
        rest = [a for a in await super()._get_observed_addrs() if a not in quic]
        return (quic + rest)[:MAX_OBSERVED_ADDRS]

    def _quic_addrs_to_advertise(self) -> list[multiaddr.Multiaddr]:
        listen = _quic_listen_socket(self.host, socket.AF_INET)
        manager = getattr(self.host, "_observed_addr_manager", None)
        if listen is None or manager is None:
            return []
        port = listen.getsockname()[1]
        observed = [a for a in manager.addrs(min_observers=1) if not is_relayed(a)]
        seen_udp = [(ip, udp) for a in observed if (ip := _value(a, "ip4")) and (udp := _value(a, "udp"))]
        public_ips = list(dict.fromkeys(ip for a in observed if (ip := _value(a, "ip4"))))
        # where a peer saw our QUIC socket (our dials leave from the listen port), then the prediction
        ordered = [*(f"/ip4/{ip}/udp/{udp}/quic-v1" for ip, udp in seen_udp),
                   *(f"/ip4/{ip}/udp/{port}/quic-v1" for ip in public_ips)]
        return [multiaddr.Multiaddr(a) for a in dict.fromkeys(ordered)]

    async def _perform_hole_punch(self, peer_id: ID, addrs: list[multiaddr.Multiaddr],
                                  as_responder: bool = False) -> bool:
        """`as_responder`: we sent SYNC (the spec's B). QUIC when we listen on it and the peer sent QUIC
        addresses (it does when it listens on QUIC), else the library's TCP punch without QUIC addresses."""
        quic = list(dict.fromkeys(a for a in addrs if _is_quic(a) and not is_relayed(a)))
        listen = _quic_listen_socket(self.host, socket.AF_INET)
        if not quic or listen is None:
            return await super()._perform_hole_punch(peer_id, [a for a in addrs if not _is_quic(a)], as_responder)
        direct = lambda: "direct" in connection_kinds(self.host, peer_id)  # noqa: E731
        async with trio.open_nursery() as nursery:
            for addr in quic:
                if as_responder:
                    nursery.start_soon(self._spray, listen, addr)
                else:
                    nursery.start_soon(self._dial_until_direct, peer_id, addr, direct)
            await self._watch.wait_until(direct, QUIC_PUNCH_WINDOW)
            nursery.cancel_scope.cancel()
        if not direct():
            return False
        self._direct_connections.add(peer_id)
        self._schedule_relay_close(peer_id)
        return True

    async def _dial_until_direct(self, peer_id: ID, addr: multiaddr.Multiaddr, direct) -> None:
        while not direct():
            await self._dial_peer(peer_id, addr)  # bounded by dial_timeout; logs and swallows its failure
            await trio.sleep(SPRAY_INTERVAL[1])

    @staticmethod
    async def _spray(sock, addr: multiaddr.Multiaddr) -> None:
        """Random datagrams from our QUIC listen socket to one of the peer's QUIC addresses, until cancelled.
        They open our NAT to the peer's dial; the peer's QUIC stack discards them."""
        target = (_value(addr, "ip4"), int(_value(addr, "udp")))
        while True:
            try:
                await sock.sendto(os.urandom(SPRAY_BYTES), target)
            except OSError:
                pass  # an unreachable network now may be reachable at the next packet
            await trio.sleep(random.uniform(*SPRAY_INTERVAL))


def _value(addr: multiaddr.Multiaddr, protocol: str) -> str | None:
    try:
        return addr.value_for_protocol(protocol)
    except Exception:
        return None


def _is_quic(addr: multiaddr.Multiaddr) -> bool:
    return "/quic" in str(addr) and _value(addr, "ip4") is not None and _value(addr, "udp") is not None


def _quic_listen_socket(host: IHost, family: int):
    """The UDP socket of our QUIC listener, or None when we do not listen on QUIC."""
    for transport in host.get_network().transport_manager.get_transports():
        for listener in getattr(transport, "_listeners", ()):
            sock = getattr(listener, "_socket", None)
            if "quic" in type(listener).__name__.lower() and listener.is_listening() and sock is not None \
                    and sock.family == family:
                return sock
    return None


def listens_on_quic(host: IHost) -> bool:
    return _quic_listen_socket(host, socket.AF_INET) is not None


def _kind(addrs) -> str:
    return "relayed" if addrs and all(is_relayed(a) for a in addrs) else "direct"


def connection_kinds(host: IHost, peer_id: ID) -> set[str]:
    """{'direct', 'relayed'}: the kinds of live connection we hold to `peer_id`."""
    kinds = set()
    for conn in connections_to(host, peer_id):
        if getattr(conn, "is_closed", False):
            continue
        try:
            addrs = conn.get_transport_addresses()
        except Exception:
            continue
        if addrs:
            kinds.add(_kind(addrs))
    return kinds


def stream_kind(host: IHost, stream) -> tuple[str, str]:
    """(direct | relayed, quic | ws | tcp | relayed): the kind of connection an open stream runs over, and
    its transport."""
    for conn in connections_to(host, stream.muxed_conn.peer_id):
        if getattr(conn, "muxed_conn", None) is stream.muxed_conn:
            addrs = conn.get_transport_addresses()
            kind = _kind(addrs)
            return kind, (transport_of(str(addrs[0])) if kind == "direct" and addrs else kind)
    return "unknown", "unknown"
