"""The worker's configuration: every option a flag and an environment variable (worker --help)."""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Sequence

from shared.host import ListenPlan
from shared.settings import (OBSERVABILITY_OPTIONS, Observability, Option, boolean, comma_list, http_url, multiaddrs,
                             integer, namespace, observability, parse_options, peer_ids, port_or_off, positive_float,
                             positive_int)
from worker.dialable import DialScope, parse_scope
from worker.portmap import parse_mode as port_mapping_mode


def connect_policy(text: str) -> int | None:
    """'all' -> None; a number N -> N peers chosen at random."""
    if text.strip().lower() == "all":
        return None
    return positive_int(text)


DESCRIPTION = ("A libp2p peer that registers at the rendezvous, discovers the peers of its namespace and connects "
               "to them: directly, through a relay, or hole-punched.")
def networks(text: str) -> tuple[ipaddress.IPv4Network, ...]:
    try:
        return tuple(ipaddress.IPv4Network(part) for part in comma_list(text))
    except ValueError as exc:
        raise ValueError(f"not a list of IPv4 networks ({exc})") from None


OPTIONS = [
    Option("--rendezvous-url", "RENDEZVOUS_SERVICE_URL", http_url, "http://127.0.0.1:8080",
           "base URL of the rendezvous HTTP service"),
    Option("--namespace", "NAMESPACE", namespace, "default", "namespace to register in and discover"),
    Option("--relay-namespace", "RELAY_NAMESPACE", namespace, "relays",
           "namespace where relays register themselves; the worker reserves a slot with those it finds"),
    Option("--relay", "LIBP2P_RELAY_BOOTSTRAP", multiaddrs, "",
           "comma-separated multiaddrs (with /p2p/<id>) of circuit relays to reserve a slot with"),
    Option("--identity-key", "IDENTITY_KEY", str, None, "base64 32-byte Ed25519 seed (a secret); wins over the file",
           secret=True),
    Option("--identity-file", "IDENTITY_FILE", str, "~/.local/state/holepunch-services/worker.key",
           "file holding the identity seed; created with a new one when missing"),
    Option("--listen-host", "LISTEN_HOST", str, "0.0.0.0", "address the libp2p transports listen on"),
    Option("--tcp-port", "TCP_PORT", port_or_off, "4001", "libp2p TCP port (0: any free port, off: none)"),
    Option("--ws-port", "WS_PORT", port_or_off, "4002", "libp2p WebSocket port, separate from TCP (off: none)"),
    Option("--quic-port", "QUIC_PORT", port_or_off, "off",
           "libp2p QUIC (UDP) port; hole punches use QUIC when the peer has it too (off on Cloud Run: no UDP)"),
    Option("--announce", "ANNOUNCE_ADDRS", multiaddrs, "",
           "comma-separated extra multiaddrs to register (a known public address)"),
    Option("--public-networks", "PUBLIC_NETWORKS", networks, "",
           "comma-separated IPv4 networks to treat as public when a relay observes us there, besides the "
           "global ones (the NAT lab uses the documentation ranges)"),
    Option("--dial-scope", "DIAL_SCOPE", parse_scope, "public",
           "which addresses from the rendezvous may be dialed: public (and private ones of a peer behind our own "
           "public address), private (any but loopback), or all (loopback too: a stack on one machine)"),
    Option("--relay-peer-ids", "RELAY_PEER_IDS", peer_ids, "",
           "comma-separated peer IDs of the relays trusted when found in RELAY_NAMESPACE ('*': any; empty: none, "
           "only LIBP2P_RELAY_BOOTSTRAP is used)"),
    Option("--http-host", "HTTP_HOST", str, "0.0.0.0", "address of the /status, /metrics and /healthz endpoints"),
    Option("--port", "PORT", port_or_off, "8081", "port of the /status, /metrics and /healthz endpoints"),
    Option("--ttl", "REGISTRATION_TTL", positive_int, "120", "registration TTL in seconds; refreshed at half of it"),
    Option("--discover-interval", "DISCOVER_INTERVAL", positive_float, "5",
           "seconds between discovery rounds (also the echo and liveness check of connected peers)"),
    Option("--connect", "CONNECT_POLICY", connect_policy, "all", "which discovered peers to connect to: all, or N at random"),
    Option("--direct-dial-timeout", "DIRECT_DIAL_TIMEOUT", positive_float, "2",
           "seconds allowed for the first, direct dial before going through a relay"),
    Option("--relay-dial-timeout", "RELAY_DIAL_TIMEOUT", positive_float, "5", "seconds allowed for a dial through a relay"),
    Option("--holepunch-timeout", "HOLEPUNCH_TIMEOUT", positive_float, "10",
           "seconds allowed for a DCUtR upgrade of a relayed connection (the library makes up to 3 attempts)"),
    Option("--holepunch", "HOLEPUNCH", boolean, "true", "upgrade relayed connections to direct ones with DCUtR"),
    Option("--port-mapping", "PORT_MAPPING", port_mapping_mode, "auto",
           "ask the gateway to forward our TCP and QUIC ports and register the mapped address: auto (NAT-PMP, "
           "then UPnP; logs once when neither answers), natpmp (PCP, or NAT-PMP where the gateway has only "
           "that), upnp or off"),
    Option("--port-mapping-lease", "PORT_MAPPING_LEASE", integer(10, 604800), "7200",
           "seconds of lease asked for each port mapping (RFC 6886 recommends 7200); renewed at half"),
    Option("--chat-greeting", "CHAT_GREETING", str, "",
           "when set, open our chat protocol to every peer we connect to and say this first (browser demo)"),
    *OBSERVABILITY_OPTIONS,
]


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    rendezvous_url: str
    namespace: str
    relay_namespace: str
    relay: tuple[str, ...]
    identity_key: str | None
    identity_file: str | None
    listen: ListenPlan
    announce: tuple[str, ...]
    public_networks: tuple[ipaddress.IPv4Network, ...]
    dial_scope: DialScope
    relay_peer_ids: tuple[str, ...] | None  # None: any
    http_host: str
    port: int | None
    ttl: int
    discover_interval: float
    connect: int | None
    direct_dial_timeout: float
    relay_dial_timeout: float
    holepunch_timeout: float
    holepunch: bool
    port_mapping: str  # auto | upnp | natpmp | off
    port_mapping_lease: int
    chat_greeting: str
    observability: Observability

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> "WorkerSettings":
        values = parse_options("worker", DESCRIPTION, OPTIONS, argv, environ)
        listen = ListenPlan(values.pop("listen_host"), values.pop("tcp_port"), values.pop("ws_port"),
                            values.pop("quic_port"))
        return cls(listen=listen, observability=observability(values), **values)
