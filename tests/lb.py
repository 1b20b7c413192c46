"""The network around the rendezvous in the reliability drills (tests/test_drills.py, bench/drills.py), on
loopback and under trio: rendezvous replica processes, a TCP endpoint that moves and stalls as a Memorystore
endpoint does on failover, and an HTTP load balancer in front of the replicas."""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import h11
import httpx
import trio

from tests.servers import COOKIE_KEY, free_port

BIN = pathlib.Path(sys.executable).parent
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host", b"content-encoding",
              b"proxy-connection", b"te", b"upgrade"}


def replica_env(redis_url: str, key_prefix: str, **extra: str) -> dict[str, str]:
    """What every replica of one service shares; the rate limits are out of the way of the drills' load."""
    return {"REDIS_URL": redis_url, "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix,
            "RATE_LIMIT_IP_PER_MINUTE": "100000000", "RATE_LIMIT_PEER_PER_MINUTE": "100000000",
            "ADMIN_TOKEN": "admin-token-0123456789", "LOG_LEVEL": "WARNING", **extra}


class Replica:
    """A rendezvous process of the drill's own. Its log goes to a file: a pipe nobody reads fills up during an
    outage and then blocks the process, which is not the fault under study."""

    def __init__(self, env: dict[str, str], log_dir: str):
        self.port = free_port()
        # one process (no PROCESSES supervisor): a drill's SIGKILL must kill the server itself
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "PROCESSES": "1", **env}
        self.log_path = pathlib.Path(log_dir) / f"rendezvous-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "Replica":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "rendezvous")], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the rendezvous did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def rss_kib(self) -> int:
        return process_rss_kib(self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def process_rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextlib.contextmanager
def drill_dir():
    """A temporary directory for the drill's logs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hp-drill-") as path:
        yield path


class TcpProxy:
    """A TCP endpoint in front of one backend. `point_to` moves it and breaks every connection, as the address
    of a Memorystore STANDARD_HA endpoint moves to the promoted replica; `stall` holds back every byte that
    passes until `flow` (or until `drop`, which loses them), as asynchronous replication lags."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self._connections: set[trio.CancelScope] = set()
        self._flowing = trio.Event()
        self._flowing.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._relay, listeners)

    def point_to(self, port: int) -> None:
        self.target_port = port
        self.drop()

    def drop(self) -> None:
        for scope in list(self._connections):
            scope.cancel()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def flow(self) -> None:
        self._flowing.set()

    async def _relay(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            except OSError:  # the backend refused or is gone: the client sees its connection close
                pass
            finally:
                self._connections.discard(scope)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, pair: trio.CancelScope) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await self._flowing.wait()
                await sink.send_all(data)
        pair.cancel()  # one side closed: close the other, as a TCP endpoint would


class Backend:
    def __init__(self, url: str):
        self.url = url
        self.healthy = True
        self.in_flight = 0


class Balancer:
    """An HTTP load balancer in front of the replicas: round robin over the backends whose /healthz answers,
    each request on a fresh connection of its own. A backend that refuses the connection (stopped, or no
    longer accepting while it drains) is skipped and the request goes to the next: nothing reached it.

    With `resend_unanswered` (HAProxy's `retry-on empty-response`, Envoy's `retry_on: reset`), a request whose
    connection was closed or reset before any answer goes to the next backend too. That is safe for this API
    only because every write is signed with a nonce the service refuses to see twice: a resent registration
    is applied once or answered 409. Without it, such a request gets our 502: its fate is unknown."""

    HEALTH_INTERVAL = 0.2

    def __init__(self, urls: list[str], resend_unanswered: bool = True):
        self.backends = [Backend(url) for url in urls]
        self.resend_unanswered = resend_unanswered
        self.port = 0
        self.retried = 0  # connections refused, the request sent to the next backend
        self.resent: collections.Counter[str] = collections.Counter()  # requests left unanswered and sent again
        self.failures: collections.Counter[str] = collections.Counter()  # our own 502s and 503s, by cause
        self._turn = itertools.count()
        self.http = httpx.AsyncClient(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, url: str) -> None:
        self.backends.append(Backend(url))

    def backend(self, url: str) -> Backend:
        return next(b for b in self.backends if b.url == url)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._check_health)
                await nursery.start(trio.serve_listeners, self._serve, listeners)
                task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self.http.aclose()

    async def _check_health(self) -> None:
        async with httpx.AsyncClient(timeout=1.0) as probe:
            while True:
                for backend in list(self.backends):
                    try:
                        backend.healthy = (await probe.get(f"{backend.url}/healthz")).status_code == 200
                    except httpx.HTTPError:
                        backend.healthy = False
                await trio.sleep(self.HEALTH_INTERVAL)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            async with stream:
                while True:
                    request = await _next_event(conn, stream)
                    if not isinstance(request, h11.Request):
                        return
                    body = b""
                    while isinstance(event := await _next_event(conn, stream), h11.Data):
                        body += event.data
                    status, headers, content = await self._forward(request, body)
                    headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
                    headers.append((b"content-length", b"%d" % len(content)))
                    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                    await stream.send_all(conn.send(h11.Data(data=content)) + conn.send(h11.EndOfMessage()))
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()

    async def _forward(self, request: h11.Request, body: bytes) -> tuple[int, list, bytes]:
        healthy = [b for b in self.backends if b.healthy]
        start = next(self._turn)
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
        for i in range(len(healthy)):
            backend = healthy[(start + i) % len(healthy)]
            backend.in_flight += 1
            try:
                response = await self.http.request(request.method.decode(), backend.url + request.target.decode(),
                                                   headers=headers, content=body)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                self.retried += 1
                continue
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                cause = f"{type(exc).__name__}: {exc}"
                if self.resend_unanswered and i + 1 < len(healthy):
                    self.resent[cause] += 1
                    continue
                return self._failed(502, cause)
            except httpx.HTTPError as exc:
                return self._failed(502, f"{type(exc).__name__}: {exc}")
            finally:
                backend.in_flight -= 1
            return response.status_code, list(response.headers.raw), response.content
        return self._failed(503, "no backend left to try")

    def _failed(self, status: int, cause: str) -> tuple[int, list, bytes]:
        self.failures[cause] += 1
        body = json.dumps({"error": "bad_gateway" if status == 502 else "no_backend", "message": cause})
        return status, [(b"content-type", b"application/json")], body.encode()


async def _next_event(conn: h11.Connection, stream: trio.SocketStream):
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(65536))
    return event
