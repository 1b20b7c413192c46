"""Bad input gets a clear error with a stable code, and nothing is stored."""
from __future__ import annotations

import asyncio
import time

import pytest

from shared.envelope import seal
from shared.protobuf import bytes_field, varint_field
from rendezvous.connection import RespConnection
from rendezvous.keys import KeySchema
from rendezvous import record
from rendezvous.record import Registration
from shared.registration import DOMAIN, UNREGISTER_PAYLOAD_TYPE, sign_registration
from rendezvous.settings import Limits
from rendezvous.store import Store
from tests.servers import make_settings, serve, snapshot
from tests.helpers import new_key, peer_id, registration_payload, signed_payload

KEY = new_key()


def envelope_with_key_type(key_type: int) -> bytes:
    key_proto = varint_field(1, key_type) + bytes_field(2, b"\x02" * 33)
    return bytes_field(1, key_proto) + bytes_field(2, b"x") + bytes_field(3, b"{}") + bytes_field(5, b"s" * 64)


def bad_bodies() -> dict[str, tuple[bytes, str]]:
    """Made when a test runs, not when the suite is collected: the signed ones carry the time of signing."""
    return {
        "garbage": (b"not an envelope", "bad_envelope"),
        "empty body": (b"", "bad_envelope"),
        "rsa key": (envelope_with_key_type(0), "unsupported_key_type"),
        "secp256k1 key": (envelope_with_key_type(2), "unsupported_key_type"),
        "other domain": (signed_payload(KEY, registration_payload(KEY), domain=b"libp2p-peer-record"), "bad_signature"),
        "unregister payload type": (signed_payload(KEY, registration_payload(KEY), UNREGISTER_PAYLOAD_TYPE),
                                    "wrong_payload_type"),
        "payload not json": (seal(KEY, DOMAIN, b"/holepunch-services/register/1", b"\xff{"), "bad_payload"),
        "payload a list": (seal(KEY, DOMAIN, b"/holepunch-services/register/1", b"[]"), "bad_payload"),
        "peer of another key": (signed_payload(KEY, registration_payload(KEY, peer=peer_id(new_key()))),
                                "peer_id_mismatch"),
        "old timestamp": (signed_payload(KEY, registration_payload(KEY, ts=int(time.time() * 1000) - 120_000)),
                          "stale_timestamp"),
        "future timestamp": (signed_payload(KEY, registration_payload(KEY, ts=int(time.time() * 1000) + 120_000)),
                             "stale_timestamp"),
        "timestamp in seconds as text": (signed_payload(KEY, registration_payload(KEY, ts="now")), "bad_payload"),
        "short nonce": (signed_payload(KEY, registration_payload(KEY, nonce="abc")), "bad_payload"),
        "namespace of 256 bytes": (signed_payload(KEY, registration_payload(KEY, ns="n" * 256)), "invalid_namespace"),
        "namespace with a brace": (signed_payload(KEY, registration_payload(KEY, ns="a{b}")), "invalid_namespace"),
        "namespace with a space": (signed_payload(KEY, registration_payload(KEY, ns="a b")), "invalid_namespace"),
        "empty namespace": (signed_payload(KEY, registration_payload(KEY, ns="")), "invalid_namespace"),
        "ttl below minimum": (signed_payload(KEY, registration_payload(KEY, ttl=9)), "invalid_ttl"),
        "ttl above 72 h": (signed_payload(KEY, registration_payload(KEY, ttl=72 * 3600 + 1)), "invalid_ttl"),
        "ttl as text": (signed_payload(KEY, registration_payload(KEY, ttl="60")), "invalid_ttl"),
        "17 addresses": (signed_payload(KEY, registration_payload(KEY, addrs=["/ip4/1.2.3.4/tcp/1"] * 17)),
                         "invalid_addrs"),
        "address of 257 characters": (signed_payload(KEY, registration_payload(KEY, addrs=["/dns4/" + "a" * 251])),
                                      "invalid_addrs"),
        "address not a multiaddr": (signed_payload(KEY, registration_payload(KEY, addrs=["1.2.3.4:4001"])),
                                    "invalid_addrs"),
        "addrs not a list": (signed_payload(KEY, registration_payload(KEY, addrs="/ip4/1.2.3.4")), "invalid_addrs"),
        "record not base64": (signed_payload(KEY, registration_payload(KEY, record="%%%")), "bad_peer_record"),
        "record not an envelope": (signed_payload(KEY, registration_payload(KEY, record="AAAA")), "bad_envelope"),
    }


@pytest.mark.parametrize("name", list(bad_bodies()))
async def test_bad_registration_is_refused_and_changes_nothing(redis_server, raw_redis, key_prefix, name):
    body, code = bad_bodies()[name]
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        await http.post("/peers", data=sign_registration(new_key(), "default", ["/ip4/1.2.3.4/tcp/1"], 60))
        before = await snapshot(raw_redis, key_prefix)
        response = await http.post("/peers", data=body)
        answer = await response.json()
        assert response.status == 400 and answer["error"] == code, answer
        assert len(answer["message"]) > 10
        after = await snapshot(raw_redis, key_prefix)
        rate = f"{key_prefix}:{{ip:127.0.0.1}}:rate"
        assert int(after.pop(rate)) == int(before.pop(rate)) + 1  # counted first, before it was read
        assert after == before


async def test_oversized_body_is_refused_before_parsing(redis_server, raw_redis, key_prefix):
    async with serve(make_settings(redis_server.url, key_prefix, max_body_bytes=1024)) as http:
        response = await http.post("/peers", data=b"x" * 1025)
        assert response.status == 413 and (await response.json())["error"] == "body_too_large"
    assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == {}


async def test_replayed_request_is_refused(redis_server, raw_redis, key_prefix):
    key = new_key()
    body = sign_registration(key, "default", ["/ip4/1.2.3.4/tcp/1"], 60)
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        assert (await http.post("/peers", data=body)).status == 201
        before = await snapshot(raw_redis, key_prefix, bookkeeping=False)
        replay = await http.post("/peers", data=body)
        assert replay.status == 409 and (await replay.json())["error"] == "replayed_nonce"
    # and on another replica of the same Redis
    async with serve(make_settings(redis_server.url, key_prefix)) as other:
        assert (await other.post("/peers", data=body)).status == 409
    assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before


async def test_ip_rate_limit_holds_across_replicas(redis_server, key_prefix):
    settings = make_settings(redis_server.url, key_prefix, rate_limit_ip_per_minute=4)
    async with serve(settings) as one, serve(settings) as two:
        statuses = [(await (one if i % 2 else two).get("/peers")).status for i in range(4)]
        limited = await one.get("/peers")
        assert statuses == [200] * 4
        assert limited.status == 429 and (await limited.json())["error"] == "rate_limited"
        assert 1 <= int(limited.headers["Retry-After"]) <= 60


async def test_peer_rate_limit(redis_server, raw_redis, key_prefix):
    key = new_key()
    async with serve(make_settings(redis_server.url, key_prefix, rate_limit_peer_per_minute=2)) as http:
        for _ in range(2):
            assert (await http.post("/peers", data=sign_registration(key, "default", [], 60))).status in (200, 201)
        before = await snapshot(raw_redis, key_prefix, bookkeeping=False)
        limited = await http.post("/peers", data=sign_registration(key, "default", ["/ip4/1.1.1.1/tcp/1"], 60))
        assert limited.status == 429 and "Retry-After" in limited.headers
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before
        # another peer from the same address is not held back by this peer's limit
        assert (await http.post("/peers", data=sign_registration(new_key(), "default", [], 60))).status == 201


async def test_per_peer_registration_cap(redis_server, raw_redis, key_prefix):
    key = new_key()
    async with serve(make_settings(redis_server.url, key_prefix, max_registrations_per_peer=2)) as http:
        for namespace in ("one", "two"):
            assert (await http.post("/peers", data=sign_registration(key, namespace, [], 60))).status == 201
        before = await snapshot(raw_redis, key_prefix, bookkeeping=False)
        refused = await http.post("/peers", data=sign_registration(key, "three", [], 60))
        assert refused.status == 409 and (await refused.json())["error"] == "peer_registration_limit"
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before
        # renewing one it already has is not a new registration
        assert (await http.post("/peers", data=sign_registration(key, "two", [], 60))).status == 200


async def test_namespace_cap_refuses_newcomers_and_leaves_no_trace(redis_server, raw_redis, key_prefix):
    async with serve(make_settings(redis_server.url, key_prefix, max_peers_per_namespace=2)) as http:
        members = [new_key(), new_key()]
        for key in members:
            assert (await http.post("/peers", data=sign_registration(key, "small", [], 60))).status == 201
        before = await snapshot(raw_redis, key_prefix, bookkeeping=False)
        refused = await http.post("/peers", data=sign_registration(new_key(), "small", [], 60))
        assert refused.status == 507 and (await refused.json())["error"] == "namespace_full"
        # the refused peer's index reservation was released: nothing of it remains
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before
        assert (await http.post("/peers", data=sign_registration(members[0], "small", [], 60))).status == 200


async def test_expired_registration_is_never_returned(redis_server, raw_redis, key_prefix):
    """Checked against Redis's own clock: no read that starts after the expiry may return the peer."""
    store = Store(RespConnection(redis_server.url), KeySchema(key_prefix), Limits(ttl_min=1, rate_limit_ip_per_minute=10**6))
    key = new_key()
    reg = Registration(peer_id(key), bytes(key.verify_key), "brief", (), 1, "nonce-nonce-nonce-0", None)
    expiry, _, _ = await store.register(reg, "127.0.0.1")
    seen_after_expiry, reads = [], 0
    while True:
        seconds, micros = await raw_redis.time()
        started_ms = seconds * 1000 + micros // 1000
        page = await store.discover("brief", "0", 10, "127.0.0.1")
        _, looked_up = await store.lookup("brief", reg.peer_id, "127.0.0.1")
        reads += 1
        if started_ms >= expiry and (page.records or looked_up):
            seen_after_expiry.append(started_ms - expiry)
        if started_ms > expiry + 50:
            break
        await asyncio.sleep(0.001)
    assert reads > 20 and not seen_after_expiry
    # and Redis drops the namespace's keys by itself once the last registration has expired
    await asyncio.sleep(0.05)
    assert await raw_redis.exists(*KeySchema(key_prefix).namespace("brief").all()) == 0


@pytest.mark.parametrize("skew_s, accepted", [(-59, True), (59, True), (-61, False), (61, False)])
async def test_the_signed_timestamp_window_is_sixty_seconds_either_way(redis_server, raw_redis, key_prefix, skew_s,
                                                                      accepted):
    # the default window (Limits.timestamp_window), crossed one second on either side, past and future
    key = new_key()
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        body = signed_payload(key, registration_payload(key, ts=int(time.time() * 1000) + skew_s * 1000))
        response = await http.post("/peers", data=body)
        answer = await response.json()
    if accepted:
        assert response.status == 201, answer
    else:
        assert response.status == 400 and answer["error"] == "stale_timestamp", answer
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == {}


async def test_a_registration_leaves_discovery_and_lookup_at_its_own_expiry(redis_server, raw_redis, key_prefix):
    """A short registration beside a long one in the same namespace: the namespace's keys live on, so only
    the scripts' own expiry check can hide the short one once Redis's clock passes its expiry."""
    store = Store(RespConnection(redis_server.url), KeySchema(key_prefix), Limits(ttl_min=1, rate_limit_ip_per_minute=10**6))
    short_key, long_key = new_key(), new_key()
    short = Registration(peer_id(short_key), bytes(short_key.verify_key), "mixed", (), 1, "nonce-nonce-nonce-1", None)
    long = Registration(peer_id(long_key), bytes(long_key.verify_key), "mixed", (), 60, "nonce-nonce-nonce-2", None)
    await store.register(long, "127.0.0.1")
    expiry, _, _ = await store.register(short, "127.0.0.1")
    margin_ms = 50  # the reads' own time; a script that kept the record a second longer is far outside it
    seen_before, seen_after = 0, []
    while True:
        seconds, micros = await raw_redis.time()
        started_ms = seconds * 1000 + micros // 1000
        page = await store.discover("mixed", "0", 10, "127.0.0.1")
        _, looked_up = await store.lookup("mixed", short.peer_id, "127.0.0.1")
        listed = {record.peer_fields(r)["ID"] for r in page.records}
        assert long.peer_id in listed  # the long one keeps the namespace alive throughout
        if started_ms >= expiry:
            if short.peer_id in listed:
                seen_after.append(("discover", started_ms - expiry))
            if looked_up is not None:
                seen_after.append(("lookup", started_ms - expiry))
        elif short.peer_id in listed and looked_up is not None:
            seen_before += 1
        if started_ms > expiry + margin_ms:
            break
        await asyncio.sleep(0.005)
    assert seen_before > 0 and not seen_after, seen_after
