"""A small internet in network namespaces, for the NAT tests and benchmarks: every kind of NAT a user has,
with a delay on every router's WAN link.

    public segment 198.51.100.0/24 (namespace `pub`: the rendezvous and the relay at .1)
       |                       |                       |
    router A (.11)          router B (.12)          router P (.13)      each: NAT as set (Nat), and the
       |  10.1.1.0/24          |  10.1.2.0/24          |  203.0.113.0/24  delay on its WAN link (both ways)
    host a (.2), a2 (.3)    host b (.2)             host p (.2, public: router P routes, no NAT)

Routers A and B take any `Nat` behaviour and can be switched between cells (`set_nat`), so one lab serves
a whole matrix. Host a2 shares router A with host a: the hairpin cell. Each router's delay is a user-space
daemon (tests/natlab_delay.py) holding the packets its iptables queue to it, since this kernel has no
netem. Needs root, iproute2, iptables, nftables (the sequential NAT) and PyPI's NetfilterQueue.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

PUBLIC_IP = "198.51.100.1"
BIN = pathlib.Path(sys.executable).parent
DELAY_DAEMON = pathlib.Path(__file__).with_name("natlab_delay.py")
DEFAULT_DELAY_MS = 25.0  # one way, per router, as libp2p's hole-punch interop suite sets DELAY_MS
# The documentation ranges (RFC 5737) stand in for the public internet here; `is_global` calls them reserved.
DOCUMENTATION_NETWORKS = "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24"
# The sequential NAT's port range: new mappings count up from here.
SEQUENTIAL_BASE, SEQUENTIAL_SPAN = 20000, 20000


class Nat(enum.Enum):
    """RFC 4787 behaviours: mapping (endpoint-independent, EIM, or endpoint-dependent, EDM) and filtering."""
    FULL_CONE = "full-cone"                    # EIM, endpoint-independent filtering
    ADDRESS_RESTRICTED = "address-restricted"  # EIM, address-dependent filtering
    PORT_RESTRICTED = "port-restricted"        # EIM, address-and-port-dependent filtering
    SYMMETRIC = "symmetric"                    # EDM, random ports
    SEQUENTIAL = "sequential"                  # EDM, ports counting up (carrier NATs)


@dataclasses.dataclass(frozen=True)
class Site:
    router: str  # namespace role of the router
    wan_ip: str
    gateway: str  # the router's LAN address
    prefix: int
    nat: bool  # False: the router routes a public network (a public peer)


SITES = {
    "a": Site("ra", "198.51.100.11", "10.1.1.1", 24, True),
    "b": Site("rb", "198.51.100.12", "10.1.2.1", 24, True),
    "p": Site("rp", "198.51.100.13", "203.0.113.1", 24, False),
}
HOSTS = {"a": ("a", "10.1.1.2"), "a2": ("a", "10.1.1.3"), "b": ("b", "10.1.2.2"), "p": ("p", "203.0.113.2")}
PUBLIC_SITE_NETWORK = "203.0.113.0/24"

# Port mapping: Debian's miniupnpd on a router (`NatLab.start_igd`). It refuses to forward on a reserved
# external address, RFC 5737's included ("Port forwarding is impossible"), so a router running it also holds
# a routable address on its WAN, announced as its external one and routed to it on the public segment. The
# namespaces never reach the machine's own network: here the address stands for nobody real.
IGD_PUBLIC_IPS = {"a": "11.1.1.11", "b": "11.1.1.12"}
IGD_TABLE = "miniupnpd"  # the nft table holding the mappings (forwarding and DNAT rules)

# Every NAT drops unsolicited inbound connections as home routers do (a stock Linux router answers a TCP SYN
# with RST, which kills a simultaneous open; UDP would get ICMP port unreachable).
_DROP_UNSOLICITED = [
    "-A INPUT -i wan -p tcp --syn -j DROP",
    "-A INPUT -i wan -p udp -m conntrack --ctstate NEW -j DROP",
]


def nat_rules(nat: Nat, wan_ip: str, host_ip: str) -> tuple[list[str], str]:
    """(iptables rules, nftables script) that make `nat` on a router whose WAN is `wan_ip`.

    Full-cone and address-restricted filtering forward inbound connections to `host_ip`, the one inside
    host, on the port they arrive at: right because MASQUERADE keeps a free source port, so the mapped port
    is the host's own (with one host behind the router it is always free).
    """
    masquerade = "-t nat -A POSTROUTING -o wan -j MASQUERADE"
    if nat is Nat.FULL_CONE:
        return [masquerade, *(f"-t nat -A PREROUTING -i wan -p {p} -j DNAT --to-destination {host_ip}"
                              for p in ("tcp", "udp")), *_DROP_UNSOLICITED], ""
    if nat is Nat.ADDRESS_RESTRICTED:
        # `recent` remembers every address the inside has sent to; only those may open connections inward
        return [masquerade, "-A FORWARD -i lan -o wan -m recent --name contacted --rdest --set",
                *(f"-t nat -A PREROUTING -i wan -p {p} -m recent --name contacted --rsource --rcheck "
                  f"-j DNAT --to-destination {host_ip}" for p in ("tcp", "udp")), *_DROP_UNSOLICITED], ""
    if nat is Nat.PORT_RESTRICTED:  # conntrack lets in only replies: ESTABLISHED, RELATED
        return [masquerade, *_DROP_UNSOLICITED], ""
    if nat is Nat.SYMMETRIC:
        return [f"{masquerade} --random-fully", *_DROP_UNSOLICITED], ""
    # Sequential: iptables' SNAT to a port range starts each search at a random port (Linux 5.x and up), so
    # the counter comes from nftables' numgen, evaluated once per new connection (the nat hook sees only
    # a connection's first packet): each connection, so each destination, gets the next port.
    nft = ("table ip seqnat {\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n"
           f'    oifname "wan" meta l4proto {{ tcp, udp }} snat to {wan_ip} : numgen inc mod {SEQUENTIAL_SPAN} '
           f"offset {SEQUENTIAL_BASE}\n  }}\n}}\n")
    # ICMP (ping) gets the plain MASQUERADE: the counter above is for TCP and UDP only
    return ["-t nat -A POSTROUTING -o wan -p icmp -j MASQUERADE", *_DROP_UNSOLICITED], nft


def delay_rules(lan_network: str) -> list[str]:
    """Every packet crossing the router between LAN and WAN, either way, goes through the delay daemon
    (queue 0) once, as it arrives: in the raw table, before conntrack and NAT see it. So the NAT sees each
    packet when it leaves for the wire, or when it comes off the wire, as a router at the end of a long
    link does; delaying later (mangle POSTROUTING) would hold a new mapping unconfirmed for the whole delay,
    while the peer's punch is already on its way. The router's own packets (its ping replies) too. Traffic
    within the LAN is not delayed: it is bridged, but with br_netfilter loaded it passes these hooks."""
    return ["-t raw -A PREROUTING -i wan -j NFQUEUE --queue-num 0",
            f"-t raw -A PREROUTING -i lan ! -d {lan_network} -j NFQUEUE --queue-num 0",
            "-t raw -A OUTPUT -o wan -j NFQUEUE --queue-num 0"]


def missing_prerequisite() -> str | None:
    """Why the lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables", "nft", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the README's test command installs it)"
    if importlib.util.find_spec("netfilterqueue") is None:
        return "PyPI's NetfilterQueue is not installed (the test extras have it)"
    probe = f"hpprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        nat = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L"], capture_output=True, text=True)
        if nat.returncode != 0:
            return f"iptables cannot manage NAT here: {nat.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, input=stdin)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class NatLab:
    def __init__(self, nat_a: Nat = Nat.PORT_RESTRICTED, nat_b: Nat = Nat.PORT_RESTRICTED,
                 delay_ms: float = DEFAULT_DELAY_MS):
        self.nat = {"a": nat_a, "b": nat_b}
        self.delay_ms = delay_ms
        self.tag = f"hp{os.getpid() % 10000}{int(time.time() * 1000) % 1000}"
        roles = ["pub", *(s.router for s in SITES.values()), *(f"h{h}" for h in HOSTS)]
        self.ns = {role: f"{self.tag}{role}" for role in roles}
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="hp-natlab-"))
        self.procs: dict[str, tuple[subprocess.Popen, pathlib.Path]] = {}
        self._next_port = 4100
        self.relay_addr = ""  # set by start_services
        self.relay_quic_addr = ""  # the same relay over QUIC, set by start_services

    # --- topology ------------------------------------------------------------------------------------

    def __enter__(self) -> "NatLab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_in(self, role: str, *args: str, stdin: str | None = None) -> str:
        return sh("ip", "netns", "exec", self.ns[role], *args, stdin=stdin)

    def _iptables(self, role: str, rule: str) -> None:
        self.run_in(role, "iptables", *rule.split())

    def _veth(self, left_role: str, left: str, right_role: str, right: str) -> None:
        # created straight inside the namespaces, so the names never meet the machine's own interfaces
        sh("ip", "link", "add", left, "netns", self.ns[left_role], "type", "veth",
           "peer", "name", right, "netns", self.ns[right_role])

    def _build(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
        for role in self.ns:
            self.run_in(role, "ip", "link", "set", "lo", "up")
        self.run_in("pub", "ip", "link", "add", "br0", "type", "bridge")
        self.run_in("pub", "ip", "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        self.run_in("pub", "ip", "link", "set", "br0", "up")
        public_router = SITES["p"].wan_ip
        self.run_in("pub", "ip", "route", "add", PUBLIC_SITE_NETWORK, "via", public_router)
        for side, site in SITES.items():
            router = site.router
            self._veth(router, "wan", "pub", f"{self.tag}{side}")
            self.run_in("pub", "ip", "link", "set", f"{self.tag}{side}", "master", "br0")
            self.run_in("pub", "ip", "link", "set", f"{self.tag}{side}", "up")
            self.run_in(router, "ip", "addr", "add", f"{site.wan_ip}/24", "dev", "wan")
            self.run_in(router, "ip", "link", "set", "wan", "up")
            if side != "p":
                self.run_in(router, "ip", "route", "add", PUBLIC_SITE_NETWORK, "via", public_router)
            # the LAN is a bridge on the router, so a site can hold two hosts (the hairpin cell)
            self.run_in(router, "ip", "link", "add", "lan", "type", "bridge")
            self.run_in(router, "ip", "addr", "add", f"{site.gateway}/{site.prefix}", "dev", "lan")
            self.run_in(router, "ip", "link", "set", "lan", "up")
            self.run_in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            for n, (host, (host_side, ip)) in enumerate((h, v) for h, v in HOSTS.items() if v[0] == side):
                port = f"p{n}"
                self._veth(router, port, f"h{host}", "eth0")
                self.run_in(router, "ip", "link", "set", port, "master", "lan")
                self.run_in(router, "ip", "link", "set", port, "up")
                self.run_in(f"h{host}", "ip", "addr", "add", f"{ip}/{site.prefix}", "dev", "eth0")
                self.run_in(f"h{host}", "ip", "link", "set", "eth0", "up")
                self.run_in(f"h{host}", "ip", "route", "add", "default", "via", site.gateway)
            if self.delay_ms > 0:
                self._start_delay(side)
            if site.nat:
                self.set_nat(side, self.nat[side])

    def _start_delay(self, side: str) -> None:
        router = SITES[side].router
        name = f"delay-{side}"
        self.start(name, router, [sys.executable, str(DELAY_DAEMON), "--delay-ms", str(self.delay_ms)], {})
        deadline = time.monotonic() + 10
        while "ready" not in self.log_text(name):  # queued packets without a reader would be dropped
            if time.monotonic() > deadline or self.procs[name][0].poll() is not None:
                raise RuntimeError(f"the delay daemon on router {side} did not start: {self.log_text(name)}")
            time.sleep(0.05)
        site = SITES[side]
        for rule in delay_rules(f"{site.gateway}/{site.prefix}"):
            self._iptables(router, rule)

    def set_nat(self, side: str, nat: Nat) -> None:
        """Give router `side` (a or b) the behaviour `nat`, replacing the one it had (the delay stays).
        Connections the old rules mapped keep their conntrack entries: start new ones on new ports."""
        router, site = SITES[side].router, SITES[side]
        self._iptables(router, "-t nat -F")
        self._iptables(router, "-F")
        if "seqnat" in self.run_in(router, "nft", "list", "tables"):
            self.run_in(router, "nft", "delete", "table", "ip", "seqnat")
        # forget whom the last cell's hosts talked to (the list is the router namespace's own)
        self.run_in(router, "sh", "-c", "f=/proc/net/xt_recent/contacted; [ ! -e $f ] || echo / > $f")
        rules, nft = nat_rules(nat, site.wan_ip, HOSTS[side][1])
        for rule in rules:
            self._iptables(router, rule)
        if nft:
            self.run_in(router, "nft", "-f", "-", stdin=nft)
        self.nat[side] = nat

    def start_igd(self, side: str) -> str:
        """Debian's miniupnpd on router `side` (a or b): UPnP IGD, PCP and NAT-PMP for its LAN, in secure mode (a
        host maps ports to itself only), external address IGD_PUBLIC_IPS[side]. Returns its process name;
        `igd_rules` shows the mappings it holds. Its rules sit in an nft table of their own, beside the NAT's
        iptables rules, which `set_nat` may replace meanwhile."""
        router, site, public_ip = SITES[side].router, SITES[side], IGD_PUBLIC_IPS[side]
        self.run_in(router, "ip", "addr", "add", f"{public_ip}/32", "dev", "wan")
        self.run_in("pub", "ip", "route", "add", f"{public_ip}/32", "dev", "br0")
        for other in SITES.values():
            if other.router != router:
                self.run_in(other.router, "ip", "route", "add", f"{public_ip}/32", "dev", "wan")
        # the chains miniupnpd fills; Debian's nft_init.sh would also set the forward policy to drop
        chains = ("forward_miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd")
        self.run_in(router, "nft", "-f", "-", stdin=(
            f"table inet {IGD_TABLE} {{\n" + "".join(f"  chain {c} {{ }}\n" for c in chains)
            + "  chain forward { type filter hook forward priority filter; policy accept; "
            "jump forward_miniupnpd; }\n"
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; "
            "jump prerouting_miniupnpd; }\n"
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; "
            "jump postrouting_miniupnpd; }\n}\n"))
        name = f"igd-{side}"
        conf = self.dir / f"{name}.conf"
        conf.write_text("\n".join([
            "ext_ifname=wan", f"ext_ip={public_ip}", "listening_ip=lan", "port=5000", "enable_natpmp=yes",
            "enable_upnp=yes", "secure_mode=yes", "system_uptime=yes", f"uuid={uuid.uuid4()}",
            f"upnp_table_name={IGD_TABLE}", f"upnp_nat_table_name={IGD_TABLE}",
            "upnp_forward_chain=forward_miniupnpd", "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd", f"lease_file={self.dir / f'{name}.leases'}",
            f"allow 1024-65535 {site.gateway}/{site.prefix} 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535",
            # PCP leases are at least 120 s by default (RFC 6887's advice); the tests renew 10 s leases
            "min_lifetime=10", ""]))
        self.start(name, router, ["miniupnpd", "-d", "-f", str(conf), "-P", str(self.dir / f"{name}.pid")], {})
        deadline = time.monotonic() + 10
        while "Listening for NAT-PMP" not in self.log_text(name):
            if time.monotonic() > deadline or self.procs[name][0].poll() is not None:
                raise RuntimeError(f"miniupnpd on router {side} did not start: {self.log_text(name)}")
            time.sleep(0.05)
        return name

    def igd_rules(self, side: str) -> str:
        """The nft rules miniupnpd has made on router `side`: one DNAT and one accept per mapping."""
        return self.run_in(SITES[side].router, "nft", "list", "table", "inet", IGD_TABLE)

    def igd_leases(self, side: str) -> list[str]:
        """miniupnpd's lease file on router `side`: PROTO:EXT_PORT:HOST:PORT:EXPIRES:LABEL, one per mapping."""
        path = self.dir / f"igd-{side}.leases"
        return path.read_text().splitlines() if path.exists() else []

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for name in self.ns.values():
            leftover = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in leftover:  # anything a crashed run left behind must not outlive its namespace
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)  # the logs and keys: read them before the lab closes

    def ping(self, host: str, target_ip: str, count: int = 5) -> float:
        """The average round trip in ms of `count` pings from `host` to `target_ip`."""
        out = self.run_in(f"h{host}", "ping", "-c", str(count), "-i", "0.2", "-W", "2", target_ip)
        summary = next(line for line in out.splitlines() if "min/avg/max" in line)
        return float(summary.split("=")[1].split("/")[1])

    # --- processes -----------------------------------------------------------------------------------

    def start(self, name: str, role: str, command: list[str], env: dict[str, str]) -> None:
        log = self.dir / f"{name}.log"
        full_env = {**os.environ, **env}
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[role], *command], env=full_env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.procs[name] = (proc, log)

    def stop(self, name: str) -> None:
        proc, _ = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def events(self, name: str) -> list[dict]:
        """The JSON log lines a process has written so far."""
        out = []
        for line in self.procs[name][1].read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def log_text(self, name: str) -> str:
        return self.procs[name][1].read_text() if name in self.procs else ""

    def wait_for(self, name: str, predicate, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events(name):
                if predicate(event):
                    return event
            proc = self.procs[name][0]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_text(name)[-3000:]}")
            time.sleep(0.1)
        return None

    # --- the stack -----------------------------------------------------------------------------------

    def start_services(self, relay_key: str, relay_peer_id: str) -> str:
        """The rendezvous and the relay on the public segment; returns the relay's multiaddr."""
        self.start("rendezvous", "pub", [str(BIN / "rendezvous")], {"HOST": PUBLIC_IP, "PORT": "8080"})
        self.start("relay", "pub", [str(BIN / "relay")],
                   {"IDENTITY_KEY": relay_key, "LISTEN_HOST": PUBLIC_IP, "TCP_PORT": "4001", "WS_PORT": "4002",
                    "QUIC_PORT": "4003", "PORT": "8082"})
        self.relay_addr = f"/ip4/{PUBLIC_IP}/tcp/4001/p2p/{relay_peer_id}"
        self.relay_quic_addr = f"/ip4/{PUBLIC_IP}/udp/4003/quic-v1/p2p/{relay_peer_id}"
        return self.relay_addr

    def start_worker(self, host: str, relay_addr: str, name: str | None = None, tcp_port: int | None = None,
                     env: dict[str, str] | None = None, quic: bool = False, tcp: bool = True) -> str:
        """A worker on `host` (a, a2, b or p); returns its process name. Each gets new ports unless told,
        so no NAT state of an earlier worker applies to it. `quic`: listen on QUIC too; `tcp=False`: no TCP
        or WebSocket at all (then it reaches the relay over QUIC)."""
        name = name or f"worker-{host}"
        if tcp_port is None:
            tcp_port, self._next_port = self._next_port, self._next_port + 1
        ports = {"TCP_PORT": str(tcp_port) if tcp else "off", "WS_PORT": str(tcp_port + 1000) if tcp else "off",
                 "QUIC_PORT": str(tcp_port + 3000) if quic else "off"}
        if not tcp:
            relay_addr = self.relay_quic_addr
        self.start(name, f"h{host}", [str(BIN / "worker")], {
            "IDENTITY_FILE": str(self.dir / f"{name}.key"), "LISTEN_HOST": HOSTS[host][1], **ports,
            "PORT": str(tcp_port + 2000),
            "RENDEZVOUS_SERVICE_URL": f"http://{PUBLIC_IP}:8080", "LIBP2P_RELAY_BOOTSTRAP": relay_addr,
            "DISCOVER_INTERVAL": "1", "LOG_LEVEL": "DEBUG", "PUBLIC_NETWORKS": DOCUMENTATION_NETWORKS, **(env or {})})
        return name

    def start_stack(self, relay_key: str, relay_peer_id: str, worker_env: dict[str, str] | None = None) -> None:
        relay_addr = self.start_services(relay_key, relay_peer_id)
        for side in ("a", "b"):
            self.start_worker(side, relay_addr, env=worker_env)


# --- the matrix ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
    """Two peers on `hosts`, routers A and B set to `nats`; `expect`: the paths theory allows (DCUtR
    dials the observed addresses only, with no port prediction)."""
    name: str
    nats: tuple[Nat, Nat]
    hosts: tuple[str, str]
    expect: frozenset[str]


_PR = Nat.PORT_RESTRICTED
DIRECT, PUNCHED, RELAYED = frozenset({"direct"}), frozenset({"hole-punched"}), frozenset({"relayed"})
CELLS = [
    # a full-cone NAT lets in the first dial to the observed address, before any relay
    Cell("full-cone", (Nat.FULL_CONE, Nat.FULL_CONE), ("a", "b"), DIRECT),
    Cell("address-restricted", (Nat.ADDRESS_RESTRICTED, Nat.ADDRESS_RESTRICTED), ("a", "b"), PUNCHED),
    Cell("port-restricted", (_PR, _PR), ("a", "b"), PUNCHED),
    # the symmetric side's punch reaches the full-cone side; the full-cone side's dial, if it goes first,
    # is dropped, so the path depends on who dials
    Cell("full-cone/symmetric", (Nat.FULL_CONE, Nat.SYMMETRIC), ("a", "b"), DIRECT | PUNCHED),
    Cell("port-restricted/symmetric", (_PR, Nat.SYMMETRIC), ("a", "b"), RELAYED),
    Cell("symmetric", (Nat.SYMMETRIC, Nat.SYMMETRIC), ("a", "b"), RELAYED),
    Cell("sequential", (Nat.SEQUENTIAL, Nat.SEQUENTIAL), ("a", "b"), RELAYED),
    # the public peer dialing the NATed one meets its NAT: then a hole punch
    Cell("public/port-restricted", (_PR, _PR), ("a", "p"), DIRECT | PUNCHED),
    # one public address for both: the dial policy lets them dial each other's LAN address
    Cell("hairpin", (_PR, _PR), ("a", "a2"), DIRECT),
]


def set_routers(lab: NatLab, cell: Cell) -> None:
    for side, nat in zip("ab", cell.nats):
        lab.set_nat(side, nat)


@dataclasses.dataclass
class Pair:
    """Two workers started for one run of a cell: process names and peer IDs, in the cell's host order."""
    names: tuple[str, str]
    peers: tuple[str, str]


def start_pair(lab: NatLab, cell: Cell, run: str, keys: tuple[str, str] | None = None,
               env: dict[str, str] | None = None, quic: bool = False, tcp: bool = True) -> Pair:
    """Set the routers for `cell` (afresh: no memory of an earlier run's peers) and start its two workers in a
    namespace of their own, so they find only each other. `keys`: IDENTITY_KEYs, to choose who dials (the
    lower peer ID); `quic`, `tcp`: their transports (NatLab.start_worker)."""
    set_routers(lab, cell)
    names = []
    for n, host in enumerate(cell.hosts):
        worker_env = {"NAMESPACE": f"cell-{run}", **(env or {})}
        if keys:
            worker_env["IDENTITY_KEY"] = keys[n]
        names.append(lab.start_worker(host, lab.relay_addr, name=f"{run}-{host}", env=worker_env, quic=quic,
                                      tcp=tcp))
    peers = []
    for name in names:
        started = lab.wait_for(name, lambda e: e.get("message") == "worker started", 30.0)
        if started is None:
            raise RuntimeError(f"{name} did not start:\n{lab.log_text(name)[-3000:]}")
        peers.append(started["peer"])
    return Pair((names[0], names[1]), (peers[0], peers[1]))


def connected_events(lab: NatLab, pair: Pair, timeout: float) -> list[dict | None]:
    """Each worker's first `connected` event to the other (None where it had none within `timeout`)."""
    deadline = time.monotonic() + timeout
    found: list[dict | None] = [None, None]
    while time.monotonic() < deadline and None in found:
        for n, (name, peer) in enumerate(zip(pair.names, reversed(pair.peers))):
            if found[n] is None:
                found[n] = next((e for e in lab.events(name) if e.get("event") == "connected"
                                 and e.get("peer") == peer), None)
        time.sleep(0.1)
    return found


def stop_pair(lab: NatLab, pair: Pair) -> None:
    for name in pair.names:
        lab.stop(name)
