"""Real servers for the tests, and helpers around them: a redis-server on a free loopback port (never the
machine's own Redis on 6379), the service in-process behind a real HTTP server, and a snapshot of Redis
to prove that a refused request left it untouched."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from rendezvous.http.app import create_app
from rendezvous.settings import Limits, Settings

COOKIE_KEY = b"k" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (so P <= 55535)."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    """A redis-server process of the test suite's own."""

    def __init__(self, *extra: str, cluster: bool = False):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed; run the README's test command, which installs it")
        self.port = free_cluster_port() if cluster else free_port()
        if cluster:
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
                     "2000", *extra)
        self.dir = tempfile.mkdtemp(prefix="hp-redis-")
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        os.makedirs(self.dir, exist_ok=True)  # a stopped server may be started again
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis(port=self.port).ping():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def make_settings(redis_url: str | None, key_prefix: str = "hp", **limits) -> Settings:
    defaults = dict(rate_limit_ip_per_minute=100_000, rate_limit_peer_per_minute=100_000)
    return Settings(redis_url=redis_url, cookie_key=COOKIE_KEY, admin_token="admin-token-0123456789",
                    key_prefix=key_prefix, limits=Limits(**{**defaults, **limits}))


@contextlib.asynccontextmanager
async def serve(settings: Settings):
    """The service in this process, behind a real HTTP server on a loopback port."""
    async with TestClient(TestServer(create_app(settings))) as http:
        yield http


async def snapshot(client, prefix: str, bookkeeping: bool = True) -> dict:
    """Every key under `prefix` with its type and content.

    bookkeeping=False leaves out what moves on purpose even for a refused request: rate counters, used
    nonces and the metrics' namespace index."""
    state = {}
    async for key in client.scan_iter(match=f"{prefix}*"):
        name = key.decode()
        if not bookkeeping and (name.endswith((":rate", ":namespaces")) or ":nonce:" in name):
            continue
        kind = (await client.type(key)).decode()
        if kind == "zset":
            state[name] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            state[name] = await client.hgetall(key)
        else:
            state[name] = await client.get(key)
    return state
