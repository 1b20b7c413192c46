"""Redis going away: 503 with Retry-After, the process keeps serving, and it recovers by itself."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from shared.registration import sign_registration
from tests.servers import RedisServer, make_settings, serve
from tests.helpers import new_key, peer_id


async def wait_until_ready(http, seconds: float = 15) -> None:
    """Poll /readyz as a load balancer would; the service reconnects with backoff."""
    for _ in range(int(seconds * 10)):
        if (await http.get("/readyz")).status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the service did not become ready within {seconds} s of Redis coming back")


async def test_redis_down_gives_503_and_service_recovers_when_it_returns(key_prefix):
    server = RedisServer().start()
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            key = new_key()
            assert (await http.post("/peers", data=sign_registration(key, "default", [], 60))).status == 201
            server.stop()
            for request in (http.get("/peers"), http.post("/peers", data=sign_registration(new_key(), "default", [], 60)),
                            http.get(f"/peers/{peer_id(key)}"), http.get("/readyz")):
                response = await request
                assert response.status == 503, await response.text()
                assert (await response.json())["error"] == "store_unavailable"
                assert int(response.headers["Retry-After"]) >= 1
            assert (await http.get("/healthz")).status == 200
            assert (await http.get("/metrics")).status == 200
            # a fresh redis-server on the same port: empty, and without our Lua scripts loaded
            server.start()
            await wait_until_ready(http)
            again = await http.post("/peers", data=sign_registration(key, "default", [], 60))
            assert again.status == 201, await again.text()
            page = await (await http.get("/peers")).json()
            assert [p["ID"] for p in page["Peers"]] == [peer_id(key)]
    finally:
        server.stop()


async def test_service_starts_while_redis_is_down(key_prefix):
    server = RedisServer()  # never started
    async with serve(make_settings(server.url, key_prefix)) as http:
        assert (await http.get("/healthz")).status == 200
        assert (await http.get("/readyz")).status == 503
        server.start()
        try:
            await wait_until_ready(http)
            response = await http.post("/peers", data=sign_registration(new_key(), "default", [], 60))
            assert response.status == 201, await response.text()
        finally:
            server.stop()


@contextlib.contextmanager
def paused(server: RedisServer):
    """redis-server frozen (SIGSTOP): its socket still accepts, nothing answers, as on a stalled VM."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def first_success_after(http, path: str = "/readyz", seconds: float = 5) -> float:
    """Seconds until `path` first answers 2xx, polled every 10 ms."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if (await http.get(path)).status < 300:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not answer 2xx within {seconds} s")


async def assert_store_unavailable(response) -> None:
    assert response.status == 503, (response.status, await response.text())
    assert (await response.json())["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


async def test_redis_paused_gives_503_and_service_answers_again_once_it_resumes(key_prefix):
    server = RedisServer().start()
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            assert (await http.get("/readyz")).status == 200
            with paused(server):
                responses = await asyncio.gather(
                    http.post("/peers", data=sign_registration(new_key(), "default", [], 60)),
                    http.get("/peers"), http.get("/readyz"))
                for response in responses:
                    await assert_store_unavailable(response)
            recovered = await first_success_after(http)
            print(f"2xx again {recovered * 1000:.0f} ms after SIGCONT")
            assert recovered < 1.0
            response = await http.post("/peers", data=sign_registration(new_key(), "default", [], 60))
            assert response.status == 201, await response.text()
    finally:
        server.stop()


async def test_script_flush_under_concurrent_load_gives_no_500(key_prefix):
    """After NOSCRIPT the scripts are loaded again while other requests keep running on them."""
    server = RedisServer().start()
    admin = aioredis.Redis(port=server.port)
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            keys = [new_key() for _ in range(20)]

            async def one(i: int) -> int:
                if i % 2:
                    response = await http.post("/peers", data=sign_registration(keys[i % 20], "default", [], 60))
                else:
                    response = await http.get("/peers")
                return response.status

            async def flush_repeatedly() -> None:
                for _ in range(8):
                    await asyncio.sleep(0.02)
                    await admin.script_flush()

            statuses: list[int] = []
            for round_ in range(4):
                *answers, _ = await asyncio.gather(*(one(round_ * 100 + i) for i in range(100)), flush_repeatedly())
                statuses += answers
            counts = {status: statuses.count(status) for status in set(statuses)}
            print("statuses:", counts)
            assert all(status < 300 for status in statuses), counts
            # the flushes did land among the requests: scripts were sent again with their text
            assert (await admin.info("commandstats"))["cmdstat_eval"]["calls"] > 0
    finally:
        await admin.aclose()
        server.stop()


async def test_recovery_after_an_outage_under_load_is_quick(key_prefix):
    """Requests queued behind a failing connection attempt share its outcome: the backoff grows once per
    attempt, not once per waiting request, and stays short enough to notice Redis's return at once."""
    server = RedisServer().start()
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            assert (await http.get("/readyz")).status == 200
            server.stop()
            outage = time.monotonic()
            refused = 0
            while time.monotonic() - outage < 2:
                responses = await asyncio.gather(*(http.get("/peers") for _ in range(20)))
                refused += sum(r.status == 503 for r in responses)
                await asyncio.sleep(0.2)  # pacing the load over the outage, not waiting for a result
            assert refused >= 200
            server.start()  # returns once redis-server answers PING
            recovered = await first_success_after(http, "/peers")
            print(f"2xx again {recovered * 1000:.0f} ms after Redis answered ({refused} requests refused in 2 s)")
            # the runaway took 3.15 s; the backoff's cap (0.4 s) bounds it now. The bound leaves room for a
            # loaded CI machine: the figure itself is printed, and measured in bench/ drills
            assert recovered < 2.0
    finally:
        server.stop()


async def test_an_outage_logs_a_few_warnings_and_counts_every_error(key_prefix, caplog):
    server = RedisServer().start()
    try:
        async with serve(make_settings(server.url, key_prefix)) as http:
            assert (await http.get("/readyz")).status == 200
            server.stop()
            caplog.set_level(logging.WARNING)
            caplog.clear()
            errors_before = REGISTRY.get_sample_value("rendezvous_redis_errors_total")
            for _ in range(10):
                for response in await asyncio.gather(*(http.get("/peers") for _ in range(50))):
                    await assert_store_unavailable(response)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            print(f"{len(warnings)} warning lines for 500 refused requests")
            assert 1 <= len(warnings) <= 5, [r.getMessage() for r in warnings]
            assert REGISTRY.get_sample_value("rendezvous_redis_errors_total") - errors_before == 500
    finally:
        server.stop()
