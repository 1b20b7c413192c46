"""The HTTP door: the aiohttp application's factory, its cross-cutting middlewares, and the lifecycle of
the registry under it (and of the libp2p door beside it, when LIBP2P_TCP_PORT is set)."""
from __future__ import annotations

import asyncio
import logging
import time
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

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
CLIENT_CLOSED_REQUEST = 499
_HTTP_ERRORS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.BODY_TOO_LARGE}


def error_response(exc: ApiError) -> web.Response:
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.json_response(exc.body(), status=exc.kind.status, headers=headers)


def _refuse_and_close(exc: ApiError) -> web.Response:
    """A refusal after which the connection is closed: the request's bytes can no longer be trusted or
    waited for."""
    response = error_response(exc)
    response.headers.update(CORS_HEADERS)
    response.force_close()
    return response


def _http_error_response(exc: web.HTTPException, request: web.Request) -> web.Response:
    if isinstance(exc, web.HTTPRequestTimeout):
        limit = request.app[routes.SETTINGS].limits.body_read_timeout
        return _refuse_and_close(ApiError(ErrorCode.REQUEST_TIMEOUT,
                                          f"the request body did not arrive within {limit} s"))
    response = error_response(_as_api_error(exc, request))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        # RFC 9110 15.5.6: a 405 must list what the resource takes; OPTIONS is answered on every path (above)
        response.headers["Allow"] = ", ".join(sorted({*exc.allowed_methods, "OPTIONS"}))
    return response


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
    with request.app[IN_FLIGHT], tracing.span(f"{request.method} {route}", SpanKind.SERVER,
                                              headers=request.headers) as span:
        response = await _respond(request, handler)
        span.set_attributes({"http.request.method": request.method, "http.route": route,
                             "http.response.status_code": response.status})
    metrics.HTTP_REQUESTS.labels(route, request.method, response.status).inc()
    metrics.HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    if response.status == ErrorCode.REQUEST_TIMEOUT.status:
        await _send_and_hang_up(request, response)
    elif request.app[IN_FLIGHT].stopping.is_set():
        response.force_close()  # draining: no next request on this connection, it goes to another replica
    return response


async def _send_and_hang_up(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer now and close the connection behind it. Left to aiohttp, a request whose body is
    unread keeps its connection for `lingering_time` (10 s) more, reading whatever the stalled client sends."""
    await response.prepare(request)
    await response.write_eof()  # the transport flushes what is buffered before it closes
    request.protocol.force_close()


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
            response = _http_error_response(exc, request)
        except routes.ClientGone:
            # nobody is left to answer: not a failure of ours. 499 is nginx's "client closed request", so the
            # metrics tell these apart from 5xx; aiohttp drops the answer quietly when it cannot send it.
            log.debug("the client went away during %s %s", request.method, request.path)
            response = web.Response(status=CLIENT_CLOSED_REQUEST)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(ApiError(ErrorCode.INTERNAL, "internal error; it has been logged"))
        response.headers.update(CORS_HEADERS)
    return response


class _DoorProtocol(RequestHandler):
    """aiohttp answers a request its parser refuses (a NUL in a header value, a malformed request line, a line
    too long) in RequestHandler.handle_error, before any route or middleware sees it: as text/plain without
    our CORS headers, and logged at ERROR with a traceback, which anyone on the internet can trigger at will.
    aiohttp has no hook for it (aio-libs/aiohttp#3287, #9882), so this subclass answers those with our JSON
    refusal instead, and logs them at DEBUG. Anything else (a 500 that escaped the middleware) is aiohttp's."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        log.debug("unparsable request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp does: an answer has begun, the connection is broken
            raise ConnectionError("an answer was already under way")
        metrics.HTTP_REQUESTS.labels("unparsed", "UNKNOWN", status).inc()
        first_line = str(exc.message).splitlines()[0][:120].rstrip(":") if exc.message else "unparsable"
        return _refuse_and_close(ApiError(ErrorCode.BAD_REQUEST, f"the request is not valid HTTP/1.1: {first_line}"))


class _DoorServer(web.Server):
    def __call__(self) -> RequestHandler:  # aiohttp builds RequestHandler here, and offers no other seam
        return _DoorProtocol(self, loop=self._loop, **self._kwargs)


def _serve_with_door_protocol(app: web.Application) -> None:
    """Make every runner of `app` (web.run_app in the CLI, TestServer in the tests) speak through
    _DoorProtocol: Application._make_handler is where each of them gets its Server."""
    make_server = app._make_handler

    def make_door_server(**kwargs) -> web.Server:
        server = make_server(**kwargs)
        return _DoorServer(server.request_handler, request_factory=server.request_factory,
                           handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs)

    app._make_handler = make_door_server  # type: ignore[method-assign]


FAILURE = web.AppKey("failure", list)  # what stopped the service from inside, for the CLI's exit status


class InFlight:
    """The requests being handled, so a stopping replica can let them finish (a drain) before aiohttp's
    shutdown, which stops reading request bodies at once (aio-libs/aiohttp#2298)."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = asyncio.Event()  # set by a signal, or by a part of the service that died
        self._idle = asyncio.Event()
        self._idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self._idle.clear()

    def __exit__(self, *exc) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight, for at most `timeout` seconds; returns whether none is."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("in_flight", InFlight)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[observe], client_max_size=settings.limits.max_body_bytes)
    app[routes.SETTINGS] = settings
    app[FAILURE] = []
    app[IN_FLIGHT] = InFlight()

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
    _serve_with_door_protocol(app)
    return app


def _stop_service(app: web.Application, reason: str) -> None:
    """A part of the service died: stop the whole process loudly rather than serve on without it."""
    log.critical("stopping the service: %s", reason)
    app[FAILURE].append(reason)
    app[IN_FLIGHT].stopping.set()  # the CLI drains and stops, then exits non-zero
