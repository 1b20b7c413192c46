"""What a node tells the rendezvous about where it can be reached.

Three sources: its listen addresses (a wildcard listen expanded to the machine's interface addresses),
its relay reservations (`<relay>/p2p-circuit`), and the public address a relay observed for it, with the
ports predicted from the TCP and QUIC listen ports (NATs that preserve ports map the hole-punch dial, which
leaves from the listen port, to that port).
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

from libp2p.abc import IHost

from shared.host import is_relayed

_SIOCGIFADDR = 0x8915


def interface_ipv4s() -> list[str]:
    """The machine's IPv4 interface addresses, loopback last (Linux)."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # an interface without an IPv4 address
            found.append(socket.inet_ntoa(packed[20:24]))
    return sorted(set(found), key=lambda ip: (ipaddress.ip_address(ip).is_loopback, ip))


def listen_addrs(host: IHost) -> list[str]:
    """Listen addresses without the /p2p suffix, wildcards expanded (loopback only if nothing else)."""
    out: list[str] = []
    for addr in host.get_transport_addrs():
        text = str(addr)
        if is_relayed(text):
            continue
        if text.startswith("/ip4/0.0.0.0/"):
            ips = interface_ipv4s()
            non_loopback = [ip for ip in ips if not ipaddress.ip_address(ip).is_loopback]
            out.extend(text.replace("/0.0.0.0/", f"/{ip}/", 1) for ip in (non_loopback or ips))
        elif not text.startswith("/ip6/::/"):
            out.append(text)
    return sorted(out, key=lambda a: "/ws" in a)  # plain TCP first: what other nodes should try first


def observed_public_addrs(host: IHost, also_public: tuple[ipaddress.IPv4Network, ...] = ()) -> list[str]:
    """Public IPs that peers (in practice, the relay) saw us at, with our TCP listen port. `also_public`
    names networks to count as public besides the global ones (the NAT lab's documentation ranges)."""
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return []
    listening = [addr for addr in host.get_transport_addrs() if not is_relayed(addr)]
    tcp_ports = [a.value_for_protocol("tcp") for a in listening if "/tcp/" in str(a) and "/ws" not in str(a)]
    # QUIC's dials leave from its listen port too (shared/host.py), so the same prediction holds for UDP
    quic_ports = [a.value_for_protocol("udp") for a in listening if "/quic" in str(a)]
    out = []
    for observed in manager.addrs(min_observers=1):
        try:
            ip = ipaddress.ip_address(observed.value_for_protocol("ip4"))
        except Exception:
            continue
        if ip.is_global or any(ip in net for net in also_public):
            out.extend(f"/ip4/{ip}/tcp/{port}" for port in tcp_ports)
            out.extend(f"/ip4/{ip}/udp/{port}/quic-v1" for port in quic_ports)
    return list(dict.fromkeys(out))


def own_addrs(host: IHost, circuit_addrs: list[str], announce: tuple[str, ...] = (),
              also_public: tuple[ipaddress.IPv4Network, ...] = ()) -> list[str]:
    ordered = list(announce) + observed_public_addrs(host, also_public) + listen_addrs(host) + circuit_addrs
    return list(dict.fromkeys(ordered))
