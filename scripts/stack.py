"""The local stack: the rendezvous (with the browser demo page), a relay, three workers and a chat worker
for the page, on this machine, with what each worker did.

    scripts/run.sh            (or: .venv/bin/python scripts/stack.py [--workers N] [--base-port P])

The rendezvous keeps its state in the embedded store unless REDIS_URL is set. Workers 1..N-1 listen on
loopback; the last one listens nowhere and is reachable only through the relay, as a peer behind a NAT
would be: the others reach it relayed, then DCUtR upgrades that to a direct connection. Each worker's
`holepunch:` lines are printed as they come; full JSON logs are in .stack/logs/. With --base-port 0 every
port is a free one the kernel picks (the tests run stacks beside each other).
Ctrl-C or SIGTERM stops everything: the workers and the relay first, so that they unregister from a
rendezvous still up, and the rendezvous last.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from shared.identity import Identity, load_identity

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
STATE = pathlib.Path(os.environ.get("STACK_STATE_DIR", ROOT / ".stack"))
SHOWN_EVENTS = {"reserved", "relayed", "hole_punched", "connected", "failed", "lost", "stay_relayed"}
STOP_TIMEOUT = 10.0  # per group of children: a worker's unregistration is bounded by the registrar's own timeout
DRAIN_TIMEOUT = 5.0


class Stop(Exception):
    """SIGINT or SIGTERM reached the stack."""


def stop_on_signal(signum: int, _frame) -> None:
    ignore_stop_signals()  # a second Ctrl-C must not cut the unregistrations short
    raise Stop(signal.Signals(signum).name)


def ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def short(peer: str | None) -> str:
    return f"{peer[:8]}…{peer[-6:]}" if peer else "?"


class Ports:
    """The stack's ports, by offset from the base port; with base 0, free ports the kernel picks, each taken
    just before the process that listens on it starts."""

    def __init__(self, base: int):
        self.base = base
        self.picked: dict[int, int] = {}

    def __call__(self, offset: int) -> int:
        if self.base:
            return self.base + offset
        while offset not in self.picked:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            if port not in self.picked.values():
                self.picked[offset] = port
        return self.picked[offset]


class Stack:
    def __init__(self, workers: int, base_port: int):
        self.workers = workers
        self.port = Ports(base_port)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.followers: list[threading.Thread] = []
        self.names: dict[str, str] = {}  # peer ID -> process name
        self.lock = threading.Lock()

    def start(self, name: str, command: str, env: dict[str, str]) -> None:
        log = (STATE / "logs" / f"{name}.log").open("w")
        # Its own process group: Ctrl-C at a terminal signals the whole foreground group at once, which would
        # stop the rendezvous while the workers are still unregistering from it. Only stop() signals children.
        proc = subprocess.Popen([str(BIN / command)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, process_group=0, preexec_fn=die_with_parent)
        self.procs.append((name, proc))
        follower = threading.Thread(target=self.follow, args=(name, proc, log), daemon=True)
        follower.start()
        self.followers.append(follower)

    def follow(self, name: str, proc: subprocess.Popen, log) -> None:
        with log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.show(name, event)

    def show(self, name: str, event: dict) -> None:
        with self.lock:
            if event.get("message") in ("worker started", "relay started"):
                self.names[event.get("peer", "")] = name
                print(f"{name:9s} started as {short(event.get('peer'))}", flush=True)
            elif event.get("event") in SHOWN_EVENTS:
                peer = event.get("peer")
                who = self.names.get(peer, short(peer)) if peer else ""
                text = event["message"].replace(peer, who) if peer else event["message"]
                print(f"{name:9s} {text}", flush=True)
            elif event.get("severity") in ("ERROR", "CRITICAL"):
                print(f"{name:9s} {event['severity']}: {event.get('message')}", flush=True)

    def run(self) -> None:
        (STATE / "logs").mkdir(parents=True, exist_ok=True)
        rendezvous_url = f"http://127.0.0.1:{self.port(0)}"
        door_id = load_identity(None, str(STATE / "rendezvous.key")).peer_id  # created on the first run
        relay_id = load_identity(None, str(STATE / "relay.key")).peer_id
        self.start("rendezvous", "rendezvous", {"HOST": "127.0.0.1", "PORT": str(self.port(0)),
                                                "LIBP2P_TCP_PORT": str(self.port(4)), "LIBP2P_HOST": "127.0.0.1",
                                                "LIBP2P_IDENTITY_FILE": str(STATE / "rendezvous.key"),
                                                # the demo page is given this stack's relay, by its identity
                                                "RELAY_PEER_IDS": str(relay_id)})
        wait_healthy(f"{rendezvous_url}/healthz")
        relay_http = self.port(1)
        self.start("relay", "relay", {"IDENTITY_FILE": str(STATE / "relay.key"), "LISTEN_HOST": "127.0.0.1",
                                      "TCP_PORT": str(self.port(2)), "WS_PORT": str(self.port(3)),
                                      "QUIC_PORT": "off", "PORT": str(relay_http),
                                      "RENDEZVOUS_SERVICE_URL": rendezvous_url})
        wait_healthy(f"http://127.0.0.1:{relay_http}/healthz")
        store = "Redis at REDIS_URL" if os.environ.get("REDIS_URL") else "the embedded store"
        print(f"rendezvous {rendezvous_url} ({store}); try: curl '{rendezvous_url}/peers?namespace=default'")
        print(f"           and /rendezvous/1.0.0 at /ip4/127.0.0.1/tcp/{self.port(4)}/p2p/{door_id}")
        print(f"relay      http://127.0.0.1:{relay_http}/status")
        make_last_worker_dialed(self.workers)
        # every address here is on loopback, which workers dial only at DIAL_SCOPE=all; and they take a relay
        # from the rendezvous only when its peer ID is one they trust: this stack's own
        shared = {"RENDEZVOUS_SERVICE_URL": rendezvous_url, "DISCOVER_INTERVAL": "2", "DIAL_SCOPE": "all",
                  "RELAY_PEER_IDS": str(relay_id), "LISTEN_HOST": "127.0.0.1", "HTTP_HOST": "127.0.0.1"}
        for i in range(1, self.workers + 1):
            port = self.port(10 + 3 * i)
            hidden = i == self.workers
            self.start(f"worker-{i}", "worker", {
                **shared, "IDENTITY_FILE": str(STATE / f"worker-{i}.key"), "PORT": str(port),
                "TCP_PORT": "off" if hidden else str(self.port(11 + 3 * i)),
                "WS_PORT": "off" if hidden else str(self.port(12 + 3 * i))})
            note = " (no listen address: reachable only through the relay)" if hidden else ""
            print(f"worker-{i}   http://127.0.0.1:{port}/status{note}")
        chat = 10 + 3 * (self.workers + 1)
        self.start("chatbot", "worker", {
            **shared, "IDENTITY_FILE": str(STATE / "chatbot.key"),
            "PORT": str(self.port(chat)), "TCP_PORT": str(self.port(chat + 1)), "WS_PORT": "off",
            "NAMESPACE": "browser-demo", "HOLEPUNCH": "false", "CHAT_GREETING": "hello from a Python worker: say something"})
        print(f"demo page  {rendezvous_url}/  (open it in two browsers, Host in one, Join in the other; or Host in "
              "one and the chatbot worker comes to chat)")
        print("Ctrl-C stops the stack.\n", flush=True)
        while all(proc.poll() is None for _, proc in self.procs):
            time.sleep(0.5)
        dead = [(name, proc.returncode) for name, proc in self.procs if proc.poll() is not None]
        raise SystemExit(f"stopped because {dead[0][0]} exited with {dead[0][1]}; see .stack/logs/{dead[0][0]}.log")

    def stop(self) -> None:
        """The workers and the relay first, each unregistering from a rendezvous still up; the rendezvous last;
        then the rest of every child's output, so that its last lines reach its log."""
        first = [proc for name, proc in self.procs if name != "rendezvous"]
        last = [proc for name, proc in self.procs if name == "rendezvous"]
        for group in (first, last):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for proc in group:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for follower in self.followers:
            follower.join(DRAIN_TIMEOUT)


def make_last_worker_dialed(workers: int) -> None:
    """Give the last worker the highest peer ID, so the others dial it (through the relay) rather than it
    dialing them directly: of two workers that find each other, the lower ID dials. The keys are kept in
    STATE, so peer IDs stay the same from run to run."""
    ids = [str(load_identity(None, str(STATE / f"worker-{i}.key")).peer_id) for i in range(1, workers)]
    last = STATE / f"worker-{workers}.key"
    while not last.exists() or str(load_identity(None, str(last)).peer_id) < max(ids):
        last.write_text(Identity.from_seed(os.urandom(32)).encoded() + "\n")
        last.chmod(0o600)


def die_with_parent() -> None:
    """In the child: get SIGTERM when the stack process dies, however it dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_healthy(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout} s; is the port taken? see .stack/logs/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("STACK_WORKERS", "3")),
                        help="workers to start, at least 2 [env STACK_WORKERS; default 3]")
    parser.add_argument("--base-port", type=int, default=int(os.environ.get("STACK_BASE_PORT", "8080")),
                        help="the rendezvous port; the relay and workers take the ports above it; 0: free ports "
                             "the kernel picks [env STACK_BASE_PORT; default 8080]")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    if args.base_port < 0:
        parser.error("--base-port must be 0 (free ports) or a port")
    stack = Stack(args.workers, args.base_port)
    # Set both explicitly: a process started with SIGINT ignored (`scripts/run.sh &` in a script, nohup)
    # inherits SIG_IGN, and Python then installs no KeyboardInterrupt handler of its own.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_on_signal)
    try:
        stack.run()
    except Stop as stop:
        print(f"\nstopping ({stop}): the workers and the relay unregister first, the rendezvous stops last", flush=True)
    finally:
        ignore_stop_signals()
        stack.stop()


if __name__ == "__main__":
    main()
