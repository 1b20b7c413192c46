"""DCUtR, tuned so a relayed connection turns direct in well under a second.

py-libp2p 0.8.1's DCUtRProtocol does the exchange itself in ~0.25 s, but by default it is reached only
from a loop that looks at relayed connections every 2 s, and it first spends up to its dial timeout on a
"unilateral" direct dial to whatever addresses the peerstore holds (usually the peer's private LAN
addresses). Our connector has already tried the direct dial before going through the relay, so here the
unilateral step is skipped and the connector starts the exchange the moment the relayed connection exists.
The library's choice of TCP listener to punch from is mended by shared.host.install_library_patches.
"""
from __future__ import annotations

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from shared.host import connections_to, is_relayed


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
