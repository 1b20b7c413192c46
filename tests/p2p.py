"""Helpers for tests of the worker and the relay: real processes and in-process trio nodes on loopback."""
from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import trio

from relay.node import Relay
from relay.settings import RelaySettings
from tests.servers import free_port
from shared.host import install_library_patches
from shared.identity import Identity
from worker.node import Worker
from worker.settings import WorkerSettings

BIN = pathlib.Path(sys.executable).parent
install_library_patches()  # as the runner does at start, for the nodes these tests run in-process


@contextlib.contextmanager
def rendezvous_process(extra_env: dict[str, str] | None = None, port: int | None = None):
    """A real rendezvous service (embedded store unless REDIS_URL is given) on a loopback port."""
    port = port or free_port()
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "PROCESSES": "1",  # tests/test_processes.py has more
           **(extra_env or {})}
    proc = subprocess.Popen([str(BIN / "rendezvous")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the rendezvous did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def worker_settings(rendezvous_url: str, relay: list[str] = (), **env: str) -> WorkerSettings:
    base = {"RENDEZVOUS_SERVICE_URL": rendezvous_url, "LISTEN_HOST": "127.0.0.1", "TCP_PORT": "0", "WS_PORT": "0",
            "HTTP_HOST": "127.0.0.1", "PORT": "0", "DISCOVER_INTERVAL": "0.5", "LIBP2P_RELAY_BOOTSTRAP": ",".join(relay),
            "NAMESPACE": "loopback", "DIAL_SCOPE": "all", "RELAY_PEER_IDS": "*"}
    return WorkerSettings.parse([], {**base, **env})


def relay_settings(rendezvous_url: str = "", **env: str) -> RelaySettings:
    base = {"LISTEN_HOST": "127.0.0.1", "TCP_PORT": "0", "WS_PORT": "0", "QUIC_PORT": "off",
            "HTTP_HOST": "127.0.0.1", "PORT": "0", "RENDEZVOUS_SERVICE_URL": rendezvous_url}
    return RelaySettings.parse([], {**base, **env})


def new_identity() -> Identity:
    return Identity.from_seed(os.urandom(32))


def ordered_identities(count: int) -> list[Identity]:
    """Identities sorted by peer ID: of two workers that find each other, the lower ID dials."""
    return sorted((new_identity() for _ in range(count)), key=lambda i: str(i.peer_id))


async def start_worker(nursery: trio.Nursery, settings: WorkerSettings, identity: Identity | None = None) -> Worker:
    return await nursery.start(Worker(settings, identity or new_identity()).run)


async def start_relay(nursery: trio.Nursery, settings: RelaySettings) -> Relay:
    return await nursery.start(Relay(settings, new_identity()).run)


async def until(predicate, timeout: float = 20.0, what: str = "the condition"):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def eventually(fetch, check, timeout: float = 10.0, what: str = "the condition"):
    """Call the async `fetch` until `check` holds on what it returns; fail with `what` after `timeout` s."""
    with trio.move_on_after(timeout):
        while True:
            value = await fetch()
            if check(value):
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def record_of(worker: Worker, other: Worker):
    record = worker.peers.get(other.peer_id)
    return record if record is not None and record.connected and record.rtt_ms else None


def run(test_body, timeout: float = 60.0) -> None:
    """Run an async test body under trio, with a deadline, cancelling every node it started."""
    async def main():
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await test_body(nursery)
                nursery.cancel_scope.cancel()
    trio.run(main)
