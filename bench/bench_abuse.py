"""What a legitimate peer sees while attackers fill, lock and hijack the rendezvous.

    .venv/bin/python bench/bench_abuse.py [--attackers 10]

Time is compressed with small limits (a namespace of 300, a source quota of 1,000, Redis of 24 MB) and the
attackers are real sources: each dials from its own loopback address (127.0.1.N; Linux routes all of
127.0.0.0/8 to loopback), so the service counts them as the different IPs they would be. Three attacks,
each followed by a legitimate peer from yet another address:

- lock-out: every attacker registers all it can in the namespace the legitimate peers use;
- relay hijack: twenty fake relays register LAN WebSocket and metadata addresses in RELAY_NAMESPACE;
- fill: every attacker registers the largest registrations it may, in many namespaces, until refused.

It prints, per attack: can the peer register, on which page of discovery it is, what Redis holds against
its high-water mark, what the demo page is given, and (after all three) whether two real workers still find
the real relay and connect.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import nacl.signing  # noqa: E402
import redis  # noqa: E402

from shared.identity import load_identity  # noqa: E402
from shared.registration import sign_registration  # noqa: E402
from shared.envelope import peer_id_from_public_key  # noqa: E402
from tests.p2p import BIN, rendezvous_process  # noqa: E402
from tests.servers import RedisServer, free_port  # noqa: E402

COOKIE = "c" * 40
NAMESPACE_CAP, SOURCE_QUOTA, HIGH_WATER = 300, 1000, 80
LEGIT = "127.0.2.1"


def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(os.urandom(32))


def client(url: str, source: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=httpx.AsyncHTTPTransport(local_address=source), timeout=10)


async def flood(url: str, source: str, namespaces: list[str], addrs: list[str], ttl: int = 72 * 3600) -> dict:
    """Register until every namespace refuses; -> {status: count}."""
    seen: dict[int, int] = {}
    async with client(url, source) as http:
        for namespace in namespaces:
            while True:
                status = (await http.post("/peers", content=sign_registration(key(), namespace, addrs, ttl))).status_code
                seen[status] = seen.get(status, 0) + 1
                if status != 201:
                    break
    return seen


async def legit_view(url: str, namespace: str = "default") -> str:
    peer = key()
    async with client(url, LEGIT) as http:
        answer = await http.post("/peers", content=sign_registration(peer, namespace, ["/ip4/198.51.100.9/tcp/4001"],
                                                                     120))
        found_on, cookie, number = None, None, 0
        while found_on is None:
            number += 1
            page = (await http.get("/peers", params={"namespace": namespace, "limit": 100,
                                                     **({"cookie": cookie} if cookie else {})})).json()
            if peer_id_from_public_key(bytes(peer.verify_key)) in {p["ID"] for p in page["Peers"]}:
                found_on = number
            cookie = page["Cookie"]
            if not page["More"]:
                break
        reads = (await http.get("/peers", params={"namespace": "elsewhere"})).status_code
    return (f"register {answer.status_code} {answer.json().get('error', '')}, found on page {found_on} of 100 "
            f"peers each, other reads answer {reads}")


def memory(r: redis.Redis) -> str:
    info = r.info("memory")
    used, limit = int(info["used_memory"]), int(info["maxmemory"])
    return f"Redis {used / 2**20:.1f} of {limit / 2**20:.0f} MiB ({100 * used / limit:.0f}%, high water {HIGH_WATER}%)"


async def attacks(url: str, attackers: list[str], r: redis.Redis) -> None:
    print(f"lock-out: each of {len(attackers)} attackers registers all it can in 'default' (cap {NAMESPACE_CAP})")
    results = await asyncio.gather(*(flood(url, a, ["default"], ["/ip4/198.51.100.66/tcp/1"]) for a in attackers))
    print(f"  answers {_total(results)}")
    print(f"  a legitimate peer: {await legit_view(url, 'default')}")

    print("relay hijack: twenty fake relays register in 'relays' with a 72 h TTL")
    async with client(url, attackers[0]) as http:
        for n in range(20):
            body = sign_registration(key(), "relays", [f"/ip4/192.168.1.{n + 1}/tcp/80/ws",
                                                        f"/ip4/169.254.169.254/tcp/{80 + n}"], 72 * 3600)
            await http.post("/peers", content=body)
        config = (await http.get("/demo/config")).json()
    print(f"  the demo page is given: {config['relays']}")

    big = [f"/dns4/{'a' * 100}{i}.example.com/tcp/4001" for i in range(12)]  # ~1.5 KB stored, under the bound
    print("fill: each attacker registers the largest registrations it may, in 100 namespaces, TTL 72 h")
    started = time.monotonic()
    results = await asyncio.gather(*(flood(url, a, [f"fill-{a}-{n}" for n in range(100)], big) for a in attackers))
    print(f"  answers {_total(results)} in {time.monotonic() - started:.1f} s; {memory(r)}")
    print(f"  a legitimate peer: {await legit_view(url, 'default')}")


async def the_limit(url: str, r: redis.Redis) -> None:
    """Beyond the issue's attacks: many fresh addresses, ten registrations each past the high-water mark,
    reach the hard mark, where new registrations stop for everyone until registrations expire."""
    big = [f"/dns4/{'a' * 100}{i}.example.com/tcp/4001" for i in range(12)]
    results = await asyncio.gather(*(flood(url, f"127.0.3.{n + 1}", [f"late-{n}"], big) for n in range(100)))
    print(f"the limit: 100 more attacker addresses answer {_total(results)}; {memory(r)}")
    async with client(url, LEGIT) as http:
        ready = (await http.get("/readyz")).json()
    print(f"  /readyz: {ready}; a legitimate peer: {await legit_view(url, 'default')}")


def _total(results: list[dict]) -> dict:
    totals: dict[int, int] = {}
    for result in results:
        for status, count in result.items():
            totals[status] = totals.get(status, 0) + count
    return dict(sorted(totals.items()))


def start_relay(url: str, relay_key: str) -> subprocess.Popen:
    """The real relay, registering itself (TCP and WebSocket) at the rendezvous."""
    return subprocess.Popen([str(BIN / "relay")], env={
        **os.environ, "IDENTITY_KEY": relay_key, "LISTEN_HOST": "127.0.0.1", "TCP_PORT": str(free_port()),
        "WS_PORT": str(free_port()), "QUIC_PORT": "off", "PORT": str(free_port()), "RENDEZVOUS_SERVICE_URL": url,
        "HTTP_HOST": "127.0.0.1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def workers_connect(url: str, relay_id: str, tmp: pathlib.Path) -> str:
    """Two real workers, after the attacks: do they still find the real relay and meet?"""
    procs, ports = [], []
    for n in range(2):
        ports.append(free_port())
        procs.append(subprocess.Popen([str(BIN / "worker")], env={
            **os.environ, "IDENTITY_FILE": str(tmp / f"w{n}.key"), "LISTEN_HOST": "127.0.0.1", "TCP_PORT": "0",
            "WS_PORT": "off", "PORT": str(ports[-1]), "HTTP_HOST": "127.0.0.1", "RENDEZVOUS_SERVICE_URL": url,
            "NAMESPACE": "default", "RELAY_PEER_IDS": relay_id, "DIAL_SCOPE": "all", "DISCOVER_INTERVAL": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                states = [httpx.get(f"http://127.0.0.1:{p}/status", timeout=2).json() for p in ports]
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            ids = [s["peer_id"] for s in states]
            paths = [next((r["path"] for r in s["peers"] if r["peer_id"] == other
                           and r["path"] in ("direct", "relayed", "hole-punched")), None)
                     for s, other in zip(states, reversed(ids))]
            relays = [list(s["relays"]) for s in states]
            if all(paths):
                return f"connected ({paths[0]}), reserved at {relays[0]} (the real relay: {relay_id in relays[0]})"
            time.sleep(0.5)
        return (f"not connected within 60 s: registered {[bool(s['registered_addrs']) for s in states]}, "
                f"relays {relays}, paths {[s['paths'] for s in states]}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attackers", type=int, default=10)
    args = parser.parse_args()
    attackers = [f"127.0.1.{n + 1}" for n in range(args.attackers)]
    server = RedisServer("--maxmemory", "24mb", "--maxmemory-policy", "noeviction").start()
    with tempfile.TemporaryDirectory(prefix="hp-abuse-") as tmp:
        relay = load_identity(None, str(pathlib.Path(tmp) / "relay.key"))
        env = {"REDIS_URL": server.url, "COOKIE_HMAC_KEY": COOKIE, "MAX_PEERS_PER_NAMESPACE": str(NAMESPACE_CAP),
               "MAX_REGISTRATIONS_PER_SOURCE": str(SOURCE_QUOTA), "REDIS_HIGH_WATER_PERCENT": str(HIGH_WATER),
               "RATE_LIMIT_IP_PER_MINUTE": "100000", "RATE_LIMIT_PEER_PER_MINUTE": "100000",
               "RELAY_PEER_IDS": str(relay.peer_id)}
        try:
            with rendezvous_process(env) as url:
                relay_proc = start_relay(url, relay.encoded())
                try:
                    time.sleep(3)  # its first registration
                    r = redis.Redis(port=server.port)
                    asyncio.run(attacks(url, attackers, r))
                    outcome = workers_connect(url, str(relay.peer_id), pathlib.Path(tmp))
                    print(f"workers after the attacks: {outcome}")
                    asyncio.run(the_limit(url, r))
                finally:
                    relay_proc.terminate()
                    relay_proc.wait(10)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
