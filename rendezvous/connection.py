"""How the store reaches Redis: a batch of raw commands in, their replies out, in one round trip.

- `RespConnection`, for a single Redis node (Memorystore for Redis): one connection on which every
  concurrent request's commands are pipelined as they come, with hiredis parsing the replies. redis-py
  spends several times the CPU per call (connection-pool checkout, a task per pipeline, Python-side
  command packing: see the README's figures), and this is the service's hot path.
- `RedisPyBackend` wraps a redis-py client: a Redis Cluster (slot routing) or the embedded fakeredis store.

Both raise redis-py's exception types, so the store handles every fault one way. A fault's warning is
logged through `RepeatedWarnings`, so an outage writes a line a second, not one per refused request.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any, Sequence

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
# aliased: asyncio.timeout raises the built-in TimeoutError, and redis-py's names would shadow the built-ins
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.logs import RepeatedWarnings

log = logging.getLogger(__name__)

Command = Sequence[Any]  # ("EVALSHA", sha, 3, key, ...): str, bytes and int arguments


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % arg
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def pack(commands: Sequence[Command]) -> bytes:
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encode(arg)
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _as_exception(reply: Any) -> Any:
    if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
        return NoScriptError(str(reply))
    return reply


class _Protocol(asyncio.Protocol):
    """Matches replies to batches in the order the batches were written (Redis answers in order)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future, int, list]] = collections.deque()
        self.lost = False
        # The batches sent since the event loop last came round, written as one: one system call, and one
        # read for Redis, for every request that asked in that turn of the loop.
        self.unsent: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, expected, replies = self.waiting[0]
            replies.append(_as_exception(reply))
            if len(replies) == expected:
                self.waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_waiting(f"connection to Redis lost ({exc or 'closed'})")

    def abort(self, reason: str) -> None:
        """Drop the connection now: no later byte on it may be read as a reply, and nothing buffered for a
        stalled Redis is kept (close() would wait for it to be flushed)."""
        self._fail_waiting(reason)
        self.transport.abort()

    def _fail_waiting(self, reason: str) -> None:
        self.lost = True
        error = RedisConnectionError(reason)
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def send(self, commands: Sequence[Command]) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append((future, len(commands), []))
        if not self.unsent:
            loop.call_soon(self._write_unsent)
        self.unsent.append(pack(commands))
        return future

    def _write_unsent(self) -> None:
        data, self.unsent = b"".join(self.unsent), []
        if not self.lost and not self.transport.is_closing():  # else their requests were failed already
            self.transport.write(data)


class RespConnection:
    """A single-node Redis client that reconnects by itself after a fault."""

    RECONNECT_BACKOFF_MIN = 0.05
    # The service promises to answer again within 0.5 s of Redis's return, so the backoff stays below that;
    # a connection attempt a refused or silent address answers costs next to nothing, even for hours.
    RECONNECT_BACKOFF_MAX = 0.4

    def __init__(self, url: str, timeout: float = 2.0):
        self.options = parse_url(url)
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()
        # after a failed connect, requests fail at once until the backoff passes, instead of each one
        # waiting on a dead address in turn
        self._backoff = 0.0
        self._next_attempt = 0.0
        self._attempts = 0  # connection attempts made, so a request knows one ended while it waited
        self._failure: str | None = None  # why the last attempt failed; None once connected
        self._warnings = RepeatedWarnings(log)

    async def execute(self, commands: Sequence[Command]) -> list:
        """Send `commands` in one round trip; -> their replies, a Redis error reply as an exception value.

        Raises RedisConnectionError when Redis cannot be reached, RedisTimeoutError when it does not answer
        within `timeout` (a stalled or paused Redis). After a timeout the connection is dropped, since Redis
        answers in order and a late reply would be taken for a later request's. The commands may still have
        been applied, though: they can sit in Redis's socket buffer and run when it resumes. So an error
        after a timeout means "unknown", not "not done". That is safe for this service: a client retries
        with a newly signed request (a new nonce, so no replay refusal), and a registration supersedes the
        peer's previous one in its namespace.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                return await protocol.send(commands)
        except TimeoutError:  # the built-in one
            protocol.abort(f"Redis did not answer within {self.timeout} s; connection dropped")
            raise RedisTimeoutError(f"Redis did not answer within {self.timeout} s") from None

    async def _connect(self) -> _Protocol:
        attempts_seen = self._attempts
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            # Requests queued behind a failed attempt share its outcome: trying again once per waiting request
            # would double the backoff hundreds of times in a few milliseconds.
            if self._attempts != attempts_seen and self._failure is not None:
                raise RedisConnectionError(f"cannot connect to Redis: {self._failure}")
            if loop.time() < self._next_attempt:
                raise RedisConnectionError(f"cannot connect to Redis: {self._failure}; next attempt in "
                                           f"{self._next_attempt - loop.time():.2f} s")
            self._attempts += 1
            protocol = None
            try:
                async with asyncio.timeout(self.timeout):
                    protocol = await self._open()
                    await self._handshake(protocol)
            except (OSError, TimeoutError, RedisConnectionError) as exc:
                if protocol is not None:
                    protocol.abort("connection set-up failed")
                self._failure = str(exc) or type(exc).__name__
                self._backoff = min(max(self._backoff * 2, self.RECONNECT_BACKOFF_MIN), self.RECONNECT_BACKOFF_MAX)
                self._next_attempt = loop.time() + self._backoff
                self._warnings.warning("connect", "redis: cannot connect (%s); retrying in %.2f s", self._failure,
                                       self._backoff)
                raise RedisConnectionError(f"cannot connect to Redis: {self._failure}") from None
            if self._backoff:
                log.info("redis: connected again")
            self._backoff = 0.0
            self._failure = None
            self._protocol = protocol
            return protocol

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self.options
        if options.get("connection_class") is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(_Protocol, options["path"])
        else:
            context = self._tls_context() if options.get("connection_class") is SSLConnection else None
            _, protocol = await loop.create_connection(_Protocol, options.get("host", "localhost"),
                                                       options.get("port", 6379), ssl=context)
        return protocol

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.options.get("ssl_ca_certs"))
        if self.options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.options.get("ssl_check_hostname") in (False, "false", "False"):
            context.check_hostname = False  # Memorystore's certificate names no hostname we dial by IP
        return context

    async def _handshake(self, protocol: _Protocol) -> None:
        commands: list[Command] = []
        if self.options.get("password"):
            user = self.options.get("username")
            commands.append(("AUTH", user, self.options["password"]) if user else ("AUTH", self.options["password"]))
        if self.options.get("db"):
            commands.append(("SELECT", self.options["db"]))
        if commands:
            for reply in await protocol.send(commands):
                if isinstance(reply, Exception):
                    raise RedisConnectionError(f"Redis refused the connection set-up: {reply}")

    async def script_load(self, source: str) -> str:
        [sha] = await self.execute([("SCRIPT", "LOAD", source)])
        if isinstance(sha, Exception):
            raise sha
        return sha.decode()

    async def ping(self) -> None:
        [reply] = await self.execute([("PING",)])
        if isinstance(reply, Exception):
            raise reply

    async def aclose(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


class RedisPyBackend:
    """The same interface over a redis-py client: a RedisCluster, or fakeredis for the embedded store."""

    def __init__(self, client: Any):
        self.client = client
        self.cluster = hasattr(client, "get_node_from_key")

    async def execute(self, commands: Sequence[Command]) -> list:
        if self.cluster:
            # redis-py refuses EVALSHA in Cluster pipelines; each command goes to its slot's node, concurrently
            return await asyncio.gather(*(self.client.execute_command(*c) for c in commands), return_exceptions=True)
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    async def script_load(self, source: str) -> str:
        return await self.client.script_load(source)  # on a Cluster: every primary

    async def ping(self) -> None:
        await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()
