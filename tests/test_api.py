"""The HTTP API against a real redis-server: registration, discovery, paging, deregistration."""
from __future__ import annotations

import base64

import pytest

from shared.envelope import PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, seal
from shared.protobuf import bytes_field
from shared.registration import sign_registration, sign_unregistration
from tests.servers import make_settings, serve, snapshot
from tests.helpers import new_key, peer_id

ADDR = "/ip4/203.0.113.7/tcp/4001"


@pytest.fixture
def service(redis_server, key_prefix):
    def start(**limits):
        return serve(make_settings(redis_server.url, key_prefix, **limits))
    return start


async def register(http, key, namespace="default", addrs=(ADDR,), ttl=60, record=None):
    return await http.post("/peers", data=sign_registration(key, namespace, list(addrs), ttl, record))


async def all_pages(http, namespace="default", limit=10):
    ids, cookie, pages = [], None, 0
    while True:
        params = {"namespace": namespace, "limit": str(limit), **({"cookie": cookie} if cookie else {})}
        page = await (await http.get("/peers", params=params)).json()
        ids += [p["ID"] for p in page["Peers"]]
        cookie, pages = page["Cookie"], pages + 1
        if not page["More"]:
            return ids, cookie, pages


async def test_register_discover_lookup_deregister(service):
    keys = [new_key() for _ in range(3)]
    async with service() as http:
        for key in keys:
            response = await register(http, key)
            assert response.status == 201, await response.text()
            body = await response.json()
            assert body["ID"] == peer_id(key) and body["TTL"] == 60 and body["Namespace"] == "default"
        page = await (await http.get("/peers")).json()
        assert [p["ID"] for p in page["Peers"]] == [peer_id(k) for k in keys]
        first = page["Peers"][0]
        assert first["Schema"] == "peer" and first["Addrs"] == [ADDR] and 58 <= first["TTL"] <= 60
        one = await http.get(f"/peers/{peer_id(keys[1])}")
        assert one.status == 200 and (await one.json())["ID"] == peer_id(keys[1])
        gone = await http.delete(f"/peers/{peer_id(keys[1])}", data=sign_unregistration(keys[1]))
        assert gone.status == 200 and (await gone.json())["Removed"] == ["default"]
        assert (await http.get(f"/peers/{peer_id(keys[1])}")).status == 404
        page = await (await http.get("/peers")).json()
        assert [p["ID"] for p in page["Peers"]] == [peer_id(keys[0]), peer_id(keys[2])]


async def test_new_registration_supersedes_the_old_one(service):
    key = new_key()
    async with service() as http:
        assert (await register(http, key, addrs=["/ip4/203.0.113.7/tcp/1"])).status == 201
        renewed = await register(http, key, addrs=["/ip4/203.0.113.7/tcp/2"], ttl=90)
        assert renewed.status == 200
        page = await (await http.get("/peers")).json()
        assert [(p["ID"], p["Addrs"]) for p in page["Peers"]] == [(peer_id(key), ["/ip4/203.0.113.7/tcp/2"])]
        assert page["Peers"][0]["TTL"] > 60


async def test_peer_in_several_namespaces_leaves_them_all(service, raw_redis, key_prefix):
    key = new_key()
    async with service() as http:
        for namespace in ("alpha", "beta"):
            assert (await register(http, key, namespace)).status == 201
        for namespace in ("alpha", "beta"):
            page = await (await http.get("/peers", params={"namespace": namespace})).json()
            assert [p["ID"] for p in page["Peers"]] == [peer_id(key)]
        gone = await http.delete(f"/peers/{peer_id(key)}", data=sign_unregistration(key))
        assert sorted((await gone.json())["Removed"]) == ["alpha", "beta"]
        for namespace in ("alpha", "beta"):
            assert (await (await http.get("/peers", params={"namespace": namespace})).json())["Peers"] == []
    assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == {}


async def test_paging_covers_everyone_once_and_the_cookie_then_returns_only_newcomers(service):
    keys = [new_key() for _ in range(25)]
    async with service() as http:
        for key in keys:
            await register(http, key)
        ids, cookie, pages = await all_pages(http, limit=10)
        assert pages == 3 and ids == [peer_id(k) for k in keys]
        newcomer = new_key()
        await register(http, newcomer)
        page = await (await http.get("/peers", params={"cookie": cookie})).json()
        assert [p["ID"] for p in page["Peers"]] == [peer_id(newcomer)]


async def test_ndjson_on_accept(service):
    keys = [new_key() for _ in range(3)]
    async with service() as http:
        for key in keys:
            await register(http, key)
        response = await http.get("/peers", params={"limit": "2"}, headers={"Accept": "application/x-ndjson"})
        assert response.content_type == "application/x-ndjson"
        lines = (await response.text()).splitlines()
        assert len(lines) == 2 and response.headers["X-Rendezvous-More"] == "true"
        rest = await http.get("/peers", params={"cookie": response.headers["X-Rendezvous-Cookie"]},
                              headers={"Accept": "application/x-ndjson"})
        assert len((await rest.text()).splitlines()) == 1


async def test_signed_peer_record_is_returned_verbatim(service):
    key = new_key()
    record_payload = bytes_field(1, bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]) + bytes(key.verify_key))
    record = seal(key, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, record_payload)
    async with service() as http:
        assert (await register(http, key, record=record)).status == 201
        peer = await (await http.get(f"/peers/{peer_id(key)}")).json()
        assert base64.b64decode(peer["SignedPeerRecord"]) == record


@pytest.mark.parametrize("cookie", ["not-base64!!", "AAAA", "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw"])
async def test_forged_cookie_is_refused(service, cookie):
    async with service() as http:
        response = await http.get("/peers", params={"cookie": cookie})
        assert response.status == 400 and (await response.json())["error"] == "invalid_cookie"


async def test_cookie_of_another_namespace_is_refused(service):
    async with service() as http:
        cookie = (await (await http.get("/peers", params={"namespace": "a"})).json())["Cookie"]
        response = await http.get("/peers", params={"namespace": "b", "cookie": cookie})
        assert response.status == 400 and (await response.json())["error"] == "invalid_cookie"


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "ten"])
async def test_bad_limit(service, limit):
    async with service() as http:
        response = await http.get("/peers", params={"limit": limit})
        assert response.status == 400 and (await response.json())["error"] == "invalid_limit"


async def test_deregistration_is_never_anonymous(service, raw_redis, key_prefix):
    key, stranger = new_key(), new_key()
    async with service() as http:
        await register(http, key)
        # the rate counter moves on purpose: each request is counted before it is read (count first)
        before = await snapshot(raw_redis, key_prefix, bookkeeping=False)
        anonymous = await http.delete(f"/peers/{peer_id(key)}")
        assert anonymous.status == 401 and (await anonymous.json())["error"] == "unauthorized"
        wrong_token = await http.delete(f"/peers/{peer_id(key)}", headers={"Authorization": "Bearer nope"})
        assert wrong_token.status == 401
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before
        other = await http.delete(f"/peers/{peer_id(key)}", data=sign_unregistration(stranger))
        assert other.status == 400 and (await other.json())["error"] == "peer_id_mismatch"
        assert await snapshot(raw_redis, key_prefix, bookkeeping=False) == before
        assert (await http.get(f"/peers/{peer_id(key)}")).status == 200


async def test_operator_deregisters_with_the_admin_token(service):
    key = new_key()
    async with service() as http:
        await register(http, key, "alpha")
        await register(http, key, "beta")
        auth = {"Authorization": "Bearer admin-token-0123456789"}
        response = await http.delete(f"/peers/{peer_id(key)}", params={"namespace": "alpha"}, headers=auth)
        assert response.status == 200 and (await response.json())["Removed"] == ["alpha"]
        response = await http.delete(f"/peers/{peer_id(key)}", headers=auth)
        assert (await response.json())["Removed"] == ["beta"]
        again = await http.delete(f"/peers/{peer_id(key)}", headers=auth)
        assert again.status == 404


async def test_lookup_of_malformed_or_unknown_peer(service):
    async with service() as http:
        bad = await http.get("/peers/not-a-peer-id")
        assert bad.status == 400 and (await bad.json())["error"] == "invalid_peer_id"
        missing = await http.get(f"/peers/{peer_id(new_key())}")
        assert missing.status == 404 and (await missing.json())["error"] == "not_found"


async def test_operational_endpoints(service):
    async with service() as http:
        assert (await http.get("/healthz")).status == 200
        assert (await (await http.get("/readyz")).json())["store"] == "redis"
        spec = await (await http.get("/openapi.json")).json()
        assert {"/peers", "/peers/{peer_id}", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
        preflight = await http.options("/peers", headers={"Origin": "https://example.org",
                                                          "Access-Control-Request-Method": "POST"})
        assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert (await http.get("/peers")).headers["Access-Control-Allow-Origin"] == "*"
        unknown = await http.get("/nowhere")
        assert unknown.status == 404 and (await unknown.json())["error"] == "not_found"
        wrong_method = await http.put("/peers")
        assert wrong_method.status == 405 and (await wrong_method.json())["error"] == "method_not_allowed"


def metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_with_what_they_count(service):
    async with service() as http:
        before = await (await http.get("/metrics")).text()
        await register(http, new_key(), "metered")
        await register(http, new_key(), "metered")
        await http.post("/peers", data=b"garbage")
        after = await (await http.get("/metrics")).text()
    assert metric(after, "rendezvous_registrations_total", outcome="created") - metric(
        before, "rendezvous_registrations_total", outcome="created") == 2
    assert metric(after, "rendezvous_registrations_total", outcome="bad_envelope") - metric(
        before, "rendezvous_registrations_total", outcome="bad_envelope") == 1
    assert metric(after, "rendezvous_live_peers", namespace="metered") == 2
    assert metric(after, "rendezvous_http_requests_total", method="POST", route="/peers", status="400") - metric(
        before, "rendezvous_http_requests_total", method="POST", route="/peers", status="400") == 1
    assert metric(after, "rendezvous_http_request_duration_seconds_count", method="POST", route="/peers") - metric(
        before, "rendezvous_http_request_duration_seconds_count", method="POST", route="/peers") == 3


async def test_embedded_store_runs_the_same_code_path(key_prefix):
    key = new_key()
    async with serve(make_settings(None, key_prefix)) as http:
        assert (await (await http.get("/readyz")).json())["store"] == "embedded"
        assert (await register(http, key)).status == 201
        assert [p["ID"] for p in (await (await http.get("/peers")).json())["Peers"]] == [peer_id(key)]
        assert (await http.delete(f"/peers/{peer_id(key)}", data=sign_unregistration(key))).status == 200
