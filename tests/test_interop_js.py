"""Our relay serves js-libp2p clients (issue 15): the js interop peer (interop/js, js-libp2p in Node) reserves
a slot at our relay, dials through it and hole-punches on loopback; and our relay's circuit limits hold for a
js client: a relayed stream that carries more than the data limit, or lives past the duration limit, is cut
by the relay (its log says which limit), while one within the limits is not.

Skips, with interop/js/build.sh's reason, where Node.js or npm is missing.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from shared.identity import Identity
from tests.p2p import BIN
from tests.servers import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "interop" / "js" / "build.sh"


@pytest.fixture(scope="module")
def js_peer() -> list[str]:
    """The command that runs the js peer, built (or found built) by its build.sh."""
    built = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=600)
    last = (built.stdout.strip().splitlines() or [""])[-1]
    if built.returncode == 3:
        pytest.skip(f"js interop peer: {last.removeprefix('skip: ')}")
    assert built.returncode == 0, f"interop/js/build.sh failed ({built.returncode}):\n{built.stderr[-3000:]}"
    return last.split()


class Process:
    """A process whose stdout and stderr go to one file, read back as lines and JSON events."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], directory: pathlib.Path):
        self.name = name
        self.log = directory / f"{name}.log"
        self.proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def events(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and "event" in event:
                    out.append(event)
        return out

    def wait_event(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event["event"] == kind:
                    return event
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {kind!r} event within {timeout} s "
                             f"(exit {self.proc.poll()}):\n{self.text()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def loopback(js_peer: list[str], listener_env: dict[str, str] | None = None, **relay_env: str):
    """Our relay on loopback (with `relay_env`, its limits) and a js listener holding a reservation at it.
    Yields (start_js, relay, relay_addr, listener_id): start_js(name, mode, **env) starts another js peer."""
    processes: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="hp-interop-js-") as tmp:
        directory = pathlib.Path(tmp)
        relay_identity = Identity.from_seed(os.urandom(32))
        tcp, http = free_port(), free_port()
        relay = Process("relay", [str(BIN / "relay")], {
            "IDENTITY_KEY": relay_identity.encoded(), "LISTEN_HOST": "127.0.0.1", "TCP_PORT": str(tcp),
            "WS_PORT": "off", "QUIC_PORT": "off", "HTTP_HOST": "127.0.0.1", "PORT": str(http), **relay_env},
            directory)
        processes.append(relay)
        relay_addr = f"/ip4/127.0.0.1/tcp/{tcp}/p2p/{relay_identity.peer_id}"

        def start_js(name: str, mode: str, **env: str) -> Process:
            seed = os.urandom(32)
            peer = Process(name, js_peer, {"MODE": mode, "TRANSPORT": "tcp", "SEED": seed.hex(),
                                           "LISTEN_IP": "127.0.0.1", "RELAY_ADDR": relay_addr, **env}, directory)
            peer.peer_id = str(Identity.from_seed(seed).peer_id)
            processes.append(peer)
            return peer

        try:
            deadline = time.monotonic() + 20
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1).status_code == 200:
                        break
                assert relay.proc.poll() is None and time.monotonic() < deadline, \
                    f"our relay did not start:\n{relay.text()[-3000:]}"
                time.sleep(0.1)
            listener = start_js("listener", "listener", **(listener_env or {}))
            listener.wait_event("reserved", 20)  # our relay accepted a js reservation
            yield start_js, relay, relay_addr, listener.peer_id
        finally:
            for process in reversed(processes):
                process.stop()


def test_js_peers_hole_punch_through_our_relay(js_peer):
    # loopback counts as public here (PUBLIC_NETWORKS), so DCUtR has addresses to dial
    with loopback(js_peer, {"PUBLIC_NETWORKS": "127.0.0.0/8"}) as (start_js, _relay, _addr, listener_id):
        dialer = start_js("dialer", "dialer", REMOTE_PEER=listener_id, TIMEOUT_S="30",
                          PUBLIC_NETWORKS="127.0.0.0/8")
        relayed = dialer.wait_event("relayed", 30)
        result = dialer.wait_event("result", 35)
        assert relayed["ms"] >= 0
        assert result["path"] == "direct", f"{result}\n{dialer.text()[-4000:]}"
        assert "/p2p-circuit" not in result["remote_addr"] and result["rtt_ms"] > 0
        assert dialer.proc.wait(10) == 0


LIMIT = 64 * 1024


def test_our_relay_cuts_a_js_relayed_stream_past_its_data_limit(js_peer):
    with loopback(js_peer, RELAY_CIRCUIT_BYTES=str(LIMIT)) as (start_js, relay, _addr, listener_id):
        # within the limit (echoed, so it crosses the relay twice, with the handshakes besides): all of it
        small = start_js("small", "dialer", REMOTE_PEER=listener_id, RELAY_PROBE_BYTES=str(LIMIT // 4))
        probe = small.wait_event("relayed_probe", 30)
        assert probe == {**probe, "cut": False, "echoed_bytes": LIMIT // 4}, probe
        assert "data limit exceeded" not in relay.text()
        # four times the limit: cut by the relay before the limit is passed
        big = start_js("big", "dialer", REMOTE_PEER=listener_id, RELAY_PROBE_BYTES=str(4 * LIMIT))
        probe = big.wait_event("relayed_probe", 30)
        assert probe["cut"], probe
        assert 0 < 2 * probe["echoed_bytes"] <= LIMIT, probe
        assert "data limit exceeded" in relay.text(), relay.text()[-3000:]


def test_our_relay_cuts_a_js_relayed_connection_past_its_duration_limit(js_peer):
    with loopback(js_peer, RELAY_CIRCUIT_DURATION="3") as (start_js, relay, _addr, listener_id):
        # a ping every 200 ms for 8 s over the relayed connection; the relay ends it at 3 s
        dialer = start_js("dialer", "dialer", REMOTE_PEER=listener_id, RELAY_PROBE_SECONDS="8")
        probe = dialer.wait_event("relayed_probe", 30)
        assert probe["cut"], probe
        assert 2000 <= probe["held_ms"] <= 6000, probe
        assert "duration limit exceeded" in relay.text(), relay.text()[-3000:]


def test_js_peer_refuses_quic_with_a_result_line(js_peer):
    refused = subprocess.run(js_peer, env={**os.environ, "MODE": "dialer", "TRANSPORT": "quic", "SEED": "00" * 32},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 3
    assert json.loads(refused.stdout.strip().splitlines()[-1]) == {
        "event": "result", "path": "none", "error": "js-libp2p has no QUIC in Node"}
