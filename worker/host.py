"""The libp2p host both the worker and the relay run, built with safe settings in one place.

py-libp2p 0.8.1's defaults are wrong for us (see the shared notes): it accepts unencrypted connections,
dials every peer it hears of, and waits 250 ms per dial. Here: Noise is the only security protocol,
yamux the only muxer, the connection manager never dials on its own, and TCP and WebSocket listen on
separate ports (js-libp2p's dials are dropped when they share one).
"""
from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from typing import AsyncIterator

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from worker.identity import Identity


@dataclasses.dataclass(frozen=True)
class ListenPlan:
    host: str = "0.0.0.0"
    tcp_port: int | None = 4001
    ws_port: int | None = 4002
    quic_port: int | None = None

    def multiaddrs(self) -> list[multiaddr.Multiaddr]:
        family = "ip6" if ":" in self.host else "ip4"
        addrs = []
        if self.tcp_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/tcp/{self.tcp_port}"))
        if self.ws_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/tcp/{self.ws_port}/ws"))
        if self.quic_port is not None:
            addrs.append(multiaddr.Multiaddr(f"/{family}/{self.host}/udp/{self.quic_port}/quic-v1"))
        return addrs


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(
        min_connections=0,  # never dial peers just because they are in the peerstore (see `running`)
        low_watermark=0,
        # A relayed connection and the direct one that replaces it must coexist until the relayed one
        # is closed; we dial single addresses ourselves, so the per-dial 250 ms head start never applies.
        max_connections_per_peer=2,
    )


def build_host(identity: Identity, plan: ListenPlan, announce: list[multiaddr.Multiaddr] | None = None) -> IHost:
    noise = NoiseTransport(identity.key_pair, noise_privkey=new_x25519_key_pair().private_key)
    return new_host(
        key_pair=identity.key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=plan.multiaddrs() or None,
        enable_websocket=True,  # so a worker without a WebSocket listener can still dial /ws addresses
        enable_quic=plan.quic_port is not None,
        connection_config=connection_config(),
        announce_addrs=announce or None,
    )


@asynccontextmanager
async def running(host: IHost, plan: ListenPlan) -> AsyncIterator[IHost]:
    """Run the host on the plan's addresses, with the library's auto-dialer stopped.

    Zero watermarks are not enough in 0.8.1: the auto-connector aims at the midpoint of the low and high
    watermarks, so it would still dial up to 150 peers from the peerstore; it has to be stopped.
    """
    async with host.run(plan.multiaddrs()):
        await host.get_network().auto_connector.stop()
        yield host


def is_relayed(addr: multiaddr.Multiaddr | str) -> bool:
    return "/p2p-circuit" in str(addr)


def connections_to(host: IHost, peer_id) -> list:
    """The swarm's connections to a peer; py-libp2p keeps a list, or a single connection on some paths."""
    conns = host.get_network().connections.get(peer_id) or []
    return conns if isinstance(conns, list) else [conns]


