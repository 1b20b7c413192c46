"""The local stack: the rendezvous (with the browser demo page), a relay, three workers and a chat worker
for the page, on this machine, with what each worker did.

    scripts/run.sh            (or: .venv/bin/python scripts/stack.py [--workers N] [--base-port P])

The rendezvous keeps its state in the embedded store unless REDIS_URL is set. Workers 1..N-1 listen on
loopback; the last one listens nowhere and is reachable only through the relay, as a peer behind a NAT
would be: the others reach it relayed, then DCUtR upgrades that to a direct connection. Each worker's `holepunch:` lines are printed as they come; full JSON logs are in .stack/logs/.
Ctrl-C stops everything (the workers unregister first).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import signal
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


def short(peer: str | None) -> str:
    return f"{peer[:8]}…{peer[-6:]}" if peer else "?"


class Stack:
    def __init__(self, workers: int, base_port: int):
        self.workers = workers
        self.base = base_port
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.names: dict[str, str] = {}  # peer ID -> process name
        self.lock = threading.Lock()

    def start(self, name: str, command: str, env: dict[str, str]) -> None:
        log = (STATE / "logs" / f"{name}.log").open("w")
        proc = subprocess.Popen([str(BIN / command)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent)
        self.procs.append((name, proc))
        threading.Thread(target=self.follow, args=(name, proc, log), daemon=True).start()

    def follow(self, name: str, proc: subprocess.Popen, log) -> None:
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
        rendezvous_url = f"http://127.0.0.1:{self.base}"
        door_id = load_identity(None, str(STATE / "rendezvous.key")).peer_id  # created on the first run
        self.start("rendezvous", "rendezvous", {"HOST": "127.0.0.1", "PORT": str(self.base),
                                                "LIBP2P_TCP_PORT": str(self.base + 4), "LIBP2P_HOST": "127.0.0.1",
                                                "LIBP2P_IDENTITY_FILE": str(STATE / "rendezvous.key")})
        wait_healthy(f"{rendezvous_url}/healthz")
        relay_http = self.base + 1
        self.start("relay", "relay", {"IDENTITY_FILE": str(STATE / "relay.key"), "LISTEN_HOST": "127.0.0.1",
                                      "TCP_PORT": str(self.base + 2), "WS_PORT": str(self.base + 3),
                                      "QUIC_PORT": "off", "PORT": str(relay_http),
                                      "RENDEZVOUS_SERVICE_URL": rendezvous_url})
        wait_healthy(f"http://127.0.0.1:{relay_http}/healthz")
        store = "Redis at REDIS_URL" if os.environ.get("REDIS_URL") else "the embedded store"
        print(f"rendezvous {rendezvous_url} ({store}); try: curl '{rendezvous_url}/peers?namespace=default'")
        print(f"           and /rendezvous/1.0.0 at /ip4/127.0.0.1/tcp/{self.base + 4}/p2p/{door_id}")
        print(f"relay      http://127.0.0.1:{relay_http}/status")
        make_last_worker_dialed(self.workers)
        for i in range(1, self.workers + 1):
            port = self.base + 10 + 3 * i
            hidden = i == self.workers
            self.start(f"worker-{i}", "worker", {
                "IDENTITY_FILE": str(STATE / f"worker-{i}.key"), "LISTEN_HOST": "127.0.0.1", "HTTP_HOST": "127.0.0.1",
                "PORT": str(port), "TCP_PORT": "off" if hidden else str(port + 1),
                "WS_PORT": "off" if hidden else str(port + 2), "RENDEZVOUS_SERVICE_URL": rendezvous_url,
                "DISCOVER_INTERVAL": "2"})
            note = " (no listen address: reachable only through the relay)" if hidden else ""
            print(f"worker-{i}   http://127.0.0.1:{port}/status{note}")
        chat_port = self.base + 10 + 3 * (self.workers + 1)
        self.start("chatbot", "worker", {
            "IDENTITY_FILE": str(STATE / "chatbot.key"), "LISTEN_HOST": "127.0.0.1", "HTTP_HOST": "127.0.0.1",
            "PORT": str(chat_port), "TCP_PORT": str(chat_port + 1), "WS_PORT": "off", "NAMESPACE": "browser-demo",
            "HOLEPUNCH": "false", "CHAT_GREETING": "hello from a Python worker: say something",
            "RENDEZVOUS_SERVICE_URL": rendezvous_url, "DISCOVER_INTERVAL": "2"})
        print(f"demo page  {rendezvous_url}/  (open it in two browsers, Host in one, Join in the other; or Host in "
              "one and the chatbot worker comes to chat)")
        print("Ctrl-C stops the stack.\n", flush=True)
        while all(proc.poll() is None for _, proc in self.procs):
            time.sleep(0.5)
        dead = [(name, proc.returncode) for name, proc in self.procs if proc.poll() is not None]
        raise SystemExit(f"stopped because {dead[0][0]} exited with {dead[0][1]}; see .stack/logs/{dead[0][0]}.log")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


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
                        help="the rendezvous port; the relay and workers take the ports above it "
                             "[env STACK_BASE_PORT; default 8080]")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    stack = Stack(args.workers, args.base_port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        stack.run()
    except KeyboardInterrupt:
        print("\nstopping: workers unregister first", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
