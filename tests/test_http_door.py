"""The HTTP door against what the internet sends it: refusals that come from aiohttp itself (405, parser
errors) in our JSON shape, bodies that stall or stop half-way, hostile numbers and nesting, spoofed
X-Forwarded-For, an OpenAPI document that says what the server enforces, and the demo page's framing rules."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from rendezvous.http.app import create_app
from shared.envelope import seal
from shared.registration import DOMAIN, REGISTER_PAYLOAD_TYPE
from tests.helpers import new_key, peer_id, registration_payload, signed_payload
from tests.servers import make_settings, serve


def requests_counted(route: str, method: str, status: int) -> float:
    return REGISTRY.get_sample_value("rendezvous_http_requests_total",
                                     {"route": route, "method": method, "status": str(status)}) or 0.0


@contextlib.asynccontextmanager
async def production_server(settings):
    """The app behind aiohttp's AppRunner with web.run_app's defaults, as the CLI runs it: unlike TestServer,
    a lost connection does not cancel the handler, so the handler sees the failed read itself."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send `data` as is and read the answer until the server closes: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return parse_answer(answer)


def parse_answer(answer: bytes) -> tuple[int, dict, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


# --- refusals that aiohttp makes, in our shape -------------------------------------------------------------

async def test_a_405_says_which_methods_the_route_takes(redis_server, key_prefix):
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        put = await http.put("/peers")
        assert put.status == 405 and (await put.json())["error"] == "method_not_allowed"
        assert put.headers["Allow"] == "GET, HEAD, OPTIONS, POST"
        assert put.headers["Access-Control-Allow-Origin"] == "*"
        post = await http.post(f"/peers/{peer_id(new_key())}")
        assert post.status == 405 and post.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
        delete = await http.delete("/healthz")
        assert delete.status == 405 and delete.headers["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: a\x00b\r\n\r\n",  # a NUL byte in a header value
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",  # a space in a header name
    b"GET /healthz HTTP/7.3\r\nHost: x\r\n\r\n",  # a malformed request line
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",  # smuggling
], ids=["nul-in-header", "space-in-name", "bad-version", "two-lengths"])
async def test_what_aiohttps_parser_refuses_gets_our_json_refusal_and_no_error_log(
        redis_server, key_prefix, caplog, request_bytes):
    before = requests_counted("unparsed", "UNKNOWN", 400)
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        status, headers, body = await raw_exchange(http.port, request_bytes)
    assert status == 400 and headers["content-type"].startswith("application/json")
    refusal = json.loads(body)
    assert refusal["error"] == "bad_request" and refusal["message"].startswith("the request is not valid HTTP/1.1")
    assert headers["access-control-allow-origin"] == "*"  # and the server closed: raw_exchange read to the end
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert requests_counted("unparsed", "UNKNOWN", 400) == before + 1


# --- bodies that stall or stop ------------------------------------------------------------------------------

async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closed_at_the_deadline(redis_server, key_prefix):
    settings = make_settings(redis_server.url, key_prefix, body_read_timeout=1)
    async with production_server(settings) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"POST /peers HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 5000\r\n\r\n" + b"\x0a" * 100)  # then silence
        try:
            answer = await asyncio.wait_for(reader.read(), 6)  # read() returns once the server closes
        finally:
            writer.close()
        took = time.monotonic() - started
    status, headers, body = parse_answer(answer)
    assert status == 408 and json.loads(body)["error"] == "request_timeout"
    assert headers["connection"] == "close" and headers["access-control-allow-origin"] == "*"
    # not 1 s plus aiohttp's 10 s of lingering on an unread body: the connection goes with the answer
    assert 1.0 <= took < 4, f"answered and closed after {took:.2f} s; the deadline is 1 s"


async def test_a_client_that_leaves_mid_body_is_no_error_of_ours(redis_server, key_prefix, caplog):
    """Counted as 499 (nginx's 'client closed request'), logged at DEBUG, never a 500 with a traceback."""
    gone_before, failed_before = requests_counted("/peers", "POST", 499), requests_counted("/peers", "POST", 500)
    async with production_server(make_settings(redis_server.url, key_prefix)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /peers HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + b"\x0a" * 200)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and requests_counted("/peers", "POST", 499) == gone_before \
                and requests_counted("/peers", "POST", 500) == failed_before:
            await asyncio.sleep(0.02)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert requests_counted("/peers", "POST", 500) == failed_before
    assert requests_counted("/peers", "POST", 499) == gone_before + 1


# --- hostile values, each refused with its code -------------------------------------------------------------

async def test_a_timestamp_of_ten_to_the_400_is_merely_stale(redis_server, key_prefix):
    key = new_key()
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        answer = await http.post("/peers", data=signed_payload(key, registration_payload(key, ts=10 ** 400)))
        assert answer.status == 400 and (await answer.json())["error"] == "stale_timestamp"


async def test_a_payload_nested_7000_deep_is_a_bad_payload(redis_server, key_prefix):
    key = new_key()
    fields = json.dumps(registration_payload(key)).encode()[:-1]
    payload = fields + b', "x": ' + b"[" * 7000 + b"]" * 7000 + b"}"
    async with serve(make_settings(redis_server.url, key_prefix, max_body_bytes=65536)) as http:
        answer = await http.post("/peers", data=seal(key, DOMAIN, REGISTER_PAYLOAD_TYPE, payload))
        assert answer.status == 400 and (await answer.json())["error"] == "bad_payload"


@pytest.mark.parametrize("limit", ["9" * 8000, "²", "1" * 7, "0", "-1", " 5"])
async def test_a_limit_that_is_not_a_small_ascii_number_is_invalid(redis_server, key_prefix, limit):
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        answer = await http.get("/peers", params={"limit": limit})
        assert answer.status == 400 and (await answer.json())["error"] == "invalid_limit"


async def test_an_x_forwarded_for_that_is_no_address_never_becomes_a_redis_key(redis_server, key_prefix, raw_redis):
    settings = dataclasses.replace(make_settings(redis_server.url, key_prefix), trusted_proxy_hops=1)
    junk = "junk}{ip:evil}*"
    key = new_key()
    async with serve(settings) as http:
        found = await http.get("/peers", headers={"X-Forwarded-For": junk})
        assert found.status == 200
        registered = await http.post("/peers", data=signed_payload(key, registration_payload(key)),
                                     headers={"X-Forwarded-For": f"203.0.113.5, {junk}"})
        assert registered.status == 201
    keys = [k.decode() async for k in raw_redis.scan_iter(match=f"{key_prefix}*")]
    assert any(k.endswith(":rate") for k in keys)  # the rate counters exist: they are keyed by the peer's address
    assert not [k for k in keys if "junk" in k or "evil" in k or "203.0.113.5" in k]


async def test_two_trusted_proxies_mean_the_second_entry_from_the_right(redis_server, key_prefix):
    """Rate limits by client address prove which entry counts: the leftmost is the client's own to write."""
    settings = dataclasses.replace(make_settings(redis_server.url, key_prefix, rate_limit_ip_per_minute=3),
                                   trusted_proxy_hops=2)
    async with serve(settings) as http:
        async def status(forwarded: str) -> int:
            return (await http.get("/peers", headers={"X-Forwarded-For": forwarded})).status

        # the trusted entry (second from the right) fixed; the spoofable leftmost and the last proxy's vary
        spoofed = [await status(f"10.9.0.{i}, 198.51.100.7, 192.0.2.{i}") for i in range(5)]
        assert spoofed == [200, 200, 200, 429, 429]
        # and the other way round: a new trusted entry each time is a new client each time
        distinct = [await status(f"10.9.9.9, 198.51.100.{i + 10}, 192.0.2.1") for i in range(5)]
        assert distinct == [200] * 5


# --- what the server says about itself ----------------------------------------------------------------------

async def test_the_openapi_document_states_the_limits_the_server_enforces(redis_server, key_prefix):
    settings = make_settings(redis_server.url, key_prefix, max_body_bytes=4096, discover_limit_max=50,
                             discover_limit_default=20)
    key = new_key()
    async with serve(settings) as http:
        spec = await (await http.get("/openapi.json")).json()
        body = spec["paths"]["/peers"]["post"]["requestBody"]["content"]
        assert list(body) == ["application/octet-stream"] and body["application/octet-stream"]["schema"]["maxLength"] == 4096
        too_big = await http.post("/peers", data=b"\0" * 4097, headers={"Content-Type": "application/octet-stream"})
        assert too_big.status == 413

        limit = next(p for p in spec["paths"]["/peers"]["get"]["parameters"] if p["name"] == "limit")["schema"]
        assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 50, 20)
        assert (await http.get("/peers", params={"limit": "50"})).status == 200
        assert (await http.get("/peers", params={"limit": "51"})).status == 400

        id_schema = spec["paths"]["/peers/{peer_id}"]["get"]["parameters"][0]["schema"]
        pattern = re.compile(id_schema["pattern"])
        assert pattern.fullmatch(peer_id(key)) and id_schema["maxLength"] == len(peer_id(key)) == 52
        not_base58 = "12D3KooW" + "0" * 44  # the right shape, but 0 is not a base58 digit
        assert not pattern.fullmatch(not_base58)
        assert (await (await http.get(f"/peers/{not_base58}")).json())["error"] == "invalid_peer_id"

        await http.post("/peers", data=signed_payload(key, registration_payload(key)))
        cookie = (await (await http.get("/peers")).json())["Cookie"]
        cookie_schema = next(p for p in spec["paths"]["/peers"]["get"]["parameters"] if p["name"] == "cookie")["schema"]
        assert re.fullmatch(cookie_schema["pattern"], cookie)
        codes = spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
        assert {"bad_request", "request_timeout", "invalid_limit"} <= set(codes)


async def test_the_demo_page_may_not_be_framed_and_loads_only_what_it_uses(redis_server, key_prefix):
    async with serve(make_settings(redis_server.url, key_prefix)) as http:
        for path in ("/", "/app.js"):
            answer = await http.get(path)
            policy = dict(d.strip().split(" ", 1) for d in answer.headers["Content-Security-Policy"].split(";"))
            assert policy["frame-ancestors"] == "'none'" and answer.headers["X-Frame-Options"] == "DENY"
            assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
            assert policy["connect-src"].split() == ["'self'", "ws:", "wss:"]  # the API, and the relays
