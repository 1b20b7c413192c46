"""The browser demo in real headless Chromium (Debian's, driven by playwright-core): two pages chat over a
direct WebRTC connection found through the rendezvous; one page chats with a Python worker over the relay;
a host chats with two joiners at once, and its closed page is noticed by them within 2 s."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from tests.servers import free_port
from shared.identity import load_identity
from tests.p2p import BIN, rendezvous_process

WEB = pathlib.Path(__file__).resolve().parents[1] / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def missing() -> str | None:
    if os.environ.get("HOLEPUNCH_SKIP_BROWSER"):
        return "HOLEPUNCH_SKIP_BROWSER is set"
    if shutil.which("node") is None:
        return "node is not installed (scripts/test.sh installs it)"
    if not pathlib.Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (scripts/test.sh installs Debian's chromium)"
    if not (WEB / "node_modules" / "playwright-core").exists() or not (WEB / "dist" / "app.js").exists():
        return "web/ is not built: run npm ci && npm run build in web/ (scripts/test.sh does)"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=f"browser demo: {missing()}")


class Process:
    def __init__(self, command: str, env: dict[str, str]):
        self.proc = subprocess.Popen([str(BIN / command)], env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_for(url: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check(httpx.get(url, timeout=2))
            if value:
                return value
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never became ready")


@pytest.fixture
def stack(tmp_path):
    """The rendezvous (serving the page) and a relay that registers its WebSocket address there; the page is
    given that relay because the rendezvous trusts its peer ID (a stranger registering a relay would not be)."""
    relay_identity = load_identity(None, str(tmp_path / "relay.key"))
    with rendezvous_process({"RELAY_PEER_IDS": str(relay_identity.peer_id)}) as url:
        relay_http = free_port()
        relay = Process("relay", {"IDENTITY_FILE": str(tmp_path / "relay.key"), "LISTEN_HOST": "127.0.0.1",
                                  "TCP_PORT": str(free_port()), "WS_PORT": str(free_port()), "QUIC_PORT": "off",
                                  "PORT": str(relay_http), "RENDEZVOUS_SERVICE_URL": url})
        try:
            wait_for(f"{url}/demo/config", lambda r: r.json()["relays"])  # the page learns the relay from here
            yield url, relay_http
        finally:
            relay.stop()


def relay_tcp_addr(relay_http: int) -> str:
    """The relay's plain TCP multiaddr, which a worker reserves over (the page uses its WebSocket one)."""
    status = httpx.get(f"http://127.0.0.1:{relay_http}/status").json()
    return next(a for a in status["multiaddrs"] if "/ws" not in a and "/tcp/" in a)


@pytest.fixture
def node_tmp():
    """The harness's own temporary directory (TMPDIR), to see what it leaves there; short, since Chromium puts
    a socket in it and a socket's path is limited to 107 bytes."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="hp-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def browser_env(node_tmp: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "CHROMIUM": CHROMIUM, "TMPDIR": str(node_tmp)}


def profiles_left(node_tmp: pathlib.Path) -> list[str]:
    return sorted(p.name for p in node_tmp.glob("hp-*"))


def run_browsers(url: str, shots: pathlib.Path, node_tmp: pathlib.Path, mode: str = "pair") -> dict:
    result = subprocess.run(["node", "test/e2e.mjs", f"{url}/", str(shots), mode], cwd=WEB, capture_output=True,
                            text=True, timeout=180, env=browser_env(node_tmp))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert profiles_left(node_tmp) == []  # each browser's profile directory is removed on the way out
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_browsers_chat_both_ways_over_a_direct_webrtc_connection(stack, tmp_path, node_tmp):
    url, _ = stack
    outcome = run_browsers(url, tmp_path, node_tmp)
    assert outcome["path"] == "direct WebRTC" and outcome["rtt"].endswith("ms")
    assert outcome["a"] != outcome["b"] and outcome["a"].startswith("12D3KooW")
    assert (tmp_path / "host.png").stat().st_size > 10_000 and (tmp_path / "join.png").stat().st_size > 10_000
    hosts = httpx.get(f"{url}/peers", params={"namespace": "browser-demo"}).json()["Peers"]
    assert outcome["a"] not in {p["ID"] for p in hosts}  # A unregistered when its page closed


def test_browsers_that_cannot_get_webrtc_through_chat_over_the_relay_instead(stack, tmp_path, node_tmp):
    url, _ = stack
    outcome = run_browsers(url, tmp_path, node_tmp, "pair-no-direct-path")
    assert outcome["path"] == "relayed"
    assert "no direct WebRTC connection" in outcome["log"] and "peer: hello back from A" in outcome["log"]


def test_one_browser_chats_with_a_python_worker_over_the_relay(stack, tmp_path, node_tmp):
    url, relay_http = stack
    relay_tcp = relay_tcp_addr(relay_http)
    worker_http = free_port()
    worker = Process("worker", {"IDENTITY_FILE": str(tmp_path / "worker.key"), "LISTEN_HOST": "127.0.0.1", "DIAL_SCOPE": "all",
                                "TCP_PORT": "0", "WS_PORT": "off", "PORT": str(worker_http), "NAMESPACE": "browser-demo",
                                "RENDEZVOUS_SERVICE_URL": url, "LIBP2P_RELAY_BOOTSTRAP": relay_tcp})
    try:
        status = wait_for(f"http://127.0.0.1:{worker_http}/status",
                          lambda r: r.json() if any("/p2p-circuit" in a for a in r.json()["registered_addrs"]) else None)
        outcome = run_browsers(url, tmp_path, node_tmp, f"worker:{status['peer_id']}")
    finally:
        worker.stop()
    assert outcome["path"] == "relayed" and "heard: hello worker" in outcome["log"]


def test_a_python_worker_comes_to_chat_with_a_single_browser_host(stack, tmp_path, node_tmp):
    url, relay_http = stack
    relay_tcp = relay_tcp_addr(relay_http)
    browser = subprocess.Popen(["node", "test/e2e.mjs", f"{url}/", str(tmp_path), "host-for-worker"], cwd=WEB,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=browser_env(node_tmp))
    worker = None
    try:
        hosting = json.loads(browser.stdout.readline())  # the page is hosting: now the worker may find it
        assert hosting["host"].startswith("12D3KooW")
        worker = Process("worker", {"IDENTITY_FILE": str(tmp_path / "worker.key"), "LISTEN_HOST": "127.0.0.1", "DIAL_SCOPE": "all",
                                    "TCP_PORT": "0", "WS_PORT": "off", "PORT": str(free_port()),
                                    "NAMESPACE": "browser-demo", "RENDEZVOUS_SERVICE_URL": url, "HOLEPUNCH": "false",
                                    "LIBP2P_RELAY_BOOTSTRAP": relay_tcp, "CHAT_GREETING": "hello from a worker",
                                    "DISCOVER_INTERVAL": "1"})
        out, err = browser.communicate(timeout=120)
        assert browser.returncode == 0, out[-2000:] + err[-2000:]
    finally:
        browser.kill()
        if worker is not None:
            worker.stop()
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["path"] == "relayed" and "heard: hello to you too" in outcome["log"]
    assert profiles_left(node_tmp) == []


def test_a_host_chats_with_two_joiners_and_its_closed_page_is_noticed_within_two_seconds(stack, tmp_path, node_tmp):
    """Three pages: host A and joiner B are two tabs of one browser, joiner C another browser."""
    url, _ = stack
    outcome = run_browsers(url, tmp_path, node_tmp, "three")
    ids = outcome["ids"]
    # each tab is a peer of its own, even one opened from another (it starts with a copy of its sessionStorage)
    assert len({ids["a"], ids["b"], ids["c"], outcome["twinId"]}) == 4
    assert outcome["reloadedId"] == ids["a"]  # ...and keeps it across a reload (sessionStorage, not localStorage)
    # the joiners' lists are live: A is listed on both within a second of registering, as a browser
    assert all(ms < 1000 for ms in outcome["listedMs"]), outcome["listedMs"]
    assert outcome["kinds"] == ["browser", "browser"]
    # one conversation per joiner at the host: each message in the right one, each reply to the right joiner
    heard = outcome["heardBy"]
    assert "peer: hello from B" in heard["aFromB"] and "hello from C" not in heard["aFromB"]
    assert "peer: hello from C" in heard["aFromC"] and "hello from B" not in heard["aFromC"]
    assert "peer: for B only" in heard["b"] and "for C only" not in heard["b"]
    assert "peer: for C only" in heard["c"] and "for B only" not in heard["c"]
    assert sorted(outcome["hostLabels"]) == sorted(f"browser {i[:12]}…{i[-6:]}" for i in (ids["b"], ids["c"]))
    # A's closed page: both joiners say so, and drop A from their lists, within 2 s
    assert all(ms < 2000 for ms in outcome["leaveNoticedMs"]), outcome["leaveNoticedMs"]
    assert all(ms < 2000 for ms in outcome["unlistedMs"]), outcome["unlistedMs"]
    # B says why: A's chat stream ended as its page closed, or the watch told that A left (whichever came first)
    assert any("closed the chat" in note or "has left" in note for note in outcome["bNotes"]), outcome["bNotes"]
    panel = outcome["panel"]
    assert panel["peer"].endswith("— gone") and panel["path"] == "closed" and panel["rtt"] == "-" and panel["sendDisabled"]
    assert outcome["late"] == ["unsent"]  # a message typed after A left is shown, as not sent
