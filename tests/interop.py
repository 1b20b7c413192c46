"""The interop harness (issue 15): builds each implementation's peer (interop/<impl>/build.sh) and runs one
cell -- a dialer of one implementation hole-punching to a listener of another, over one transport, through
one relay -- inside the NAT lab (tests/natlab.py): the relay on the public segment, the listener on host a,
the dialer on host b, both routers port-restricted with 25 ms one way.

Used by tests/test_interop.py (one test per cell) and bench/bench_interop.py (the README's table). Every peer
follows the interop contract (README, Interop): configured by environment variables, one JSON line per
event on stdout.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
import shlex
import subprocess
import time

from shared.identity import Identity
from tests.natlab import BIN, HOSTS, PUBLIC_IP, Nat, NatLab

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMPLS = ["py", "go", "rust", "js"]
TRANSPORTS = ["tcp", "quic"]
# js-libp2p in Node has no QUIC transport
SUPPORTS = {"py": {"tcp", "quic"}, "go": {"tcp", "quic"}, "rust": {"tcp", "quic"}, "js": {"tcp"}}
RELAYS = ["ours", "go"]
CELL_TIMEOUT_S = 30.0
BUILD_TIMEOUT_S = 1800  # a first Rust build on two busy cores takes many minutes

# Fixed relay ports on the public address: ours serves both transports on one port number, go's peer
# listens on one transport per process.
RELAY_PORTS = {("ours", "tcp"): 4001, ("ours", "quic"): 4001, ("go", "tcp"): 4011, ("go", "quic"): 4012}


@dataclasses.dataclass(frozen=True)
class Build:
    impl: str
    command: tuple[str, ...] | None  # None: not runnable here, `skip` says why
    skip: str | None
    seconds: float


@functools.cache
def build(impl: str) -> Build:
    """Run interop/<impl>/build.sh once per process. Exit 3 is a skip with the script's reason; any other
    failure raises with the compiler's output (a broken peer must fail loudly, never skip)."""
    script = ROOT / "interop" / impl / "build.sh"
    if not script.exists():
        return Build(impl, None, f"{impl}: not built yet (no interop/{impl}/build.sh)", 0.0)
    began = time.monotonic()
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    seconds = time.monotonic() - began
    lines = done.stdout.strip().splitlines()
    if done.returncode == 3:
        reason = next((l.removeprefix("skip:").strip() for l in lines if l.startswith("skip:")), "no reason given")
        return Build(impl, None, f"{impl}: {reason}", seconds)
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"interop/{impl}/build.sh failed with {done.returncode}:\n{done.stderr[-4000:]}")
    return Build(impl, tuple(shlex.split(lines[-1])), None, seconds)


def identity(name: str) -> Identity:
    """A fixed identity per role name, so the harness knows every peer ID before the peer starts."""
    return Identity.from_seed(hashlib.sha256(f"holepunch-interop/{name}".encode()).digest())


@dataclasses.dataclass(frozen=True)
class Cell:
    dialer: str
    listener: str
    transport: str
    relay: str

    @property
    def name(self) -> str:
        return f"{self.dialer}->{self.listener}/{self.transport}/{self.relay}-relay"


def cells(impls: list[str] = IMPLS) -> list[Cell]:
    """Every ordered pair (each in both roles, and each with itself) over every transport both have, through
    every relay whose implementation has that transport."""
    return [Cell(d, l, t, r) for t in TRANSPORTS for r in RELAYS for d in impls for l in impls
            if t in SUPPORTS[d] & SUPPORTS[l] and t in SUPPORTS["py" if r == "ours" else r]]


@dataclasses.dataclass
class Result:
    cell: Cell
    path: str  # "direct" (passed), "relayed", "none"
    relayed_ms: float | None = None
    time_to_direct_ms: float | None = None
    rtt_ms: float | None = None
    remote_addr: str | None = None
    error: str | None = None
    logs: str = ""

    @property
    def passed(self) -> bool:
        return self.path == "direct"


class InteropLab:
    """One NAT lab for many cells: the relays start once, on first use, and stay; each cell's peers get new
    ports (so no NAT mapping of an earlier cell applies) and are stopped when the cell ends."""

    def __init__(self, delay_ms: float = 25.0, capture_dir: pathlib.Path | None = None):
        self.lab = NatLab(Nat.PORT_RESTRICTED, Nat.PORT_RESTRICTED, delay_ms=delay_ms)
        # where to keep packet captures (tcpdump on both routers' WAN links) of the runs that fail
        self.capture_dir = capture_dir
        self.relay_names: dict[tuple[str, str], str] = {}  # (kind, transport) -> its process
        self._next_port = 5000
        self._runs = 0

    def __enter__(self) -> "InteropLab":
        self.lab.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.lab.__exit__(*exc)

    def relay(self, kind: str, transport: str) -> str:
        """The multiaddr (with /p2p/<id>) of relay `kind` (ours or go) serving `transport`, started if need be."""
        key = (kind, transport)
        port, who = RELAY_PORTS[key], identity(f"relay-{kind}")
        if key not in self.relay_names:
            if kind == "ours":  # the `relay` console script, both transports in one process
                name = "relay-ours"
                self.lab.start(name, "pub", [str(BIN / "relay")], {
                    "IDENTITY_KEY": who.encoded(), "LISTEN_HOST": PUBLIC_IP, "TCP_PORT": str(port),
                    "QUIC_PORT": str(port), "WS_PORT": "off", "PORT": "off"})
                ready = lambda e: e.get("message") == "relay started"
            else:
                name = f"relay-{kind}-{transport}"
                self.lab.start(name, "pub", list(self._command(kind)), {
                    "MODE": "relay", "TRANSPORT": transport, "LISTEN_IP": PUBLIC_IP, "LISTEN_PORT": str(port),
                    "SEED": who.seed.hex()})
                ready = lambda e: e.get("event") == "listening"
            if self.lab.wait_for(name, ready, 30.0) is None:
                raise RuntimeError(f"relay {name} did not start:\n{self.lab.log_text(name)[-3000:]}")
            for t in TRANSPORTS if kind == "ours" else [transport]:
                self.relay_names[(kind, t)] = name
        proto = f"tcp/{port}" if transport == "tcp" else f"udp/{port}/quic-v1"
        return f"/ip4/{PUBLIC_IP}/{proto}/p2p/{who.peer_id}"

    @staticmethod
    def _command(impl: str) -> tuple[str, ...]:
        built = build(impl)
        if built.command is None:
            raise RuntimeError(built.skip)
        return built.command

    def run(self, cell: Cell, timeout: float = CELL_TIMEOUT_S, extra_env: dict[str, str] | None = None) -> Result:
        """Run one cell once: the listener reserves at the relay, then the dialer dials it through the relay
        and waits for DCUtR's direct connection; the dialer's result line is the cell's result."""
        self._runs += 1
        run = f"c{self._runs}"
        captures = self._start_captures(run, cell) if self.capture_dir else {}
        result = None
        try:
            result = self._run(run, cell, timeout, extra_env)
            return result
        finally:
            self._end_captures(captures, keep=result is None or not result.passed)

    def _run(self, run: str, cell: Cell, timeout: float, extra_env: dict[str, str] | None) -> Result:
        relay_addr = self.relay(cell.relay, cell.transport)
        relay_name = self.relay_names[(cell.relay, cell.transport)]
        listener_id, dialer_id = identity(f"{run}-listener"), identity(f"{run}-dialer")
        port = self.new_port()
        common = {"TRANSPORT": cell.transport, "RELAY_ADDR": relay_addr, "TIMEOUT_S": str(timeout),
                  "LISTEN_PORT": str(port), **(extra_env or {})}
        lname, dname = f"{run}-{cell.listener}-listener", f"{run}-{cell.dialer}-dialer"
        names = [lname]
        try:
            if not self.start_listener(lname, cell.listener, listener_id, common, timeout):
                return Result(cell, "none", error="the listener made no reservation at the relay",
                              logs=self.logs([lname, relay_name]))
            names.append(dname)
            self.lab.start(dname, "hb", list(self._command(cell.dialer)), {
                **common, "MODE": "dialer", "SEED": dialer_id.seed.hex(), "LISTEN_IP": HOSTS["b"][1],
                "REMOTE_PEER": str(listener_id.peer_id)})
            result = self._wait(dname, "result", timeout + 10)
            relayed = next((e for e in self.lab.events(dname) if e.get("event") == "relayed"), None)
            if result is None:
                return Result(cell, "none", relayed_ms=relayed and relayed.get("ms"),
                              error="the dialer printed no result", logs=self.logs([*names, relay_name]))
            out = Result(cell, result.get("path", "none"), relayed and relayed.get("ms"),
                         result.get("time_to_direct_ms"), result.get("rtt_ms"), result.get("remote_addr"),
                         result.get("error"))
            if not out.passed:
                out.logs = self.logs([*names, relay_name])
            elif "/p2p-circuit" in (out.remote_addr or ""):
                out.path, out.error = "relayed", f"the 'direct' connection is relayed: {out.remote_addr}"
            return out
        finally:
            for name in names:
                self.lab.stop(name)

    def start_listener(self, name: str, impl: str, who: Identity, env: dict[str, str], timeout: float) -> bool:
        """Start a listener on host a; -> whether it reported its reservation at the relay within `timeout`."""
        self.lab.start(name, "ha", list(self._command(impl)), {
            **env, "MODE": "listener", "SEED": who.seed.hex(), "LISTEN_IP": HOSTS["a"][1]})
        return self._wait(name, "reserved", timeout) is not None

    def new_port(self) -> int:
        port, self._next_port = self._next_port, self._next_port + 1
        return port

    def _start_captures(self, run: str, cell: Cell) -> dict[str, pathlib.Path]:
        self.capture_dir.mkdir(parents=True, exist_ok=True)
        captures = {}
        for router in ("ra", "rb"):
            path = self.capture_dir / f"{run}-{cell.name.replace('/', '_').replace('>', '')}-{router}.pcap"
            self.lab.start(f"tcpdump-{router}", router, ["tcpdump", "-i", "wan", "-U", "-w", str(path)], {})
            captures[f"tcpdump-{router}"] = path
        time.sleep(0.5)  # tcpdump needs a moment before it captures
        return captures

    def _end_captures(self, captures: dict[str, pathlib.Path], keep: bool) -> None:
        for name, path in captures.items():
            self.lab.stop(name)
            if not keep:
                path.unlink(missing_ok=True)

    def _wait(self, name: str, event: str, timeout: float) -> dict | None:
        try:
            return self.lab.wait_for(name, lambda e: e.get("event") == event, timeout)
        except RuntimeError:  # it exited: its log says why, and so will the result
            found = [e for e in self.lab.events(name) if e.get("event") == event]
            return found[0] if found else None

    def logs(self, names: list[str], tail: int = 4000) -> str:
        return "\n".join(f"--- {n} ---\n{self.lab.log_text(n)[-tail:]}" for n in names)
