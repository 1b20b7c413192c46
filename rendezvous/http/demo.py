"""The browser demo's page, its bundle (built by esbuild from web/), and its configuration: which namespace
the page uses and which relay WebSocket addresses it may dial, taken from DEMO_RELAY_ADDRS or else from the
relays' own registrations (namespace RELAY_NAMESPACE), so no address is ever written into the page."""
from __future__ import annotations

import pathlib

from aiohttp import web

from rendezvous import record
from rendezvous.http import routes

NOT_BUILT = "The demo page is not built: run scripts/build-web.sh (scripts/run.sh does).\n"

# What web/index.html and its bundle really use, and nothing more: the bundle from this origin as a module
# script; the inline <style> block; the data: favicon; fetch() to this rendezvous (/demo/config, /peers) and
# WebSockets to relays whose addresses come from the config at run time, so any ws:/wss: host (WebRTC itself
# is not a fetch: CSP has no say over RTCPeerConnection). frame-ancestors: no one may frame the page
# (clickjacking); X-Frame-Options says the same to browsers older than CSP 2.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'unsafe-inline'",
    "img-src data:",
    "connect-src 'self' ws: wss:",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Frame-Options": "DENY",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


async def page(request: web.Request) -> web.StreamResponse:
    return _file(pathlib.Path(request.app[routes.SETTINGS].web_dir) / "index.html", "text/html")


async def bundle(request: web.Request) -> web.StreamResponse:
    return _file(pathlib.Path(request.app[routes.SETTINGS].web_dir) / "dist" / "app.js", "text/javascript")


def _file(path: pathlib.Path, content_type: str) -> web.StreamResponse:
    if not path.exists():
        return web.Response(status=503, text=NOT_BUILT, headers=PAGE_HEADERS)
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache", **PAGE_HEADERS})


async def config(request: web.Request) -> web.Response:
    settings = request.app[routes.SETTINGS]
    relays = list(settings.demo_relay_addrs) or await _registered_ws_relays(request)
    return web.json_response({"namespace": settings.demo_namespace, "relays": relays,
                              "iceServers": [{"urls": url} for url in settings.demo_ice_servers]})


async def _registered_ws_relays(request: web.Request) -> list[str]:
    """The WebSocket addresses of relays registered in RELAY_NAMESPACE that RELAY_PEER_IDS trusts: anyone can
    register there, so the trusted ones are looked up by ID, and no number of strangers pushes them out."""
    settings, registry, ip = request.app[routes.SETTINGS], request.app[routes.REGISTRY], routes.client_ip(request)
    if settings.relay_peer_ids is None:
        records = [stored for _, stored in (await registry.discover(settings.relay_namespace, None, 20, ip)).records]
    else:
        records = [stored for peer in settings.relay_peer_ids
                   if (stored := (await registry.lookup(settings.relay_namespace, peer, ip))[1]) is not None]
    addrs = []
    for stored in records:
        peer = record.peer_fields(stored)
        addrs += [f"{addr}/p2p/{peer['ID']}" for addr in peer["Addrs"] if "/ws" in addr and "/p2p/" not in addr]
    return addrs


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/app.js", bundle)
    app.router.add_get("/demo/config", config)
