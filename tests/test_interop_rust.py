"""rust-libp2p rendezvous clients (interop/rust, binary `rendezvous-client`) against our `/rendezvous/1.0.0` door,
beside the HTTP API of another replica on the same Redis (issue 15).

rust-libp2p 0.57's own `rendezvous::client::Behaviour` signs and reads peer records only in rust-libp2p's legacy
format (domain "libp2p-routing-state"), which no other implementation verifies: the door refuses its
registrations, and a discover answer holding a standard record fails whole on its side. The same steps with
rust-libp2p's standard-format records (`PeerRecord::new_interop`, CLIENT=standard) all succeed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

from shared.identity import Identity
from shared.rendezvous_client import RendezvousClient
from tests.p2p import eventually, new_identity, run
from tests.test_door import replicas, shared_store  # noqa: F401  (the fixtures: a door and an HTTP replica)

BUILD = Path(__file__).resolve().parent.parent / "interop" / "rust" / "build.sh"
NAMESPACE = "rust-interop"
HTTP_ADDRS = ["/ip4/192.0.2.7/tcp/4001"]


@pytest.fixture(scope="module")
def rust_bin() -> Path:
    """The directory of the built rust programs; the test skips with build.sh's reason when it has no
    toolchain (exit 3), and fails with the compiler's output when the build does."""
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1800)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 3:
        pytest.skip(lines[-1] if lines else "interop/rust/build.sh: no toolchain")
    if done.returncode != 0:
        pytest.fail(f"interop/rust/build.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return Path(lines[-1].split()[0]).parent


async def door_listening(port: int, timeout: float = 20.0) -> None:
    """The replica answers /healthz from whichever worker process is up first; its libp2p door is worker 0's
    and may open a moment later."""
    with trio.fail_after(timeout):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                await trio.sleep(0.1)


class JsonLines:
    """The client's stdout, one JSON event a line."""

    def __init__(self, stream: trio.abc.ReceiveStream, log: Path):
        self.stream, self.log, self.buffer = stream, log, b""

    async def next(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise AssertionError(f"the rust client ended early; its log:\n{self.log.read_text()[-4000:]}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    async def expect(self, event: str) -> dict:
        got = await self.next()
        if got["event"] != event:
            raise AssertionError(f"expected {event}, got {got}; the client's log:\n{self.log.read_text()[-4000:]}")
        return got


def client_env(door, **extra: str) -> tuple[dict[str, str], str]:
    """The client's environment, and the peer ID its SEED gives it."""
    seed = os.urandom(32)
    env = {**os.environ, "RENDEZVOUS_ADDR": f"{door.multiaddrs()[0]}/p2p/{door.identity.peer_id}",
           "NAMESPACE": NAMESPACE, "TTL": "300", "SEED": seed.hex(), "TIMEOUT_S": "40", **extra}
    return env, str(Identity.from_seed(seed).peer_id)


async def run_client(rust_bin: Path, env: dict[str, str]) -> list[dict]:
    """Run the client to its end with no stdin; its events, then its exit status as {"exit": n}."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        with trio.fail_after(30):
            done = await trio.run_process([str(rust_bin / "rendezvous-client")], env=env, stdin=b"",
                                          capture_stdout=True, stderr=log, check=False)
        return [json.loads(line) for line in done.stdout.decode().splitlines()] + [{"exit": done.returncode}]


def test_rust_libp2p_client_with_standard_records_registers_discovers_with_cookies_and_unregisters(
        replicas, rust_bin):  # noqa: F811
    url, door = replicas
    env, rust_peer = client_env(door, CLIENT="standard")

    async def body(nursery):
        before, after = RendezvousClient(url, new_identity()), RendezvousClient(url, new_identity())
        await before.register(NAMESPACE, HTTP_ADDRS, 120)  # over HTTP, before the rust client
        await door_listening(door.port)
        with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
            proc = await trio.lowlevel.open_process([str(rust_bin / "rendezvous-client")], env=env,
                                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            try:
                lines = JsonLines(proc.stdout, Path(log.name))
                listening = await lines.expect("listening")
                assert listening["peer_id"] == rust_peer and listening["client"] == "standard"
                assert (await lines.expect("registered")) == {"event": "registered", "namespace": NAMESPACE,
                                                               "ttl": 300}
                first = await lines.expect("discovered")
                found = {p["peer_id"]: p["addrs"] for p in first["peers"]}
                # its own signed record, and the one registered over HTTP, both verified by rust-libp2p
                assert found == {rust_peer: listening["addrs"], str(before.identity.peer_id): HTTP_ADDRS}
                assert first["cookie"]
                # over HTTP, the rust client's registration is there with the addresses it signed
                listed = {p.peer_id: list(p.addrs) for p in await before.discover(NAMESPACE)}
                assert listed[rust_peer] == listening["addrs"]

                await after.register(NAMESPACE, ["/ip4/192.0.2.8/tcp/4001"], 120)
                await proc.stdin.send_all(b"next\n")  # the client now discovers with its cookie
                fresh = await lines.expect("discovered")
                assert fresh["round"] == "cookie"
                assert [p["peer_id"] for p in fresh["peers"]] == [str(after.identity.peer_id)]  # only what is new
                assert fresh["peers"][0]["addrs"] == ["/ip4/192.0.2.8/tcp/4001"]

                await lines.expect("unregistered")
                gone = await lines.expect("discovered")
                assert gone["round"] == "after_unregister"
                assert {p["peer_id"] for p in gone["peers"]} == {str(before.identity.peer_id),
                                                                 str(after.identity.peer_id)}
                await eventually(lambda: before.discover(NAMESPACE),
                                 lambda listed: rust_peer not in {p.peer_id for p in listed},
                                 what="the rust client's unregistration, seen over HTTP")
                with trio.fail_after(10):
                    assert await proc.wait() == 0, Path(log.name).read_text()[-4000:]
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        for client in (before, after):
            await client.aclose()
    run(body)


def test_rust_libp2p_rendezvous_behaviour_uses_legacy_records_that_no_standard_peer_verifies(
        replicas, rust_bin):  # noqa: F811
    """The evidence for the README: rust-libp2p's unchanged client works with the door's messages and cookies
    (an empty namespace's discovery), but its record is refused and it cannot read a standard one."""
    url, door = replicas

    async def body(nursery):
        await door_listening(door.port)
        env, rust_peer = client_env(door, CLIENT="behaviour")
        *events, status = await run_client(rust_bin, env)
        # signed under "libp2p-routing-state": the door checks the signature under "libp2p-peer-record", as go
        # and js do, and answers E_INVALID_SIGNED_PEER_RECORD (101)
        assert events[-1] == {"event": "error", "op": "register", "error": "InvalidSignedPeerRecord"}, events
        assert status == {"exit": 1}
        http = RendezvousClient(url, new_identity())
        assert rust_peer not in {p.peer_id for p in await http.discover(NAMESPACE)}  # nothing stored

        empty, _ = client_env(door, CLIENT="behaviour", DISCOVER_ONLY="1", NAMESPACE="rust-empty")
        *events, status = await run_client(rust_bin, empty)
        assert events[-1]["event"] == "discovered" and events[-1]["peers"] == [] and events[-1]["cookie"]
        assert status == {"exit": 0}

        await http.register(NAMESPACE, HTTP_ADDRS, 120)
        reader, _ = client_env(door, CLIENT="behaviour", DISCOVER_ONLY="1")
        *events, status = await run_client(rust_bin, reader)
        # the standard record does not verify as a legacy one: rust-libp2p fails the whole answer to decode
        # and reports its request as failed (Unavailable)
        assert events[-1] == {"event": "error", "op": "discover", "error": "Unavailable"}, events
        assert status == {"exit": 1}
        await http.aclose()
    run(body)
