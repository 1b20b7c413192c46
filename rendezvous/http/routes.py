"""The HTTP door's routes: decode the request, call the registry, encode the answer. Errors, metrics and
CORS are the middlewares' (app.py); rules, limits and counting are the registry's."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rendezvous import metrics, record, rules, watch as watching
from rendezvous.http import openapi as openapi_document
from rendezvous.registry import Registry
from rendezvous.settings import Settings
from shared.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)

NDJSON = "application/x-ndjson"
COOKIE_HEADER = "X-Rendezvous-Cookie"
MORE_HEADER = "X-Rendezvous-More"


class ClientGone(Exception):
    """The client closed its connection before its request was read: nobody is left to answer."""


async def read_body(request: web.Request) -> bytes:
    """The request body, read within BODY_READ_TIMEOUT_SECONDS: a client that stops sending half-way would
    otherwise hold its connection, and a handler, for as long as it likes (aiohttp sets no deadline)."""
    try:
        async with asyncio.timeout(request.app[SETTINGS].limits.body_read_timeout):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    except ConnectionError:  # aiohttp fails the read with ConnectionResetError when the connection is lost
        raise ClientGone() from None


def client_ip(request: web.Request) -> str:
    """The caller's address; behind N trusted proxies, the Nth entry from the right of X-Forwarded-For (the
    entries left of it are the client's own to write, so they are never trusted)."""
    hops = request.app[SETTINGS].trusted_proxy_hops
    if hops:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            try:
                return str(ipaddress.ip_address(forwarded[-hops]))
            except ValueError:
                pass  # not an address: our own proxy would never write that, so fall back to the peer
    return request.remote or "unknown"


async def register(request: web.Request) -> web.Response:
    # counted against its address whatever its fate (the registry: in the step that stores it, or on refusal)
    registered = await request.app[REGISTRY].register_signed(lambda: read_body(request), client_ip(request))
    reg = registered.registration
    # the bytes web.json_response would send, formatted at once: the hot path's answer skips json.dumps
    # (a peer ID is base58, so only the namespace needs JSON's escaping)
    body = b'{"ID": "%s", "Namespace": %s, "TTL": %d, "ExpiresAt": %d}' % (
        reg.peer_id.encode(), json.dumps(reg.namespace).encode(), reg.ttl, registered.expiry_ms)
    return web.Response(body=body, status=200 if registered.renewed else 201, content_type="application/json",
                        charset="utf-8")


def _namespace_param(request: web.Request) -> str:
    return request.query.get("namespace", request.app[SETTINGS].default_namespace)


async def discover(request: web.Request) -> web.StreamResponse:
    limit = rules.check_page_limit(request.query.get("limit"), request.app[SETTINGS].limits)
    found = await request.app[REGISTRY].discover(_namespace_param(request), request.query.get("cookie"), limit,
                                                 client_ip(request))
    stored = [stored for _, stored in found.records]
    headers = {COOKIE_HEADER: found.cookie, MORE_HEADER: "true" if found.more else "false"}
    if NDJSON in request.headers.get("Accept", ""):
        body = record.peers_json(stored, found.now_ms, b"\n") + b"\n" if stored else b""
        return web.Response(body=body, content_type=NDJSON, headers=headers)
    body = b'{"Namespace":%s,"Peers":[%s],"Cookie":"%s","More":%s}' % (
        json.dumps(_namespace_param(request)).encode(), record.peers_json(stored, found.now_ms),
        found.cookie.encode(), b"true" if found.more else b"false")
    return web.Response(body=body, content_type="application/json", headers=headers)


def sse(event: watching.Event) -> bytes:
    """One Server-Sent Event (the text/event-stream format): a comment for a heartbeat."""
    if event is watching.HEARTBEAT:
        return b": heartbeat\n\n"
    if event is watching.END:
        return b": the stream ends here; reconnect with Last-Event-ID to go on\n\n"
    head = b"id: %s\n" % event.id.encode() if event.id is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.kind.encode(), event.data)


async def watch(request: web.Request) -> web.StreamResponse:
    """The namespace's changes as Server-Sent Events: a snapshot (or a resume), then join, renew, leave,
    expire; refusals (429, 503) come before the stream begins, as JSON like every other."""
    session = await request.app[REGISTRY].watch(_namespace_param(request), request.query.get("cookie"),
                                                request.headers.get("Last-Event-ID"), client_ip(request),
                                                alive=lambda: _connected(request))
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})  # proxies must not hold events back
        # the middleware adds the CORS headers once the handler returns, after a stream's headers are sent;
        # EventSource across origins needs only this one (app.py CORS_HEADERS has it too)
        response.headers["Access-Control-Allow-Origin"] = "*"
        await response.prepare(request)
        # EventSource waits `retry` ms before reconnecting; the default (about 3 s) would be most of the lag
        await response.write(b"retry: 1000\n\n")
        try:
            async for event in session.events():
                await response.write(sse(event))
        except ApiError as exc:  # Redis went away while the stream was being read: the client resumes later
            log.info("watch stream ended: %s", exc.message)
        except ConnectionError:
            raise ClientGone() from None
        return response
    finally:
        await session.close()


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def lookup(request: web.Request) -> web.Response:
    namespace, peer_id = _namespace_param(request), request.match_info["peer_id"]
    now_ms, stored = await request.app[REGISTRY].lookup(namespace, peer_id, client_ip(request))
    if stored is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"peer {peer_id} has no live registration in namespace {namespace!r}")
    return web.Response(body=record.peer_json(stored, now_ms), content_type="application/json")


async def deregister(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    peer_id = request.match_info["peer_id"]
    if "Authorization" in request.headers:
        removed = await registry.unregister_by_admin(request.headers["Authorization"], peer_id,
                                                     request.query.get("namespace"))
    else:
        removed = await registry.unregister_signed(lambda: read_body(request), peer_id, client_ip(request))
    if not removed:
        raise ApiError(ErrorCode.NOT_FOUND, f"peer {peer_id} has no live registration to remove")
    return web.json_response({"ID": peer_id, "Removed": removed})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """200 while Redis answers (reads work), saying whether registrations are taken too: a store past its
    high-water mark is still ready to serve discovery."""
    store = request.app[REGISTRY].store
    await store.ping()
    return web.json_response({"status": "ready", "store": "embedded" if request.app[SETTINGS].embedded else "redis",
                              "read": True, "write": await store.writable()})


async def metrics_endpoint(request: web.Request) -> web.Response:
    try:
        metrics.set_live_peers(await request.app[REGISTRY].store.live_peers())
    except ApiError:
        pass  # the rest of the metrics matter most exactly when Redis is down
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document.document(request.app[SETTINGS]))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/peers", register)
    app.router.add_get("/peers", discover)
    app.router.add_get("/peers/watch", watch)  # before /peers/{peer_id}: "watch" is never a peer ID
    app.router.add_get("/peers/{peer_id}", lookup)
    app.router.add_delete("/peers/{peer_id}", deregister)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
    app.on_startup.append(_start_watching)  # after the registry's start (cleanup_ctx runs first)
    app.on_shutdown.append(_stop_watching)  # before the store closes under the readers


async def _start_watching(app: web.Application) -> None:
    app[REGISTRY].watches.start()


async def _stop_watching(app: web.Application) -> None:
    """At shutdown (after the drain, which the open streams outlast): end every stream cleanly, so its client
    resumes on another replica with Last-Event-ID, then stop the readers."""
    await app[REGISTRY].watches.close()
