"""Two service processes on one Redis behave as one service: no replica keeps state of its own."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import aiohttp
import pytest

from shared.registration import sign_registration, sign_unregistration
from tests.servers import COOKIE_KEY, free_port
from tests.helpers import new_key, peer_id


@contextlib.contextmanager
def replica(redis_url: str, key_prefix: str):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "REDIS_URL": redis_url,
           "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix}
    proc = subprocess.Popen([sys.executable, "-m", "rendezvous.cli"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


async def wait_ready(http: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            if (await http.get(f"{base}/readyz")).status == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"replica at {base} never became ready")


async def test_register_on_one_replica_page_on_another_delete_on_the_first(redis_server, key_prefix):
    keys = [new_key() for _ in range(7)]
    with replica(redis_server.url, key_prefix) as (one, proc_one), replica(redis_server.url, key_prefix) as (two, _):
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, one)
            await wait_ready(http, two)
            for key in keys:
                response = await http.post(f"{one}/peers", data=sign_registration(key, "shared", [], 60))
                assert response.status == 201
            seen, cookie = [], None
            for base in (two, one, two, one):  # the cookie moves between replicas
                params = {"namespace": "shared", "limit": "2", **({"cookie": cookie} if cookie else {})}
                page = await (await http.get(f"{base}/peers", params=params)).json()
                seen += [p["ID"] for p in page["Peers"]]
                cookie = page["Cookie"]
            assert seen == [peer_id(k) for k in keys] and page["More"] is False
            gone = await http.delete(f"{one}/peers/{peer_id(keys[0])}", data=sign_unregistration(keys[0]))
            assert gone.status == 200
            lookup = await http.get(f"{two}/peers/{peer_id(keys[0])}", params={"namespace": "shared"})
            assert lookup.status == 404
            page = await (await http.get(f"{two}/peers", params={"namespace": "shared"})).json()
            assert peer_id(keys[0]) not in [p["ID"] for p in page["Peers"]] and len(page["Peers"]) == 6
        proc_one.terminate()
        lines = proc_one.communicate(timeout=10)[0].decode().splitlines()
    assert lines and all(json.loads(line)["severity"] for line in lines)  # every log line is JSON
