"""The HTTP routes: business only. Errors, metrics and CORS are the middlewares' (app.py)."""
from __future__ import annotations

import hmac
import json
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rendezvous import metrics
from rendezvous.cookie import CookieCodec
from rendezvous.envelope import public_key_from_peer_id
from rendezvous.errors import ApiError, ErrorCode
from rendezvous.openapi import OPENAPI
from rendezvous.registration import check_namespace, parse_registration, parse_unregistration
from rendezvous.settings import Settings
from rendezvous.store import Store, peer_fragment, remaining_seconds

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
COOKIES = web.AppKey("cookies", CookieCodec)

NDJSON = "application/x-ndjson"
COOKIE_HEADER = "X-Rendezvous-Cookie"
MORE_HEADER = "X-Rendezvous-More"


def client_ip(request: web.Request) -> str:
    """The caller's address; behind N trusted proxies, the Nth entry from the right of X-Forwarded-For."""
    hops = request.app[SETTINGS].trusted_proxy_hops
    if hops:
        forwarded = [part.strip() for part in request.headers.get("X-Forwarded-For", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.remote or "unknown"


def peer_object(record: bytes, now_ms: int) -> bytes:
    """A stored record as the peer object sent out, with its remaining TTL."""
    return b'%s,"TTL":%d}' % (peer_fragment(record), remaining_seconds(record, now_ms))


async def register(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await request.read()
    try:
        reg = parse_registration(body, settings.limits, settings.default_namespace)
        expiry, replaced = await request.app[STORE].register(reg, client_ip(request))
    except ApiError as exc:
        metrics.REGISTRATIONS.labels(exc.kind.code).inc()
        raise
    outcome = "renewed" if replaced else "created"
    metrics.REGISTRATIONS.labels(outcome).inc()
    log.debug("registered", extra={"peer": reg.peer_id, "namespace": reg.namespace, "outcome": outcome})
    return web.json_response({"ID": reg.peer_id, "Namespace": reg.namespace, "TTL": reg.ttl, "ExpiresAt": expiry},
                             status=200 if replaced else 201)


def _namespace_param(request: web.Request) -> str:
    return check_namespace(request.query.get("namespace", request.app[SETTINGS].default_namespace))


def _limit_param(request: web.Request) -> int:
    limits = request.app[SETTINGS].limits
    raw = request.query.get("limit")
    if raw is None:
        return limits.discover_limit_default
    if not raw.isdigit() or not 1 <= int(raw) <= limits.discover_limit_max:
        raise ApiError(ErrorCode.INVALID_LIMIT, f"limit must be an integer from 1 to {limits.discover_limit_max}")
    return int(raw)


async def discover(request: web.Request) -> web.StreamResponse:
    namespace = _namespace_param(request)
    limit = _limit_param(request)
    cookies = request.app[COOKIES]
    cursor = cookies.decode(namespace, request.query.get("cookie"))
    page = await request.app[STORE].discover(namespace, cursor, limit, client_ip(request))
    peers = [peer_object(record, page.now_ms) for record in page.records]
    cookie = cookies.encode(namespace, page.cursor)
    headers = {COOKIE_HEADER: cookie, MORE_HEADER: "true" if page.more else "false"}
    if NDJSON in request.headers.get("Accept", ""):
        body = b"".join(peer + b"\n" for peer in peers)
        return web.Response(body=body, content_type=NDJSON, headers=headers)
    body = b'{"Namespace":%s,"Peers":[%s],"Cookie":"%s","More":%s}' % (
        json.dumps(namespace).encode(), b",".join(peers), cookie.encode(), b"true" if page.more else b"false")
    return web.Response(body=body, content_type="application/json", headers=headers)


async def lookup(request: web.Request) -> web.Response:
    namespace = _namespace_param(request)
    peer_id = request.match_info["peer_id"]
    public_key_from_peer_id(peer_id)  # a clear error for a malformed ID
    now_ms, record = await request.app[STORE].lookup(namespace, peer_id, client_ip(request))
    if record is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"peer {peer_id} has no live registration in namespace {namespace!r}")
    return web.Response(body=peer_object(record, now_ms), content_type="application/json")


async def deregister(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    store = request.app[STORE]
    peer_id = request.match_info["peer_id"]
    public_key_from_peer_id(peer_id)
    if "Authorization" in request.headers:
        _check_admin(request, settings)
        namespace = request.query.get("namespace")
        if namespace is not None:
            check_namespace(namespace)
        by = "admin"
    else:
        body = await request.read()
        if not body:
            raise ApiError(ErrorCode.UNAUTHORIZED, "deregistration needs a signed request from the peer, "
                           "or an operator's admin token in 'Authorization: Bearer'")
        unreg = parse_unregistration(body, settings.limits)
        if unreg.peer_id != peer_id:
            raise ApiError(ErrorCode.PEER_ID_MISMATCH, f"the request is signed by {unreg.peer_id}, not by {peer_id}")
        await store.admit_unregistration(peer_id, unreg.nonce, client_ip(request))
        namespace, by = unreg.namespace, "peer"
    removed = await store.unregister(peer_id, namespace)
    if not removed:
        where = f"namespace {namespace!r}" if namespace else "any namespace"
        raise ApiError(ErrorCode.NOT_FOUND, f"peer {peer_id} has no live registration in {where}")
    metrics.DEREGISTRATIONS.labels(by).inc()
    log.info("deregistered", extra={"peer": peer_id, "namespaces": removed, "by": by})
    return web.json_response({"ID": peer_id, "Removed": removed})


def _check_admin(request: web.Request, settings: Settings) -> None:
    scheme, _, token = request.headers["Authorization"].partition(" ")
    if settings.admin_token is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "admin deregistration is disabled (no ADMIN_TOKEN configured)")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        raise ApiError(ErrorCode.UNAUTHORIZED, "the admin token is wrong")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[STORE].ping()
    return web.json_response({"status": "ready", "store": "embedded" if request.app[SETTINGS].embedded else "redis"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    try:
        metrics.set_live_peers(await request.app[STORE].live_peers())
    except ApiError:
        pass  # the rest of the metrics matter most exactly when Redis is down
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/peers", register)
    app.router.add_get("/peers", discover)
    app.router.add_get("/peers/{peer_id}", lookup)
    app.router.add_delete("/peers/{peer_id}", deregister)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
