"""The worker under faults: a rendezvous that is down or answers 503, SIGTERM, malformed frames."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest
import trio

from tests.servers import RedisServer, free_port
from tests.p2p import BIN, new_identity, rendezvous_process, run, start_worker, until, worker_settings
from worker import echo
from shared.rendezvous_client import RendezvousClient, RendezvousError


def role_process(role: str, rendezvous_url: str, tmp_path, **env) -> subprocess.Popen:
    full_env = {**os.environ, "RENDEZVOUS_SERVICE_URL": rendezvous_url, "LISTEN_HOST": "127.0.0.1",
                "TCP_PORT": "0", "WS_PORT": "0", "PORT": "0", "IDENTITY_FILE": str(tmp_path / f"{role}.key"), **env}
    if role == "relay":
        full_env.update(QUIC_PORT="off", RELAY_NAMESPACE="faults")
    else:
        full_env.setdefault("NAMESPACE", "faults")
        full_env.setdefault("DISCOVER_INTERVAL", "0.5")
    return subprocess.Popen([str(BIN / role)], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def worker_process(rendezvous_url: str, tmp_path, **env) -> subprocess.Popen:
    return role_process("worker", rendezvous_url, tmp_path, **env)


def read_events(proc: subprocess.Popen, until_message: str, timeout: float = 30.0) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            time.sleep(0.05)
            continue
        events.append(json.loads(line))  # every line the worker writes is JSON
        if events[-1]["message"] == until_message:
            return events
    raise AssertionError(f"no {until_message!r} line in {timeout} s; saw {[e['message'] for e in events]}")


@pytest.mark.parametrize("role", ["worker", "relay"])
def test_sigterm_unregisters_before_exiting(role, tmp_path):
    with rendezvous_process() as url:
        proc = role_process(role, url, tmp_path)
        try:
            read_events(proc, "registered")
            peers = httpx.get(f"{url}/peers", params={"namespace": "faults"}).json()["Peers"]
            assert len(peers) == 1
            proc.send_signal(signal.SIGTERM)
            events = read_events(proc, "unregistered")
            assert proc.wait(15) == 0
        finally:
            proc.kill()
        assert any(e["message"].startswith("stopping") for e in events)
        assert httpx.get(f"{url}/peers", params={"namespace": "faults"}).json()["Peers"] == []


def test_a_rendezvous_that_is_down_is_retried_with_backoff_until_it_comes_up(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = worker_process(url, tmp_path)
    try:
        deadline = time.monotonic() + 20
        failures = []
        os.set_blocking(proc.stdout.fileno(), False)
        while len(failures) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line and json.loads(line)["message"].startswith("registration failed"):
                failures.append(json.loads(line))
            elif not line:
                time.sleep(0.05)
        assert len(failures) == 2 and all(f["retry_in"] > 0 for f in failures), failures
        assert proc.poll() is None  # still running
        with rendezvous_process(port=port):
            read_events(proc, "registered", timeout=90)
    finally:
        proc.kill()
        proc.wait()


def test_503_from_the_rendezvous_is_an_error_to_retry_with_its_retry_after():
    redis = RedisServer().start()
    env = {"REDIS_URL": redis.url, "COOKIE_HMAC_KEY": "c" * 32}
    with rendezvous_process(env) as url:
        async def body(nursery):
            client = RendezvousClient(url, new_identity())
            await client.register("down", ["/ip4/127.0.0.1/tcp/1"], 60)
            redis.stop()
            try:
                await client.register("down", ["/ip4/127.0.0.1/tcp/1"], 60)
            except RendezvousError as exc:
                error = exc
            else:
                raise AssertionError("registration succeeded with Redis down")
            await client.aclose()
            assert error.status == 503 and error.retryable and error.retry_after is not None
        run(body)


def test_malformed_echo_frames_end_that_stream_only(tmp_path):
    with rendezvous_process() as url:
        async def body(nursery):
            a = await start_worker(nursery, worker_settings(url, NAMESPACE="garbage"))
            b = await start_worker(nursery, worker_settings(url, NAMESPACE="garbage"))
            await until(lambda: a.peers.get(b.peer_id) and a.peers[b.peer_id].connected, what="a connection")
            peer = b.identity.peer_id
            bad = await a.host.new_stream(peer, [echo.PROTOCOL])
            await bad.write(b"\xff\xff\xff\xff\x0f" + b"x" * 10)  # a length far beyond MAX_FRAME
            with trio.fail_after(5):
                try:
                    answer = await bad.read(100)
                except Exception:
                    answer = b""
            assert answer == b""  # b dropped that stream instead of echoing or waiting for 4 GB
            good = echo.EchoClient(await a.host.new_stream(peer, [echo.PROTOCOL]))
            assert await good.round_trip(b"still here") > 0
            await good.close()
        run(body)
