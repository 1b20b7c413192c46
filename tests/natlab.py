"""A small internet in network namespaces, for hole-punching tests and the hole-punch benchmark.

    public segment 198.51.100.0/24 (namespace `pub`: the rendezvous and the relay at .1)
       |                         |
    router A (.11)            router B (.12)     each: MASQUERADE, and unsolicited inbound SYNs dropped
       |  10.1.1.0/24            |  10.1.2.0/24  (as home routers do; a stock Linux router answers RST)
    host A (10.1.1.2)         host B (10.1.2.2)

`random_fully=True` makes router B's NAT pick a random source port per connection (a symmetric NAT), which
no hole punch gets through. Needs root, iproute2 and iptables.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PUBLIC_IP = "198.51.100.1"
ROUTER_WAN = {"a": "198.51.100.11", "b": "198.51.100.12"}
HOST_IP = {"a": "10.1.1.2", "b": "10.1.2.2"}
LAN_GATEWAY = {"a": "10.1.1.1", "b": "10.1.2.1"}
BIN = pathlib.Path(sys.executable).parent
# The documentation ranges (RFC 5737) stand in for the public internet here; `is_global` calls them reserved.
DOCUMENTATION_NETWORKS = "192.0.2.0/24,198.51.100.0/24,203.0.113.0/24"


def missing_prerequisite() -> str | None:
    """Why the lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the README's test command installs it)"
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


def sh(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")


class NatLab:
    def __init__(self, random_fully: bool = False):
        self.random_fully = random_fully
        self.tag = f"hp{os.getpid() % 10000}{int(time.time() * 1000) % 1000}"
        self.ns = {role: f"{self.tag}{role}" for role in ("pub", "ra", "rb", "ha", "hb")}
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="hp-natlab-"))
        self.procs: dict[str, tuple[subprocess.Popen, pathlib.Path]] = {}

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

    def _in(self, role: str, *args: str) -> None:
        sh("ip", "netns", "exec", self.ns[role], *args)

    def _veth(self, left_role: str, left: str, right_role: str, right: str) -> None:
        # created straight inside the namespaces, so the names never meet the machine's own interfaces
        sh("ip", "link", "add", left, "netns", self.ns[left_role], "type", "veth",
           "peer", "name", right, "netns", self.ns[right_role])

    def _build(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
        for role in self.ns:
            self._in(role, "ip", "link", "set", "lo", "up")
        self._in("pub", "ip", "link", "add", "br0", "type", "bridge")
        self._in("pub", "ip", "addr", "add", f"{PUBLIC_IP}/24", "dev", "br0")
        self._in("pub", "ip", "link", "set", "br0", "up")
        for side in ("a", "b"):
            router, host = f"r{side}", f"h{side}"
            self._veth(router, "wan", "pub", f"{self.tag}{side}")
            self._in("pub", "ip", "link", "set", f"{self.tag}{side}", "master", "br0")
            self._in("pub", "ip", "link", "set", f"{self.tag}{side}", "up")
            self._in(router, "ip", "addr", "add", f"{ROUTER_WAN[side]}/24", "dev", "wan")
            self._in(router, "ip", "link", "set", "wan", "up")
            self._veth(router, "lan", host, "eth0")
            self._in(router, "ip", "addr", "add", f"{LAN_GATEWAY[side]}/24", "dev", "lan")
            self._in(router, "ip", "link", "set", "lan", "up")
            self._in(host, "ip", "addr", "add", f"{HOST_IP[side]}/24", "dev", "eth0")
            self._in(host, "ip", "link", "set", "eth0", "up")
            self._in(host, "ip", "route", "add", "default", "via", LAN_GATEWAY[side])
            self._in(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            masquerade = ["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
            if side == "b" and self.random_fully:
                masquerade.append("--random-fully")
            self._in(router, *masquerade)
            self._in(router, "iptables", "-A", "INPUT", "-i", "wan", "-p", "tcp", "--syn", "-j", "DROP")

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for name in self.ns.values():
            leftover = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in leftover:  # anything a crashed run left behind must not outlive its namespace
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)  # the logs and keys: read them before the lab closes

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
                    "QUIC_PORT": "off", "PORT": "8082"})
        return f"/ip4/{PUBLIC_IP}/tcp/4001/p2p/{relay_peer_id}"

    def start_worker(self, side: str, relay_addr: str, name: str | None = None, tcp_port: int = 4001,
                     env: dict[str, str] | None = None) -> str:
        """A worker on host A or B behind its router; returns its process name."""
        name = name or f"worker-{side}"
        self.start(name, f"h{side}", [str(BIN / "worker")], {
            "IDENTITY_FILE": str(self.dir / f"{name}.key"), "LISTEN_HOST": HOST_IP[side],
            "TCP_PORT": str(tcp_port), "WS_PORT": str(tcp_port + 1000), "PORT": "8081",
            "RENDEZVOUS_SERVICE_URL": f"http://{PUBLIC_IP}:8080", "LIBP2P_RELAY_BOOTSTRAP": relay_addr,
            "DISCOVER_INTERVAL": "1", "LOG_LEVEL": "DEBUG", "PUBLIC_NETWORKS": DOCUMENTATION_NETWORKS, **(env or {})})
        return name

    def start_stack(self, relay_key: str, relay_peer_id: str, worker_env: dict[str, str] | None = None) -> None:
        relay_addr = self.start_services(relay_key, relay_peer_id)
        for side in ("a", "b"):
            self.start_worker(side, relay_addr, env=worker_env)
