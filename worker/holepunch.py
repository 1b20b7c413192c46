"""DCUtR, tuned so a relayed connection turns direct in well under a second.

py-libp2p 0.8.1's DCUtRProtocol does the exchange itself in ~0.25 s, but by default it is reached only
from a loop that looks at relayed connections every 2 s, and it first spends up to its dial timeout on a
"unilateral" direct dial to whatever addresses the peerstore holds (usually the peer's private LAN
addresses). Our connector has already tried the direct dial before going through the relay, so here the
unilateral step is skipped and the connector starts the exchange the moment the relayed connection exists.
"""
from __future__ import annotations

import multiaddr
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2 import dcutr as _dcutr
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from worker.host import connections_to, is_relayed


def _plain_tcp_listen_addrs(host: IHost) -> list[tuple[int, str, int]]:
    # The library's version counts /tcp/P/ws as a TCP listener; with TCP and WebSocket on separate ports
    # it may then bind hole-punch dials to the WebSocket port and predict that port to the peer, which
    # can never work (a raw TCP dial to a WebSocket listener). Only plain TCP listeners qualify.
    return [parsed for addr in host.get_addrs()
            if not is_relayed(addr) and "/ws" not in str(addr) and "/quic" not in str(addr)
            and (parsed := _dcutr._tcp_ip_port(addr if isinstance(addr, multiaddr.Multiaddr)
                                                else multiaddr.Multiaddr(str(addr)))) is not None]


_dcutr._local_tcp_listen_addrs = _plain_tcp_listen_addrs  # pinned libp2p==0.8.1; see the comment above


class HolePuncher(DCUtRProtocol):
    async def _try_unilateral_upgrade(self, peer_id: ID) -> bool:
        return False  # the connector dialed the peer's direct addresses already


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


def stream_kind(host: IHost, stream) -> str:
    """Whether an open stream runs over a direct or a relayed connection."""
    for conn in connections_to(host, stream.muxed_conn.peer_id):
        if getattr(conn, "muxed_conn", None) is stream.muxed_conn:
            return _kind(conn.get_transport_addresses())
    return "unknown"
