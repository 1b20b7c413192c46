"""The browser demo's page, its bundle (built by esbuild from web/), and its configuration: which namespace
the page uses and which relay WebSocket addresses it may dial, taken from DEMO_RELAY_ADDRS or else from the
relays' own registrations (namespace RELAY_NAMESPACE), so no address is ever written into the page."""
from __future__ import annotations

import os
import pathlib

from aiohttp import web

from rendezvous import api
from rendezvous.cookie import START
from rendezvous.store import peer_fields

WEB_DIR = pathlib.Path(os.environ.get("WEB_DIR", pathlib.Path(__file__).resolve().parents[1] / "web"))
DEMO_NAMESPACE = os.environ.get("DEMO_NAMESPACE", "browser-demo")
RELAY_NAMESPACE = os.environ.get("RELAY_NAMESPACE", "relays")
CONFIGURED_RELAYS = [a.strip() for a in os.environ.get("DEMO_RELAY_ADDRS", "").split(",") if a.strip()]
ICE_SERVERS = [{"urls": url.strip()} for url in os.environ.get("DEMO_ICE_SERVERS", "").split(",") if url.strip()]
NOT_BUILT = "The demo page is not built: run scripts/build-web.sh (scripts/run.sh does).\n"


async def page(request: web.Request) -> web.StreamResponse:
    return _file(WEB_DIR / "index.html", "text/html")


async def bundle(request: web.Request) -> web.StreamResponse:
    return _file(WEB_DIR / "dist" / "app.js", "text/javascript")


def _file(path: pathlib.Path, content_type: str) -> web.StreamResponse:
    if not path.exists():
        return web.Response(status=503, text=NOT_BUILT)
    return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})


async def config(request: web.Request) -> web.Response:
    relays = CONFIGURED_RELAYS or await _registered_ws_relays(request)
    return web.json_response({"namespace": DEMO_NAMESPACE, "relays": relays, "iceServers": ICE_SERVERS})


async def _registered_ws_relays(request: web.Request) -> list[str]:
    store = request.app[api.STORE]
    listed = await store.discover(RELAY_NAMESPACE, START, 20, api.client_ip(request))
    found = []
    for record in listed.records:
        peer = peer_fields(record)
        found += [f"{addr}/p2p/{peer['ID']}" for addr in peer["Addrs"] if "/ws" in addr and "/p2p/" not in addr]
    return found


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/app.js", bundle)
    app.router.add_get("/demo/config", config)
