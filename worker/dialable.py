"""Which addresses learned from the rendezvous a worker may dial.

A registration is anyone's to write, so its addresses are untrusted: dialing them blindly turns every worker
into a port scanner of its own network (the cloud metadata server, Redis on a VPC address, services on
loopback). Rules, in order:

- never: link-local (169.254.0.0/16, where cloud metadata servers answer; fe80::/10), unspecified,
  multicast, the metadata servers' other addresses, and names that resolve inside the machine or the
  cloud network (`localhost`, `*.localhost`, `metadata*`, `*.internal`);
- loopback: only with DIAL_SCOPE=all (a stack on one machine, the tests);
- private (RFC 1918, carrier-grade NAT 100.64.0.0/10, IPv6 ULA, and any other non-global range): with
  DIAL_SCOPE=private or all, or when the peer shares our site: it registered a public address that is also
  ours (the same NAT in front of both of us, so its private address is on our LAN);
- public (global, or in PUBLIC_NETWORKS): always.
A DNS name other than the forbidden ones is allowed at scope `public` and up; what it resolves to is the
library's business (py-libp2p resolves at dial time).
"""
from __future__ import annotations

import enum
import ipaddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NEVER_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10",  # link-local: GCP, AWS and Azure metadata at 169.254.169.254
    "0.0.0.0/8", "::/128",  # unspecified: dials a local listener
    "224.0.0.0/4", "ff00::/8", "255.255.255.255/32",  # multicast, broadcast
    "fd00:ec2::254/128",  # AWS's IPv6 metadata address (inside ULA)
))
_NEVER_NAMES = ("localhost", "metadata", "metadata.google.internal", "metadata.goog", "instance-data")
_NEVER_SUFFIXES = (".localhost", ".internal", ".local")
_DNS = ("dns", "dns4", "dns6", "dnsaddr")


class DialScope(enum.Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ALL = "all"


def parse_scope(text: str) -> DialScope:
    try:
        return DialScope(text.strip().lower())
    except ValueError:
        raise ValueError("must be public, private or all") from None


def _host(addr: str) -> tuple[str, str] | None:
    """(protocol, value) of a multiaddr's first component: ('ip4', '1.2.3.4'), ('dns4', 'x.org'), ..."""
    parts = addr.split("/")
    if len(parts) < 3 or parts[0] != "":
        return None
    return parts[1], parts[2]


def _relay_part(addr: str) -> str:
    """The address that is dialed first: for a circuit address, the relay's."""
    return addr.split("/p2p-circuit", 1)[0]


class DialPolicy:
    def __init__(self, scope: DialScope, public_networks: tuple[IPNetwork, ...] = ()):
        self.scope = scope
        self.public_networks = public_networks

    def is_public(self, ip: IPAddress) -> bool:
        return ip.is_global or any(ip in net for net in self.public_networks)

    def public_ips(self, addrs) -> set[IPAddress]:
        out = set()
        for addr in addrs:
            host = _host(_relay_part(addr))
            if host and host[0] in ("ip4", "ip6") and "/p2p-circuit" not in addr:
                try:
                    ip = ipaddress.ip_address(host[1])
                except ValueError:
                    continue
                if self.is_public(ip):
                    out.add(ip)
        return out

    def allows(self, addr: str, same_site: bool = False) -> bool:
        """Whether `addr` (from the rendezvous) may be dialed; `same_site`: the peer shares our public address."""
        host = _host(_relay_part(addr))
        if host is None:
            return False
        protocol, value = host
        if protocol in _DNS:
            name = value.lower().rstrip(".")
            if name in _NEVER_NAMES or name.endswith(_NEVER_SUFFIXES) or name.startswith("metadata."):
                return self.scope is DialScope.ALL and (name == "localhost" or name.endswith(".localhost"))
            return True
        if protocol not in ("ip4", "ip6"):
            return False
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        if any(ip in net for net in _NEVER_NETWORKS):
            return False
        if ip.is_loopback:
            return self.scope is DialScope.ALL
        if self.is_public(ip):
            return True
        return same_site or self.scope is not DialScope.PUBLIC

    def filter_peer(self, addrs, own_public_ips: set[IPAddress]) -> list[str]:
        """A peer's registered addresses that may be dialed, given the public addresses we were seen at."""
        same_site = bool(self.public_ips(addrs) & own_public_ips)
        return [a for a in addrs if self.allows(a, same_site)]
