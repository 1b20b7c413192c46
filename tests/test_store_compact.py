"""A registration's cost in Redis, against a real redis-server: one round trip on a single node, a source
over its rate limit refused without any, and the compact layout (the source inside the stored record, the
peers' namespace index in shared buckets) that brings Redis memory per registration down."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os

import redis as redis_sync

from rendezvous import record
from rendezvous.connection import RespConnection
from rendezvous.http import routes
from rendezvous.keys import INDEX_BUCKETS, KeySchema
from rendezvous.record import Registration
from rendezvous.settings import Limits
from rendezvous.store import Store
from shared.envelope import peer_id_from_public_key
from shared.registration import sign_registration
from tests.helpers import new_key, peer_id
from tests.servers import RedisServer, make_settings, serve

ADDRS = ["/ip4/198.51.100.1/tcp/4001", "/ip4/198.51.100.1/udp/4001/quic-v1"]


def behind_proxy(url: str, prefix: str, **limits):
    return dataclasses.replace(make_settings(url, prefix, **limits), trusted_proxy_hops=1)


@contextlib.contextmanager
def round_trips(http):
    """Count the service's round trips to Redis (its connection's batches), the memory check's INFO aside."""
    connection = http.server.app[routes.REGISTRY].store.redis
    execute, batches = connection.execute, []

    async def counted(commands):
        if commands[0][0] != "INFO":
            batches.append([c[0] for c in commands])
        return await execute(commands)

    connection.execute = counted
    try:
        yield batches
    finally:
        connection.execute = execute


async def test_a_registration_on_a_single_node_takes_one_round_trip(redis_server, key_prefix):
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        key = new_key()
        with round_trips(http) as batches:
            created = await http.post("/peers", data=sign_registration(key, "one-trip", ADDRS, 60))
            renewed = await http.post("/peers", data=sign_registration(key, "one-trip", ADDRS[:1], 60))
        assert (created.status, renewed.status) == (201, 200)
        assert batches == [["EVALSHA"], ["EVALSHA"]]
        page = await (await http.get("/peers", params={"namespace": "one-trip"})).json()
        assert [(p["ID"], p["Addrs"]) for p in page["Peers"]] == [(peer_id(key), ADDRS[:1])]


async def test_a_source_over_its_rate_limit_is_refused_without_a_round_trip_until_its_window_resets(
        redis_server, raw_redis, key_prefix):
    async with serve(behind_proxy(redis_server.url, key_prefix, rate_limit_ip_per_minute=2)) as http:
        source = {"X-Forwarded-For": "198.51.100.77"}
        for _ in range(2):
            assert (await http.get("/peers", headers=source)).status == 200
        counter = KeySchema(key_prefix).ip_rate("198.51.100.77")
        await raw_redis.pexpire(counter, 400)  # the window resets sooner than a minute, for the test's sake
        with round_trips(http) as batches:
            first = await http.post("/peers", data=sign_registration(new_key(), "limited", ADDRS, 60), headers=source)
            assert first.status == 429 and (await first.json())["error"] == "rate_limited"
            assert len(batches) == 1
            for attempt in (http.get("/peers", headers=source), http.post("/peers", data=b"junk", headers=source),
                            http.post("/peers", data=sign_registration(new_key(), "limited", ADDRS, 60),
                                      headers=source)):
                refused = await attempt
                assert refused.status == 429 and "Retry-After" in refused.headers
            assert len(batches) == 1  # refused by this replica: no round trip, no body parsed
            other = await http.get("/peers", headers={"X-Forwarded-For": "198.51.100.78"})
            assert other.status == 200  # another source is not held back
        await asyncio.sleep(0.5)
        assert (await http.post("/peers", data=sign_registration(new_key(), "limited", ADDRS, 60),
                                headers=source)).status == 201


async def test_the_stored_record_names_its_source_and_sends_the_same_peer_object(redis_server, raw_redis,
                                                                                  key_prefix):
    async with serve(behind_proxy(redis_server.url, key_prefix)) as http:
        key = new_key()
        headers = {"X-Forwarded-For": "2001:db8:5:6::9"}
        assert (await http.post("/peers", data=sign_registration(key, "compact", ADDRS, 60),
                                headers=headers)).status == 201
        keys = KeySchema(key_prefix).namespace("compact")
        member = record.member(bytes(key.verify_key))
        stored = await raw_redis.hget(keys.records, member)
        assert record.source(stored) == "2001:db8:5:6::/64"
        # no hash of members to sources: the namespace keeps its sets, its records and the source's set only
        names = {k.decode() async for k in raw_redis.scan_iter(match=f"{key_prefix}:{{ns:compact}}*")}
        assert names == {keys.expiries, keys.sequence, keys.records, keys.sources,
                         keys.by_source_prefix + "2001:db8:5:6::/64"}
        looked_up = await (await http.get(f"/peers/{peer_id(key)}", params={"namespace": "compact"})).json()
        assert looked_up.pop("TTL") > 50
        assert looked_up == {"Schema": "peer", "ID": peer_id(key), "Addrs": ADDRS}


async def test_peers_share_the_buckets_of_the_namespace_index_and_keep_their_own_entries(redis_server, key_prefix):
    """Two peers in one bucket of the index: each one's cap and deregistration see its own entries only."""
    store = Store(RespConnection(redis_server.url), KeySchema(key_prefix),
                  Limits(rate_limit_ip_per_minute=10**6, max_registrations_per_peer=2))
    keys = KeySchema(key_prefix)
    try:
        first = os.urandom(32)
        bucket = keys.peer(peer_id_from_public_key(first)).index
        others = (os.urandom(32) for _ in range(40 * INDEX_BUCKETS))
        second = next((k for k in others if keys.peer(peer_id_from_public_key(k)).index == bucket), None)
        assert second is not None, "no other peer shares the first one's bucket of the index"
        for n, public_key in enumerate((first, second)):
            for namespace in ("a", "b"):
                await store.register(Registration(peer_id_from_public_key(public_key), public_key, namespace,
                                                  (), 60, f"nonce-{n}-{namespace}-0123456789", None), "10.0.0.1")
        assert await store.unregister(peer_id_from_public_key(first), None) == ["a", "b"]
        assert await store.unregister(peer_id_from_public_key(first), None) == []
        page = await store.discover("a", "0", 10, "10.0.0.1")
        assert [record.peer_fields(r)["ID"] for r in page.records] == [peer_id_from_public_key(second)]
    finally:
        await store.close()


async def test_redis_holds_less_than_1000_bytes_a_registration(key_prefix):
    """20,000 registrations from one source in one namespace, with the index and quota of each (used nonces
    and rate counters, gone within two minutes, left out as bench_rendezvous.py does): about 930 bytes each,
    where the layout with a hash of sources and an index key per peer took about 1,270."""
    server = RedisServer().start()
    try:
        client = redis_sync.Redis(port=server.port)
        limits = Limits(rate_limit_ip_per_minute=10**9, rate_limit_peer_per_minute=10**9,
                        max_registrations_per_source=10**6)
        store = Store(RespConnection(server.url), KeySchema(key_prefix), limits)
        before, count = int(client.info("memory")["used_memory"]), 20_000
        assert INDEX_BUCKETS < count  # the index's buckets are shared, as they are at scale

        async def worker(start: int) -> None:
            for i in range(start, count, 32):
                public_key = os.urandom(32)
                await store.register(Registration(peer_id_from_public_key(public_key), public_key, "memory",
                                                  tuple(ADDRS), 3600, f"nonce-{i:012d}-memory", None), "10.9.9.9")

        await asyncio.gather(*(worker(start) for start in range(32)))
        await store.close()
        for pattern in ("*:nonce:*", "*:rate"):
            transient = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(transient), 1000):
                client.unlink(*transient[start:start + 1000])
        per_registration = (int(client.info("memory")["used_memory"]) - before) / count
        assert per_registration < 1000, per_registration
    finally:
        server.stop()
