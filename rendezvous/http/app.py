"""The HTTP door: the aiohttp application's factory, its cross-cutting middlewares, and the lifecycle of
the registry under it (and of the libp2p door beside it, when LIBP2P_TCP_PORT is set)."""
from __future__ import annotations

import asyncio
import logging
import time
from aiohttp import web

from opentelemetry.trace import SpanKind

from rendezvous import metrics
from rendezvous.http import demo, routes
from rendezvous.registry import Registry
from rendezvous.settings import Settings
from rendezvous.store import open_store
from shared import tracing
from shared.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": f"Retry-After, {routes.COOKIE_HEADER}, {routes.MORE_HEADER}",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, Accept, traceparent",
    "Access-Control-Max-Age": "86400",
}
_HTTP_ERRORS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.BODY_TOO_LARGE}


def error_response(exc: ApiError) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.json_response(exc.body(), status=exc.kind.status, headers=headers)


def _as_api_error(exc: web.HTTPException, request: web.Request) -> ApiError:
    kind = _HTTP_ERRORS.get(exc.status, ErrorCode.INTERNAL)
    if kind is ErrorCode.BODY_TOO_LARGE:
        limit = request.app[routes.SETTINGS].limits.max_body_bytes
        return ApiError(kind, f"the request body is larger than {limit} bytes")
    if kind is ErrorCode.METHOD_NOT_ALLOWED:
        return ApiError(kind, f"{request.method} is not allowed on {request.path}")
    if kind is ErrorCode.NOT_FOUND:
        return ApiError(kind, f"no such route: {request.path}")
    return ApiError(kind, exc.reason)


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """Errors to JSON, CORS on every answer, and the request metrics."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    with tracing.span(f"{request.method} {route}", SpanKind.SERVER, headers=request.headers) as span:
        response = await _respond(request, handler)
        span.set_attributes({"http.request.method": request.method, "http.route": route,
                             "http.response.status_code": response.status})
    metrics.HTTP_REQUESTS.labels(route, request.method, response.status).inc()
    metrics.HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    return response


async def _respond(request: web.Request, handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204, headers=PREFLIGHT_HEADERS)
    else:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc)
            if exc.kind is ErrorCode.STORE_UNAVAILABLE:
                metrics.STORE_ERRORS.inc()
        except web.HTTPException as exc:
            response = error_response(_as_api_error(exc, request))
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(ApiError(ErrorCode.INTERNAL, "internal error; it has been logged"))
        response.headers.update(CORS_HEADERS)
    return response


FAILURE = web.AppKey("failure", list)  # what stopped the service from inside, for the CLI's exit status


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[observe], client_max_size=settings.limits.max_body_bytes)
    app[routes.SETTINGS] = settings
    app[FAILURE] = []

    async def registry_lifecycle(app: web.Application):
        store = await open_store(settings)
        app[routes.REGISTRY] = Registry(store, settings)
        yield
        await store.close()

    async def libp2p_door_lifecycle(app: web.Application):
        # imported here: a service without LIBP2P_TCP_PORT never loads py-libp2p (~1 s, ~80 MiB)
        from rendezvous.p2p.handler import start_door

        loop = asyncio.get_running_loop()

        def door_failed(exc: BaseException) -> None:  # in the door's thread
            loop.call_soon_threadsafe(_stop_service, app, f"the libp2p door failed: {exc!r}")

        door = await start_door(settings, app[routes.REGISTRY], door_failed)
        yield
        door.stop()

    app.cleanup_ctx.append(registry_lifecycle)
    if settings.libp2p_tcp_port is not None:
        app.cleanup_ctx.append(libp2p_door_lifecycle)
    routes.add_routes(app)
    demo.add_routes(app)
    return app


def _stop_service(app: web.Application, reason: str) -> None:
    """A part of the service died: stop the whole process loudly rather than serve on without it."""
    log.critical("stopping the service: %s", reason)
    app[FAILURE].append(reason)
    raise web.GracefulExit()  # out of the event loop: aiohttp's run_app cleans up and returns
