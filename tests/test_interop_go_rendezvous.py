"""go-libp2p against our rendezvous, both doors (issue 15, item 4): the programs of interop/go-rendezvous/,
built by its build.sh, run against real rendezvous replicas sharing one Redis. `seal` seals a registration
with go-libp2p's record.Seal and verifies what comes back with record.ConsumeEnvelope; `rendezvous-client`
speaks /rendezvous/1.0.0 from a go-libp2p host. Each prints one JSON line per step and exits 1 at the first
mismatch, so a failure here quotes the go side's own evidence."""
from __future__ import annotations

import base64
import json
import pathlib
import subprocess

import httpx
import pytest

from shared.envelope import open_envelope
from shared.registration import DOMAIN, sign_registration
from tests.p2p import new_identity, rendezvous_process
from tests.servers import COOKIE_KEY
from tests.test_door import DoorReplica
from tests.test_readme import example_envelope

BUILD = pathlib.Path(__file__).parent.parent / "interop" / "go-rendezvous" / "build.sh"
SKIPPED = 3  # build.sh's exit status when there is no Go toolchain


@pytest.fixture(scope="module")
def go_bin() -> pathlib.Path:
    build = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=900)
    if build.returncode == SKIPPED:
        pytest.skip(build.stdout.strip().splitlines()[-1])
    assert build.returncode == 0, f"interop/go-rendezvous/build.sh failed:\n{build.stderr[-3000:]}"
    return pathlib.Path(build.stdout.strip().splitlines()[-1])


@pytest.fixture
def replicas(redis_server, key_prefix):
    """(the HTTP URL of one replica, the /p2p/ multiaddr of another's libp2p door), both on one Redis."""
    store = {"REDIS_URL": redis_server.url, "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix}
    door = DoorReplica()
    with rendezvous_process(store) as url, rendezvous_process({**store, **door.env()}):
        yield url, f"{door.multiaddrs()[0]}/p2p/{door.identity.peer_id}"


def run_go(program: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    """Run a go program; its steps by name (the last line of each name), after asserting it passed."""
    done = subprocess.run([str(program), *args], env=env, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and all(line["ok"] for line in lines), (
        f"{program.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-2000:]}")
    return {line["step"]: line for line in lines}


def peers(url: str, namespace: str) -> dict[str, dict]:
    page = httpx.get(f"{url}/peers", params={"namespace": namespace}).json()
    return {p["ID"]: p for p in page["Peers"]}


def test_go_record_seal_reproduces_the_readme_worked_example_byte_for_byte(go_bin):
    readme = example_envelope()
    payload = open_envelope(readme, DOMAIN).payload
    steps = run_go(go_bin / "seal", "-example-seed", bytes(range(32)).hex(), "-example-payload", payload.decode())
    assert base64.b64decode(steps["example"]["envelope"]) == readme


def test_go_seals_a_registration_we_accept_and_verifies_the_record_we_return(go_bin, replicas):
    url, _door = replicas
    steps = run_go(go_bin / "seal", env={"RENDEZVOUS_URL": url, "NAMESPACE": "go-seal"})
    assert steps["register"]["status"] == 201
    peer = steps["register"]["peer"]
    assert steps["consume-envelope"]["peer"] == peer
    assert steps["tampered"] == {"step": "tampered", "ok": True, "status": 400, "error": "bad_signature"}
    # and from our side: the registration go sealed is stored as go sent it, the tampered one left no trace
    listed = peers(url, "go-seal")
    assert list(listed) == [peer]
    assert listed[peer]["Addrs"] == steps["consume-envelope"]["addrs"] == [
        "/ip4/203.0.113.7/tcp/4001", "/ip4/203.0.113.7/udp/4001/quic-v1"]


def test_go_client_at_the_door_registers_discovers_with_cookies_unregisters_and_shares_state_with_http(
        go_bin, replicas):
    url, door = replicas
    namespace = "go-door"
    http_peer = new_identity()  # registered over HTTP, with the signed peer record a spec client can check
    addrs = ["/ip4/192.0.2.77/tcp/4001"]
    body = sign_registration(http_peer.signing_key, namespace, addrs, 300, http_peer.signed_peer_record(addrs))
    assert httpx.post(f"{url}/peers", content=body).status_code == 201

    steps = run_go(go_bin / "rendezvous-client",
                   env={"RENDEZVOUS_ADDR": door, "NAMESPACE": namespace, "EXPECT_PEERS": str(http_peer.peer_id)})
    a, b = steps["connect-a"]["peer"], steps["connect-b"]["peer"]
    assert steps["register"]["status"] == 0 and steps["register"]["ttl"] == 300
    assert set(steps["discover"]["peers"]) == {a, str(http_peer.peer_id)}  # go sees the HTTP registration
    assert steps["cookie-empty"]["peers"] == [] and steps["cookie-new"]["peers"] == [b]
    assert set(steps["discover-only"]["peers"]) == {a, b, str(http_peer.peer_id)}
    assert steps["forged-cookie"]["status"] == 103 and steps["not-authorized"]["status"] == 200
    assert steps["invalid-ttl"]["status"] == 102 and steps["invalid-namespace"]["status"] == 100
    assert a not in steps["unregister"]["remaining"]

    # HTTP sees the go peer that stayed, with the record its go host signed; A unregistered, twice over
    listed = peers(url, namespace)
    assert set(listed) == {b, str(http_peer.peer_id)}
    record = open_envelope(base64.b64decode(listed[b]["SignedPeerRecord"]), b"libp2p-peer-record")
    assert record.peer_id == b and listed[b]["Addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
