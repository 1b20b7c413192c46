"""Redis going away: 503 with Retry-After, the process keeps serving, and it recovers by itself."""
from __future__ import annotations

import asyncio

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
