"""The relay's configuration: every option a flag and an environment variable (relay --help).

Limits default to go-libp2p's relay defaults: reservations last 1 h, 128 at most, 8 per IP address,
16 circuits per reserving peer, each relayed connection cut after 2 min or 128 KiB.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from shared.host import ListenPlan
from shared.settings import (OBSERVABILITY_OPTIONS, ConfigError, Observability, Option, http_url, multiaddrs,
                             namespace, observability, parse_options, port_or_off, positive_int)


@dataclasses.dataclass(frozen=True)
class RelayLimitSettings:
    reservation_ttl: int = 3600
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    max_circuits_per_peer: int = 16
    circuit_duration: int = 120
    circuit_bytes: int = 128 * 1024


def optional_url(text: str) -> str | None:
    return http_url(text) if text.strip() else None


DESCRIPTION = ("A public circuit relay v2 node: peers behind NATs reserve a slot, others reach them through it, "
               "and DCUtR upgrades those connections to direct ones.")
OPTIONS = [
    Option("--identity-key", "IDENTITY_KEY", str, None, "base64 32-byte Ed25519 seed (a secret); wins over the file",
           secret=True),
    Option("--identity-file", "IDENTITY_FILE", str, "~/.local/state/holepunch-services/relay.key",
           "file holding the identity seed, created when missing: keep it so the relay's multiaddr is stable"),
    Option("--listen-host", "LISTEN_HOST", str, "0.0.0.0", "address the libp2p transports listen on"),
    Option("--tcp-port", "TCP_PORT", port_or_off, "4001", "libp2p TCP port"),
    Option("--ws-port", "WS_PORT", port_or_off, "4002", "libp2p WebSocket port (browsers use it), separate from TCP"),
    Option("--quic-port", "QUIC_PORT", port_or_off, "4001", "libp2p QUIC (UDP) port (off: none)"),
    Option("--announce", "ANNOUNCE_ADDRS", multiaddrs, "",
           "comma-separated public multiaddrs to advertise instead of the listen addresses (a VM's static IP)"),
    Option("--rendezvous-url", "RENDEZVOUS_SERVICE_URL", optional_url, "",
           "rendezvous to register this relay at, so workers find it (unset: do not register)"),
    Option("--relay-namespace", "RELAY_NAMESPACE", namespace, "relays", "namespace relays register in"),
    Option("--ttl", "REGISTRATION_TTL", positive_int, "120", "registration TTL in seconds; refreshed at half of it"),
    Option("--http-host", "HTTP_HOST", str, "0.0.0.0", "address of the /healthz, /status and /metrics endpoints"),
    Option("--port", "PORT", port_or_off, "8082", "port of the /healthz, /status and /metrics endpoints"),
    Option("--reservation-ttl", "RELAY_RESERVATION_TTL", positive_int, "3600", "seconds a reservation lasts"),
    Option("--max-reservations", "RELAY_MAX_RESERVATIONS", positive_int, "128", "reservations held at once"),
    Option("--max-reservations-per-ip", "RELAY_MAX_RESERVATIONS_PER_IP", positive_int, "8",
           "reservations held at once by peers connecting from one IP address"),
    Option("--max-circuits-per-peer", "RELAY_MAX_CIRCUITS_PER_PEER", positive_int, "16",
           "relayed connections open at once to one reserving peer"),
    Option("--circuit-duration", "RELAY_CIRCUIT_DURATION", positive_int, "120",
           "seconds after which a relayed connection is cut"),
    Option("--circuit-bytes", "RELAY_CIRCUIT_BYTES", positive_int, str(128 * 1024),
           "bytes a relayed connection may carry before it is cut (py-libp2p counts both directions together)"),
    *OBSERVABILITY_OPTIONS,
]


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    identity_key: str | None
    identity_file: str | None
    listen: ListenPlan
    announce: tuple[str, ...]
    rendezvous_url: str | None
    relay_namespace: str
    ttl: int
    http_host: str
    port: int | None
    limits: RelayLimitSettings
    observability: Observability

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> "RelaySettings":
        values = parse_options("relay", DESCRIPTION, OPTIONS, argv, environ)
        if values["tcp_port"] is None and values["ws_port"] is None and values["quic_port"] is None:
            raise ConfigError("TCP_PORT, WS_PORT and QUIC_PORT are all off: the relay would be unreachable")
        listen = ListenPlan(values.pop("listen_host"), values.pop("tcp_port"), values.pop("ws_port"),
                            values.pop("quic_port"))
        limits = RelayLimitSettings(*(values.pop(name) for name in (
            "reservation_ttl", "max_reservations", "max_reservations_per_ip", "max_circuits_per_peer",
            "circuit_duration", "circuit_bytes")))
        return cls(listen=listen, limits=limits, observability=observability(values), **values)
