"""A small HTTP/1.1 server on trio for the worker's and the relay's own endpoints (/healthz, /status,
/metrics), on $PORT as Cloud Run requires of every container. GET only; h11 does the parsing.
"""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

import h11
import prometheus_client
import trio

log = logging.getLogger("worker.httpd")

Reply = tuple[int, str, bytes]
Route = Callable[[], Reply | Awaitable[Reply]]
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0


def json_reply(document: object, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(document, indent=1, default=str).encode()


def metrics_reply() -> Reply:
    return 200, prometheus_client.CONTENT_TYPE_LATEST, prometheus_client.generate_latest()


async def serve(host: str, port: int, routes: dict[str, Route], *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("http endpoints listening", extra={"host": host, "port": bound, "paths": sorted(routes)})
    task_status.started(bound)
    await trio.serve_listeners(lambda stream: _handle(stream, routes), listeners)


async def _handle(stream: trio.SocketStream, routes: dict[str, Route]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    status, content_type, body = await _answer(event, routes)
                    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                               ("Connection", "close")]
                    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                    await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                return
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _answer(request: h11.Request, routes: dict[str, Route]) -> Reply:
    path = request.target.decode("latin-1").split("?", 1)[0]
    if request.method not in (b"GET", b"HEAD"):
        return json_reply({"error": "method_not_allowed", "message": "only GET is served here"}, 405)
    route = routes.get(path)
    if route is None:
        return json_reply({"error": "not_found", "message": f"no endpoint at {path}; try {sorted(routes)}"}, 404)
    try:
        reply = route()
        if not isinstance(reply, tuple):
            reply = await reply
        return reply
    except Exception:
        log.exception("http endpoint failed", extra={"path": path})
        return json_reply({"error": "internal", "message": "the endpoint failed; see the logs"}, 500)
