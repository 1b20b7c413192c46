"""Workers dial only what makes sense, and do bounded work: a registration is anyone's to write, so its
addresses must not turn a worker into a port scanner of its own machine or network, and a namespace full
of them must not stop a worker discovering anyone."""
from __future__ import annotations

import ipaddress
import os

import httpx
import nacl.signing
import pytest
import trio

from shared.registration import sign_registration
from tests.p2p import rendezvous_process, run, start_worker, until, worker_settings
from worker.dialable import DialPolicy, DialScope

LAB = (ipaddress.ip_network("198.51.100.0/24"),)


@pytest.mark.parametrize("addr", [
    "/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001", "/ip6/::ffff:127.0.0.1/tcp/4001",
    "/ip4/169.254.169.254/tcp/80", "/ip6/fe80::1/tcp/4001", "/ip6/fd00:ec2::254/tcp/80", "/ip4/0.0.0.0/tcp/4001",
    "/dns4/localhost/tcp/4001", "/dns/metadata.google.internal/tcp/80", "/dns4/redis.c.project.internal/tcp/6379",
    "/dns6/ip6-localhost.localhost/tcp/1", "/ip4/10.0.0.1/tcp/6379", "/ip4/192.168.1.1/tcp/80", "/ip4/100.64.0.1/tcp/1",
    "/ip6/fd12::1/tcp/1", "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWRelay/p2p-circuit", "/unix/tmp/sock", "garbage",
])
def test_by_default_nothing_local_private_or_metadata_is_dialed(addr):
    assert not DialPolicy(DialScope.PUBLIC).allows(addr)


@pytest.mark.parametrize("addr", [
    "/ip4/203.0.114.7/tcp/4001", "/ip6/2001:4860::1/udp/4001/quic-v1", "/dns4/relay.example.com/tcp/443/wss",
    "/ip4/8.8.8.8/tcp/4001/p2p/12D3KooWRelay/p2p-circuit",
])
def test_public_addresses_are_dialed(addr):
    assert DialPolicy(DialScope.PUBLIC).allows(addr)


def test_scopes_widen_step_by_step_but_link_local_and_metadata_never():
    private, loopback, metadata = "/ip4/10.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1", "/ip4/169.254.169.254/tcp/80"
    assert [DialPolicy(s).allows(private) for s in DialScope] == [False, True, True]
    assert [DialPolicy(s).allows(loopback) for s in DialScope] == [False, False, True]
    assert [DialPolicy(s).allows(metadata) for s in DialScope] == [False, False, False]
    assert [DialPolicy(s).allows("/dns/metadata.google.internal/tcp/80") for s in DialScope] == [False] * 3


def test_private_addresses_of_a_peer_behind_our_own_public_address_are_dialed():
    policy = DialPolicy(DialScope.PUBLIC, LAB)
    peer = ["/ip4/198.51.100.2/tcp/4001", "/ip4/10.1.0.5/tcp/4001", "/ip4/127.0.0.1/tcp/4001"]
    ours = policy.public_ips(["/ip4/198.51.100.2/tcp/5000", "/ip4/10.1.0.9/tcp/4001"])
    assert policy.filter_peer(peer, ours) == ["/ip4/198.51.100.2/tcp/4001", "/ip4/10.1.0.5/tcp/4001"]
    elsewhere = policy.public_ips(["/ip4/198.51.100.3/tcp/5000"])
    assert policy.filter_peer(peer, elsewhere) == ["/ip4/198.51.100.2/tcp/4001"]
    # a circuit address does not make a site: it is the relay's address, shared by everyone
    assert policy.public_ips(["/ip4/198.51.100.2/tcp/4001/p2p/12D3KooWRelay/p2p-circuit"]) == set()


def _fake_peer_body(addrs: list[str]) -> bytes:
    return sign_registration(nacl.signing.SigningKey(os.urandom(32)), "loopback", addrs, 60)


@pytest.mark.parametrize("scope, dialed", [("public", False), ("all", True)])
def test_a_worker_never_dials_a_loopback_listener_a_stranger_registered(scope, dialed):
    """A fake peer names a local listener; with the default scope the worker never knocks, and with scope
    `all` (the same test, so the listener can tell) it does."""
    with rendezvous_process() as url:
        async def body(nursery):
            knocks = []
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]

            async def count(stream):
                knocks.append(1)
                await stream.aclose()
            nursery.start_soon(trio.serve_listeners, count, [listener])
            async with httpx.AsyncClient() as http:
                answer = await http.post(f"{url}/peers", content=_fake_peer_body(
                    [f"/ip4/127.0.0.1/tcp/{port}", "/ip4/169.254.169.254/tcp/80"]))
                assert answer.status_code == 201
            worker = await start_worker(nursery, worker_settings(url, DIAL_SCOPE=scope, DISCOVER_INTERVAL="0.2"))
            if dialed:
                await until(lambda: knocks, what="the worker's dial")
            else:
                await until(lambda: any(r.attempts for r in worker.peers.values()), what="a connection attempt")
                await trio.sleep(1.0)  # several discovery rounds and attempts: still no knock
                assert knocks == []
                assert all(r.path == "failed" for r in worker.peers.values())
        run(body)


def _register_strangers(url: str, count: int, namespace: str = "crowd") -> None:
    with httpx.Client() as http:
        for n in range(count):
            body = sign_registration(nacl.signing.SigningKey(os.urandom(32)), namespace, ["/ip4/198.51.100.66/tcp/1"],
                                     60)
            assert http.post(f"{url}/peers", content=body, headers={"X-Forwarded-For": f"192.0.2.{n % 250}"}
                             ).status_code == 201


def test_a_discovery_round_reads_a_bounded_number_of_pages_and_goes_on_from_its_cookie():
    from shared.identity import Identity
    from shared.rendezvous_client import RendezvousClient

    with rendezvous_process({"TRUSTED_PROXY_HOPS": "1", "MAX_REGISTRATIONS_PER_SOURCE": "1000"}) as url:
        _register_strangers(url, 250)

        async def body(nursery):
            client = RendezvousClient(url, Identity.from_seed(os.urandom(32)))
            first = await client.discover_pages("crowd", None, max_pages=2)
            assert len(first.entries) == 200 and first.more and first.cookie
            rest = await client.discover_pages("crowd", first.cookie, max_pages=2)
            assert len(rest.entries) == 50 and not rest.more
            assert {e.peer_id for e in first.entries}.isdisjoint(e.peer_id for e in rest.entries)
            await client.aclose()
        run(body)


def test_a_429_in_the_middle_of_a_round_keeps_the_pages_already_read():
    from shared.identity import Identity
    from shared.rendezvous_client import RendezvousClient, RendezvousError

    with rendezvous_process({"TRUSTED_PROXY_HOPS": "1", "RATE_LIMIT_IP_PER_MINUTE": "3"}) as url:
        _register_strangers(url, 500)  # from 250 other sources, two each

        async def body(nursery):
            client = RendezvousClient(url, Identity.from_seed(os.urandom(32)))
            partial = await client.discover_pages("crowd", None, max_pages=10)
            assert len(partial.entries) == 300 and partial.more and partial.cookie  # the 4th page got 429
            with pytest.raises(RendezvousError) as refused:  # a round whose first page fails is an error
                await client.discover_pages("crowd", partial.cookie, max_pages=10)
            assert refused.value.status == 429 and refused.value.retry_after
            await client.aclose()
        run(body)


@pytest.mark.parametrize("trust, dialed", [("12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB", False), ("*", True)])
def test_a_worker_reserves_only_at_relays_it_trusts_by_identity(trust, dialed):
    """A stranger registers a 'relay' in RELAY_NAMESPACE pointing at a local listener: a worker that trusts
    another peer ID never knocks there; one that trusts any relay (the same test, so the listener can tell)
    does."""
    with rendezvous_process() as url:
        async def body(nursery):
            knocks = []
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]

            async def count(stream):
                knocks.append(1)
                await stream.aclose()
            nursery.start_soon(trio.serve_listeners, count, [listener])
            fake = sign_registration(nacl.signing.SigningKey(os.urandom(32)), "relays",
                                     [f"/ip4/127.0.0.1/tcp/{listener.socket.getsockname()[1]}"], 600)
            async with httpx.AsyncClient() as http:
                assert (await http.post(f"{url}/peers", content=fake)).status_code == 201
            await start_worker(nursery, worker_settings(url, RELAY_PEER_IDS=trust, DISCOVER_INTERVAL="0.2"))
            if dialed:
                await until(lambda: knocks, what="the worker to try the registered relay")
            else:
                await trio.sleep(1.5)  # several rounds of looking for relays
                assert knocks == []
        run(body)
