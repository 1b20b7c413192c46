"""Fixtures: one redis-server for the session, a 3-master Redis Cluster, and a key prefix per test, so
tests share one server without seeing each other's keys. Helpers live in servers.py, helpers.py, p2p.py."""
from __future__ import annotations

import itertools
import subprocess
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from tests.servers import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """Three masters on loopback, slots spread by redis-cli --cluster create."""
    nodes = [RedisServer(cluster=True) for _ in range(3)]
    for node in nodes:
        node.start()
    try:
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        client = redis.Redis(port=nodes[0].port)
        while client.cluster("info").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster never reached cluster_state:ok")
            time.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


_prefixes = itertools.count()


@pytest.fixture
def key_prefix() -> str:
    return f"t{next(_prefixes)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def raw_redis(redis_server):
    client = aioredis.Redis(port=redis_server.port)
    yield client
    await client.aclose()


