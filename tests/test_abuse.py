"""A public rendezvous that no attacker can fill, lock or starve: quotas per source, a fair share of a full
namespace, bounded registrations, a high-water mark on Redis memory that keeps reads alive, and requests
counted before they are parsed. Each attack here is played from several source addresses (X-Forwarded-For
behind one trusted proxy), against a real redis-server."""
from __future__ import annotations

import dataclasses

import pytest
import redis as redis_sync

from rendezvous import rules
from rendezvous.store import MEMORY_CHECK_WRITES
from shared.registration import sign_registration, sign_unregistration
from tests.helpers import new_key, peer_id, registration_payload, signed_payload
from tests.servers import RedisServer, make_settings, serve


def settings(url: str, prefix: str, **limits):
    return dataclasses.replace(make_settings(url, prefix, **limits), trusted_proxy_hops=1)


def source(n: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{n}"}


async def register(http, key, namespace="default", headers=None, addrs=("/ip4/198.51.100.1/tcp/4001",)):
    return await http.post("/peers", data=sign_registration(key, namespace, list(addrs), 60), headers=headers)


async def listed(http, namespace="default") -> set[str]:
    page = await (await http.get("/peers", params={"namespace": namespace, "limit": 1000})).json()
    return {p["ID"] for p in page["Peers"]}


@pytest.mark.parametrize("address, counted_as", [
    ("198.51.100.7", "198.51.100.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"), ("::ffff:198.51.100.7", "198.51.100.7"), ("junk", "unknown"),
])
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(address, counted_as):
    assert rules.source(address) == counted_as


async def test_a_source_holds_at_most_its_quota_and_gets_it_back_when_it_leaves(redis_server, key_prefix):
    async with serve(settings(redis_server.url, key_prefix, max_registrations_per_source=3)) as http:
        keys = [new_key() for _ in range(4)]
        for key in keys[:3]:
            assert (await register(http, key, headers=source(1))).status == 201
        refused = await register(http, keys[3], headers=source(1))
        assert refused.status == 429 and (await refused.json())["error"] == "source_quota"
        assert "Retry-After" in refused.headers
        assert (await register(http, keys[0], headers=source(1))).status == 200  # a renewal is no new place
        assert (await register(http, keys[3], headers=source(2))).status == 201  # another source is not held
        gone = await http.delete(f"/peers/{peer_id(keys[0])}", data=sign_unregistration(keys[0]), headers=source(1))
        assert gone.status == 200
        assert (await register(http, new_key(), headers=source(1))).status == 201


async def test_a_full_namespace_admits_a_new_source_by_refusing_the_largest_holder(redis_server, key_prefix):
    async with serve(settings(redis_server.url, key_prefix, max_peers_per_namespace=10)) as http:
        attacker = [new_key() for _ in range(10)]
        for key in attacker:
            assert (await register(http, key, headers=source(66))).status == 201
        more = await register(http, new_key(), headers=source(66))
        assert more.status == 507 and (await more.json())["error"] == "namespace_full"
        legit = new_key()
        assert (await register(http, legit, headers=source(7))).status == 201
        names = await listed(http)
        assert peer_id(legit) in names and len(names) == 10
        assert peer_id(attacker[0]) not in names  # the attacker's oldest made room
        # shares even out, then first come holds: 5 and 5, and neither may push the other further
        for _ in range(4):
            assert (await register(http, new_key(), headers=source(7))).status == 201
        assert (await register(http, new_key(), headers=source(7))).status == 507
        assert (await register(http, new_key(), headers=source(66))).status == 507
        assert len(await listed(http)) == 10


async def test_an_attacker_with_k_sources_holds_at_most_its_share(redis_server, key_prefix):
    """K attacker sources fill the namespace first; a new source still gets in, repeatedly, until every source
    holds about cap / (K + 1)."""
    cap, k = 12, 3
    async with serve(settings(redis_server.url, key_prefix, max_peers_per_namespace=cap)) as http:
        for n in range(cap):
            assert (await register(http, new_key(), headers=source(100 + n % k))).status == 201
        admitted = 0
        while (await register(http, new_key(), headers=source(9))).status == 201:
            admitted += 1
        assert admitted == cap // (k + 1)


async def test_a_registration_is_bounded_in_bytes(redis_server, key_prefix):
    async with serve(settings(redis_server.url, key_prefix, max_registration_bytes=512)) as http:
        small = await register(http, new_key(), addrs=[f"/ip4/198.51.100.{i}/tcp/4001" for i in range(8)])
        assert small.status == 201
        big = await register(http, new_key(), addrs=[f"/dns4/{'x' * 40}{i}.example.com/tcp/4001" for i in range(12)])
        assert big.status == 400 and (await big.json())["error"] == "registration_too_large"


async def test_a_request_is_counted_before_its_body_is_parsed(redis_server, key_prefix):
    async with serve(settings(redis_server.url, key_prefix, rate_limit_ip_per_minute=3)) as http:
        bad = signed_payload(new_key(), registration_payload(new_key()))  # signed by another key than it names
        for _ in range(3):
            assert (await http.post("/peers", data=bad, headers=source(5))).status == 400
        counted = await http.post("/peers", data=bad, headers=source(5))
        assert counted.status == 429 and (await counted.json())["error"] == "rate_limited"
        assert (await http.post("/peers", data=b"junk", headers=source(5))).status == 429


async def test_a_filling_redis_stops_registrations_at_the_high_water_mark_and_reads_go_on(key_prefix):
    """One big source fills Redis: past the fair-share mark (ten points below the high water) it is refused
    while a peer from another address still registers; fresh sources, ten registrations each, go on to the
    high-water mark, where every new registration stops. Renewals and reads go on, and Redis never refuses a
    write."""
    server = RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction").start()
    try:
        client = redis_sync.Redis(port=server.port)
        used_at_start = int(client.info("memory")["used_memory"])
        high_water = min(80, 100 * used_at_start // (4 << 20) + 20)  # ~800 KB above what an empty Redis uses
        async with serve(settings(server.url, key_prefix, redis_high_water_percent=high_water,
                                  max_registrations_per_source=10**6)) as http:
            kept = new_key()
            assert (await register(http, kept, namespace="kept", headers=source(250))).status == 201
            addrs = [f"/dns4/{'h' * 60}{i}.example.com/tcp/4001" for i in range(16)]

            async def fill(headers) -> int:
                for _ in range(3000):
                    response = await register(http, new_key(), namespace="filler", headers=headers, addrs=addrs)
                    if response.status != 201:
                        assert response.status == 507 and (await response.json())["error"] == "store_full"
                        return response.status
                return 201
            assert await fill(source(1)) == 507  # the big source, at the fair-share mark
            assert (await register(http, new_key(), headers=source(2))).status == 201  # a small one gets in
            filled_to_the_mark = False
            for n in range(3, 200):
                await fill(source(n))  # ten each, then 507
                if (await (await http.get("/readyz")).json())["write"] is False:
                    filled_to_the_mark = True
                    break
            assert filled_to_the_mark, "the high-water mark was never reached"
            # past the mark by no more than one check interval lets in: MEMORY_CHECK_WRITES registrations
            used, overshoot = int(client.info("memory")["used_memory"]), MEMORY_CHECK_WRITES * 3 * 1024
            assert used < (4 << 20) * high_water / 100 + overshoot
            assert (await register(http, new_key(), headers=source(201))).status == 507
            info = client.info("memory")
            assert int(info["used_memory"]) < int(info["maxmemory"])  # Redis itself never refused a write
            assert (await register(http, kept, namespace="kept", headers=source(250))).status == 200  # renewal
            assert peer_id(kept) in await listed(http, "kept")  # reads go on, and nothing stored was lost
            assert (await http.get(f"/peers/{peer_id(kept)}", params={"namespace": "kept"})).status == 200
    finally:
        server.stop()


async def test_a_redis_that_is_full_anyway_still_answers_reads(key_prefix):
    """Something else filled Redis to maxmemory: registrations get 503, discovery still answers (the rate
    counter's refused write is let go)."""
    server = RedisServer("--maxmemory", "4mb", "--maxmemory-policy", "noeviction").start()
    try:
        client = redis_sync.Redis(port=server.port)
        async with serve(settings(server.url, key_prefix, redis_high_water_percent=100)) as http:
            key = new_key()
            assert (await register(http, key)).status == 201
            junk = 0
            for size in (65536, 1024, 16):  # fill to the brim from outside the service
                while True:
                    try:
                        client.set(f"junk:{junk}", b"x" * size)
                        junk += 1
                    except redis_sync.exceptions.ResponseError:
                        break
            refused = await register(http, new_key(), headers=source(3))
            assert refused.status == 503
            for n in range(5):  # fresh rate counters for new sources cannot be written: reads answer anyway
                answer = await http.get("/peers", headers=source(50 + n))
                assert answer.status == 200
            assert peer_id(key) in await listed(http)
    finally:
        server.stop()


async def test_strangers_registering_relays_do_not_reach_the_demo_page(redis_server, key_prefix):
    """Twenty fake relays with long TTLs, one a ws:// host on a LAN: the page is given only the relay whose
    peer ID the rendezvous trusts, and nothing when it trusts none."""
    relay = new_key()
    fakes = [new_key() for _ in range(20)]
    base = settings(redis_server.url, key_prefix)
    trusting = dataclasses.replace(base, relay_peer_ids=(peer_id(relay),))
    async with serve(trusting) as http:
        for n, fake in enumerate(fakes):
            body = sign_registration(fake, "relays", [f"/ip4/192.168.1.{n + 1}/tcp/80/ws"], 72 * 3600)
            assert (await http.post("/peers", data=body, headers=source(n))).status == 201
        body = sign_registration(relay, "relays", ["/dns4/relay.example.com/tcp/443/wss"], 120)
        assert (await http.post("/peers", data=body, headers=source(99))).status == 201
        config = await (await http.get("/demo/config")).json()
        assert config["relays"] == [f"/dns4/relay.example.com/tcp/443/wss/p2p/{peer_id(relay)}"]
    async with serve(base) as http:  # trusting none (the default): only DEMO_RELAY_ADDRS would be given
        assert (await (await http.get("/demo/config")).json())["relays"] == []
