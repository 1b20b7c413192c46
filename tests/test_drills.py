"""Reliability drills: registrations that vanish behind a worker's back, a Redis failover, replicas drained
and killed under load. Real redis-server and rendezvous processes on loopback; the figures the bench
(bench/drills.py) prints are the ones asserted here, on shorter runs."""
from __future__ import annotations

import httpx
import trio

from shared.registrar import Registrar, check_interval
from shared.rendezvous_client import RendezvousClient
from tests.p2p import eventually, new_identity, rendezvous_process, run
from tests.servers import COOKIE_KEY

ADMIN_TOKEN = "admin-token-0123456789"
ADDRS = ["/ip4/203.0.113.7/tcp/4001"]
TTL = 20  # refreshed at 10 s, checked every 5 s: a re-registration before 10 s can only come from the check


def test_a_registration_an_operator_deleted_is_back_within_the_registrars_bound(redis_server, key_prefix):
    env = {"REDIS_URL": redis_server.url, "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix,
           "ADMIN_TOKEN": ADMIN_TOKEN}
    with rendezvous_process(env) as url:
        async def body(nursery: trio.Nursery) -> None:
            client = RendezvousClient(url, new_identity())
            registrar = Registrar(client, "drills", TTL, lambda: ADDRS)
            nursery.start_soon(registrar.keep_registered)
            await eventually(lambda: client.lookup("drills"), lambda entry: entry is not None, what="registration")
            async with httpx.AsyncClient() as http:
                gone = await http.delete(f"{url}/peers/{client.identity.peer_id}", params={"namespace": "drills"},
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert gone.status_code == 200 and await client.lookup("drills") is None
            deleted_at = trio.current_time()
            entry = await eventually(lambda: client.lookup("drills"), lambda entry: entry is not None,
                                     timeout=check_interval(TTL) + 2.0, what="the registrar to register again")
            assert entry.addrs == tuple(ADDRS)
            assert trio.current_time() - deleted_at < TTL / 2  # before the refresh would have done it
            await client.aclose()
        run(body, timeout=30)
