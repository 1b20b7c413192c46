"""The libp2p rendezvous protocol, served by a rendezvous replica's libp2p door from the same Redis state as
another replica's HTTP API."""
from __future__ import annotations

import httpx
import multiaddr
import pytest
import trio
from libp2p.discovery.rendezvous.client import RendezvousClient as PyLibp2pRendezvousClient
from libp2p.discovery.rendezvous.discovery import RendezvousDiscovery
from libp2p.identity.identify import identify
from libp2p.peer.envelope import seal_record
from libp2p.peer.peer_record import PeerRecord
from libp2p.peer.peerinfo import PeerInfo

from shared.envelope import PEER_RECORD_DOMAIN, open_envelope
from shared.protobuf import bytes_field, parse_message, uvarint, varint_field
from tests.servers import COOKIE_KEY, free_port
from tests.p2p import eventually, new_identity, rendezvous_process, run
from shared.host import ListenPlan, build_host, running
from shared.rendezvous_client import RendezvousClient

PROTOCOL = "/rendezvous/1.0.0"
OK, E_INVALID_SPR, E_INVALID_COOKIE, E_NOT_AUTHORIZED, E_UNAVAILABLE = 0, 101, 103, 200, 400


@pytest.fixture
def shared_store(redis_server, key_prefix):
    """The environment of rendezvous replicas sharing one Redis."""
    return {"REDIS_URL": redis_server.url, "COOKIE_HMAC_KEY": COOKIE_KEY.decode(), "KEY_PREFIX": key_prefix}


class DoorReplica:
    """A rendezvous replica serving the libp2p door on a loopback port, with a known identity."""

    def __init__(self):
        self.identity = new_identity()
        self.port = free_port()

    def env(self) -> dict[str, str]:
        return {"LIBP2P_TCP_PORT": str(self.port), "LIBP2P_HOST": "127.0.0.1",
                "LIBP2P_IDENTITY_KEY": self.identity.encoded()}

    def multiaddrs(self) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/{self.port}"]


@pytest.fixture
def spec_agent(monkeypatch):
    """Our spec client's hosts run py-libp2p, whose identify says "py-libp2p/<version>", the agent of the
    legacy client; a spec client that has not registered on its connection is recognised by its agent, as
    go, rust and js clients are, so this one answers identify as a client of another library would."""
    monkeypatch.setattr(identify, "AGENT_VERSION", "holepunch-spec-test-client/1.0")


@pytest.fixture
def replicas(shared_store):
    """(the HTTP URL of one replica, the libp2p door of another), both on one Redis."""
    door = DoorReplica()
    with rendezvous_process(shared_store) as url, rendezvous_process({**shared_store, **door.env()}):
        yield url, door


# --- a spec client of our own, written from the spec's protobuf ------------------------------------------------

def register_msg(ns: str, record: bytes, ttl: int = 0) -> bytes:
    inner = bytes_field(1, ns.encode()) + bytes_field(2, record) + (varint_field(3, ttl) if ttl else b"")
    return varint_field(1, 0) + bytes_field(2, inner)


def discover_msg(ns: str = "", cookie: bytes = b"", limit: int = 0) -> bytes:
    inner = (bytes_field(1, ns.encode()) if ns else b"") + (varint_field(2, limit) if limit else b"") + (
        bytes_field(3, cookie) if cookie else b"")
    return varint_field(1, 3) + bytes_field(5, inner)


def unregister_msg(ns: str) -> bytes:
    return varint_field(1, 2) + bytes_field(4, bytes_field(1, ns.encode()))


class SpecStream:
    def __init__(self, stream):
        self.stream, self.buffer = stream, b""

    async def send(self, message: bytes) -> None:
        await self.stream.write(uvarint(len(message)) + message)

    async def receive(self) -> dict:
        while True:
            length, pos = 0, 0
            try:
                shift = 0
                while True:
                    byte = self.buffer[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                if len(self.buffer) >= pos + length:
                    message, self.buffer = self.buffer[pos:pos + length], self.buffer[pos + length:]
                    return parse_message(message)
            except IndexError:
                pass
            with trio.fail_after(5):
                self.buffer += await self.stream.read(65536)

    async def register(self, ns, record, ttl=0) -> tuple[int, int]:
        await self.send(register_msg(ns, record, ttl))
        response = parse_message((await self.receive())[3][0])
        return response.get(1, [0])[0], response.get(3, [0])[0]

    async def discover(self, ns="", cookie=b"", limit=0) -> tuple[int, list[dict], bytes]:
        await self.send(discover_msg(ns, cookie, limit))
        response = parse_message((await self.receive())[6][0])
        registrations = [parse_message(r) for r in response.get(1, [])]
        return response.get(3, [0])[0], registrations, response.get(2, [b""])[0]


def record_peer(record: bytes) -> str:
    """The peer a signed peer record was signed by, checked as any client would."""
    return open_envelope(record, PEER_RECORD_DOMAIN).peer_id


def signed_record(identity, addrs: list[str]) -> bytes:
    return seal_record(PeerRecord(identity.peer_id, [multiaddr.Multiaddr(a) for a in addrs]),
                       identity.key_pair.private_key).marshal_envelope()


async def client_host(nursery, door):
    identity = new_identity()
    host = build_host(identity, ListenPlan("127.0.0.1", 0, None, None))
    ready = trio.Event()

    async def keep():
        async with running(host, ListenPlan("127.0.0.1", 0, None, None)):
            ready.set()
            await trio.sleep_forever()
    nursery.start_soon(keep)
    await ready.wait()
    await host.connect(PeerInfo(door.identity.peer_id, [multiaddr.Multiaddr(door.multiaddrs()[0])]))
    return host, identity


async def open_spec(host, door) -> SpecStream:
    return SpecStream(await host.new_stream(door.identity.peer_id, [PROTOCOL]))


# --- the tests ---------------------------------------------------------------------------------------------

def test_py_libp2p_rendezvous_client_works_unchanged_and_shares_state_with_http(replicas):
    url, door = replicas
    async def body(nursery):
        host, identity = await client_host(nursery, door)
        client = PyLibp2pRendezvousClient(host, door.identity.peer_id)
        ttl = await client.register("py", 300)
        assert ttl == 300
        http = RendezvousClient(url, new_identity())
        listed = await http.discover("py")
        assert [p.peer_id for p in listed] == [str(identity.peer_id)]  # registered over libp2p, seen over HTTP
        worker = RendezvousClient(url, new_identity())
        await worker.register("py", ["/ip4/192.0.2.7/tcp/4001"], 120)  # and the other way round
        peers, _cookie = await client.discover("py")
        found = {str(p.peer_id): [str(a) for a in p.addrs] for p in peers}
        assert found[str(worker.identity.peer_id)] == ["/ip4/192.0.2.7/tcp/4001"]
        assert str(identity.peer_id) in found
        await client.unregister("py")  # the protocol has no answer to an unregister: wait for its effect
        await eventually(lambda: http.discover("py"), lambda listed: [p.peer_id for p in listed] == [
            str(worker.identity.peer_id)], what="the unregistration")
        for c in (http, worker):
            await c.aclose()
    run(body)


def test_a_spec_client_registers_a_signed_peer_record_and_discovers_with_cookies(replicas):
    url, door = replicas
    async def body(nursery):
        host, identity = await client_host(nursery, door)
        spec = await open_spec(host, door)
        record = signed_record(identity, ["/ip4/198.51.100.5/tcp/4001"])
        assert await spec.register("spec", record, 600) == (OK, 600)
        # the same stream serves the next requests
        status, registrations, cookie = await spec.discover("spec")
        assert status == OK and [r[2][0] for r in registrations] == [record]
        assert registrations[0][1][0] == b"spec" and 0 < registrations[0][3][0] <= 600
        # the cookie returns only what is new since
        assert (await spec.discover("spec", cookie))[1] == []
        worker = RendezvousClient(url, new_identity())
        await worker.register("spec", ["/ip4/192.0.2.9/tcp/4001"], 120)  # HTTP, with a signed record
        status, fresh, _ = await spec.discover("spec", cookie)
        assert status == OK
        assert [record_peer(r[2][0]) for r in fresh] == [str(worker.identity.peer_id)]
        # no namespace: every namespace
        status, everywhere, _ = await spec.discover("")
        assert status == OK and {r[1][0] for r in everywhere} >= {b"spec"}
        # over HTTP the record is there, as the peer signed it
        async with httpx.AsyncClient() as plain:
            http_peer = (await plain.get(f"{url}/peers", params={"namespace": "spec"})).json()["Peers"]
        assert any(p["ID"] == str(identity.peer_id) and p["Addrs"] == ["/ip4/198.51.100.5/tcp/4001"]
                   for p in http_peer)
        await spec.send(unregister_msg("spec"))
        await eventually(lambda: worker.discover("spec"),
                         lambda listed: str(identity.peer_id) not in {p.peer_id for p in listed},
                         what="the unregistration")
        await worker.aclose()
    run(body)


def test_bad_requests_get_the_spec_status_store_nothing_and_the_server_keeps_serving(replicas):
    url, door = replicas
    async def body(nursery):
        host, identity = await client_host(nursery, door)
        spec = await open_spec(host, door)
        # garbage where the signed peer record goes
        assert (await spec.register("bad", b"\xff\x01garbage"))[0] == E_INVALID_SPR
        # a record for another peer, validly signed by that peer
        other = new_identity()
        assert (await spec.register("bad", signed_record(other, ["/ip4/192.0.2.1/tcp/1"])))[0] == E_NOT_AUTHORIZED
        # our own record with its signature broken
        record = bytearray(signed_record(identity, ["/ip4/192.0.2.1/tcp/1"]))
        record[-1] ^= 1
        assert (await spec.register("bad", bytes(record)))[0] == E_INVALID_SPR
        # a forged cookie
        assert (await spec.discover("bad", b"forged-cookie-AAAAAAAAAAAAAAAAAAAAAAAAAAAA"))[0] == E_INVALID_COOKIE
        # garbage that is not even a message: our stream ends, nothing else does
        await spec.send(b"\x08\x00\x12\x05\xff\xff")
        # an oversized frame: the length is refused before the body is read, and the stream closed
        oversized = await open_spec(host, door)
        await oversized.stream.write(uvarint(10 * 1024 * 1024) + b"x" * 100)
        with trio.fail_after(5):
            with pytest.raises(Exception):
                while True:
                    if not await oversized.stream.read(100):
                        raise EOFError
        # nothing was stored, and a fresh stream is served normally
        http = RendezvousClient(url, new_identity())
        assert await http.discover("bad") == []
        fresh = await open_spec(host, door)
        good = signed_record(identity, ["/ip4/192.0.2.1/tcp/1"])
        assert (await fresh.register("bad", good))[0] == OK
        assert [p.peer_id for p in await http.discover("bad")] == [str(identity.peer_id)]
        await http.aclose()
    run(body)


def test_the_rendezvous_service_serves_the_protocol_on_its_own_store_when_given_a_tcp_port():
    service_identity = new_identity()
    port = free_port()
    env = {"LIBP2P_TCP_PORT": str(port), "LIBP2P_HOST": "127.0.0.1", "LIBP2P_IDENTITY_KEY": service_identity.encoded()}
    with rendezvous_process(env) as url:  # the embedded store: one process, both doors
        async def body(nursery):
            identity = new_identity()
            host = build_host(identity, ListenPlan("127.0.0.1", 0, None, None))
            async with running(host, ListenPlan("127.0.0.1", 0, None, None)):
                await host.connect(PeerInfo(service_identity.peer_id,
                                            [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")]))
                client = PyLibp2pRendezvousClient(host, service_identity.peer_id)
                assert await client.register("service-door", 120) == 120
                http = RendezvousClient(url, new_identity())
                assert [p.peer_id for p in await http.discover("service-door")] == [str(identity.peer_id)]
                await http.aclose()
        run(body)


def test_py_libp2p_rendezvous_client_discovering_only_gets_its_own_form(replicas):
    # py-libp2p's client never registers on this connection, so nothing it sent says which form it
    # reads; identify's agent version does.
    url, door = replicas
    async def body(nursery):
        workers = [RendezvousClient(url, new_identity()) for _ in range(3)]
        for n, worker in enumerate(workers):
            await worker.register("py-discover", [f"/ip4/192.0.2.{n + 1}/tcp/4001"], 300)
        host, _identity = await client_host(nursery, door)
        client = PyLibp2pRendezvousClient(host, door.identity.peer_id)
        peers, cookie = await client.discover("py-discover", limit=2)
        more, _ = await client.discover("py-discover", cookie=cookie)
        found = {str(p.peer_id): [str(a) for a in p.addrs] for p in peers + more}
        assert len(peers) == 2 and found == {
            str(w.identity.peer_id): [f"/ip4/192.0.2.{n + 1}/tcp/4001"] for n, w in enumerate(workers)}
        for worker in workers:
            await worker.aclose()
    run(body)


def test_py_libp2p_rendezvous_discovery_find_peers_over_the_door(replicas):
    url, door = replicas
    async def body(nursery):
        worker = RendezvousClient(url, new_identity())
        await worker.register("py-find", ["/ip4/192.0.2.40/tcp/4001"], 300)
        host, _identity = await client_host(nursery, door)
        discovery = RendezvousDiscovery(host, door.identity.peer_id)
        found = [peer async for peer in discovery.find_peers("py-find", limit=10)]
        assert [(str(p.peer_id), [str(a) for a in p.addrs]) for p in found] == [
            (str(worker.identity.peer_id), ["/ip4/192.0.2.40/tcp/4001"])]
        await worker.aclose()
    run(body)


def test_a_spec_client_that_only_discovers_gets_signed_peer_records(replicas, spec_agent):
    url, door = replicas
    async def body(nursery):
        worker = RendezvousClient(url, new_identity())
        await worker.register("spec-discover", ["/ip4/192.0.2.41/tcp/4001"], 300)
        host, _identity = await client_host(nursery, door)
        status, registrations, _ = await (await open_spec(host, door)).discover("spec-discover")
        assert status == OK and [record_peer(r[2][0]) for r in registrations] == [str(worker.identity.peer_id)]
        await worker.aclose()
    run(body)


def test_a_spec_register_without_a_ttl_is_granted_and_told_the_default(replicas):
    url, door = replicas
    async def body(nursery):
        host, identity = await client_host(nursery, door)
        spec = await open_spec(host, door)
        assert await spec.register("default-ttl", signed_record(identity, ["/ip4/198.51.100.6/tcp/4001"])) == (OK, 7200)
        async with httpx.AsyncClient() as plain:
            peers = (await plain.get(f"{url}/peers", params={"namespace": "default-ttl"})).json()["Peers"]
        assert [p["ID"] for p in peers] == [str(identity.peer_id)] and 7190 <= peers[0]["TTL"] <= 7200
    run(body)


def test_discovery_of_every_namespace_pages_through_each_registration_exactly_once(replicas, spec_agent):
    url, door = replicas
    # namespaces of 5, 1, 4 and 3 peers: pages of 2 and 3 end inside a namespace, at its end, and across two
    sizes = {"every-a": 5, "every-b": 1, "every-c": 4, "every-d": 3}
    async def body(nursery):
        registered = set()
        for namespace, size in sizes.items():
            for n in range(size):
                worker = RendezvousClient(url, new_identity())
                await worker.register(namespace, [f"/ip4/192.0.2.{len(registered) + 1}/tcp/4001"], 300)
                registered.add((namespace, str(worker.identity.peer_id)))
                await worker.aclose()
        host, _identity = await client_host(nursery, door)
        spec = await open_spec(host, door)
        for limit in (2, 3):
            seen, cookie = [], b""
            for _ in range(20):
                status, page, cookie = await spec.discover("", cookie, limit)
                assert status == OK and len(page) <= limit
                if not page:
                    break
                seen += [(r[1][0].decode(), record_peer(r[2][0])) for r in page]
            assert sorted(seen) == sorted(registered), f"limit {limit}"
    run(body)


def test_unregistering_over_the_door_is_counted_against_the_rate_limit(shared_store):
    """The protocol has no answer to Unregister, so it cost nothing before: now each is counted against the
    caller's address, and a flood of them ends in E_UNAVAILABLE for that caller's next request."""
    door = DoorReplica()
    with rendezvous_process({**shared_store, **door.env(), "RATE_LIMIT_IP_PER_MINUTE": "5"}):
        async def body(nursery):
            host, identity = await client_host(nursery, door)
            spec = await open_spec(host, door)
            for _ in range(5):
                await spec.send(unregister_msg("nothing-here"))
            status, _, _ = await spec.discover("nothing-here")
            assert status == E_UNAVAILABLE
        run(body)
