"""Hole punching over QUIC in the NAT lab (tests/natlab.py): two workers behind port-restricted NATs, 25 ms one
way on every router. With TCP off they end hole-punched over QUIC; with both TCP and QUIC they choose QUIC.
And, on loopback, a stopping node closes its QUIC connections (else a relay keeps its reservation 10 min).

Which transport the direct connection uses is read from router A's connection tracking, not from the
workers: a QUIC path is a UDP flow from the worker behind it to the other's listen port at router B that has
seen replies; a TCP path would be an established TCP flow there.
"""
from __future__ import annotations

import os

import multiaddr
import pytest
import trio

from shared.host import ConnectionWatch, ListenPlan, build_host, connections_to, install_library_patches, running
from shared.identity import Identity
from tests.natlab import (CELLS, SITES, NatLab, connected_events, missing_prerequisite, start_pair,
                          stop_pair)
from tests.servers import free_port

needs_lab = pytest.mark.skipif(missing_prerequisite() is not None,
                               reason=f"NAT lab unavailable: {missing_prerequisite()}")

DELAY_MS = 25.0
PORT_RESTRICTED = next(cell for cell in CELLS if cell.name == "port-restricted")


@pytest.fixture(scope="module")
def lab():
    relay = Identity.from_seed(os.urandom(32))
    with NatLab(delay_ms=DELAY_MS) as built:
        built.start_services(relay.encoded(), str(relay.peer_id))
        yield built


def listen_port(lab: NatLab, name: str, protocol: str) -> str | None:
    """The port a worker listens on for `protocol` (tcp or udp), from its start line."""
    started = next(e for e in lab.events(name) if e.get("message") == "worker started")
    return next((a.split(f"/{protocol}/")[1].split("/")[0] for a in started["listen"]
                 if f"/{protocol}/" in a and "/ws" not in a), None)


def direct_flows(lab: NatLab, pair, protocol: str) -> list[str]:
    """Router A's tracked `protocol` flows from the pair's worker behind it to the other's listen port at router
    B's public address that saw replies (for UDP, not [UNREPLIED]; for TCP, ESTABLISHED): the direct path."""
    ports = [listen_port(lab, name, protocol) for name in pair.names]
    if None in ports:
        return []
    table = lab.run_in(SITES["a"].router, "cat", "/proc/net/nf_conntrack").splitlines()
    replied = (lambda line: "ESTABLISHED" in line) if protocol == "tcp" else (lambda line: "[UNREPLIED]" not in line)
    return [line for line in table if f" {protocol} " in line and f"dst={SITES['b'].wan_ip} " in line
            and f"dport={ports[1]} " in line and replied(line)]


def punch(lab: NatLab, run: str, tcp: bool):
    """A fresh pair behind port-restricted NATs with QUIC on; -> (pair, both workers' connected events)."""
    pair = start_pair(lab, PORT_RESTRICTED, run, quic=True, tcp=tcp)
    seen = connected_events(lab, pair, 45.0)
    for name, event in zip(pair.names, seen):
        assert event is not None, f"{name} never connected; its log:\n{lab.log_text(name)[-4000:]}"
    return pair, seen


def story(lab: NatLab, pair) -> str:
    return "\n".join(f"{name}: {e['message']}" for name in pair.names for e in lab.events(name)
                     if e.get("event") not in (None, "echo"))


def assert_punched_over_quic(lab: NatLab, pair, seen) -> None:
    for event in seen:
        # the echo round trip ran over the direct connection, through both routers' delays
        assert event["path"] == "hole-punched" and event["over"] == "direct", story(lab, pair)
        assert event["transport"] == "quic", event  # the worker's own account, beside the routers' below
        assert event["rtt_ms"] >= 4 * DELAY_MS, event
    assert direct_flows(lab, pair, "udp"), story(lab, pair)
    assert not direct_flows(lab, pair, "tcp"), direct_flows(lab, pair, "tcp")


@needs_lab
def test_with_tcp_off_port_restricted_nats_end_hole_punched_over_quic(lab):
    pair, seen = punch(lab, "quic-only", tcp=False)
    try:
        assert_punched_over_quic(lab, pair, seen)
    finally:
        stop_pair(lab, pair)


@needs_lab
def test_with_tcp_and_quic_the_punch_prefers_quic(lab):
    pair, seen = punch(lab, "quic-and-tcp", tcp=True)
    try:
        assert_punched_over_quic(lab, pair, seen)
    finally:
        stop_pair(lab, pair)


def test_a_stopping_node_closes_its_quic_connections():
    install_library_patches()  # as the runner does at start

    async def main() -> float | None:
        plans = [ListenPlan("127.0.0.1", None, None, free_port()) for _ in range(2)]
        hosts = [build_host(Identity.from_seed(os.urandom(32)), plan) for plan in plans]
        async with running(hosts[1], plans[1]):
            watch = ConnectionWatch(hosts[1])
            async with running(hosts[0], plans[0]):
                await hosts[0].get_network().dial_addr(
                    multiaddr.Multiaddr(f"/ip4/127.0.0.1/udp/{plans[1].quic_port}/quic-v1"), hosts[1].get_id())
                assert await watch.wait_until(lambda: bool(connections_to(hosts[1], hosts[0].get_id())), 5)
            stopped = trio.current_time()
            if await watch.wait_until(lambda: not connections_to(hosts[1], hosts[0].get_id()), 5):
                return trio.current_time() - stopped
            return None

    noticed_after = trio.run(main)
    assert noticed_after is not None, "the peer still holds the QUIC connection 5 s after the node stopped"


@needs_lab
def test_full_cone_nats_over_quic_connect_directly(lab):
    """The observed public address is registered with the QUIC listen port too, so a full-cone NAT lets the
    first QUIC dial in, before any relay (it was hole-punched when only TCP addresses were predicted)."""
    full_cone = next(cell for cell in CELLS if cell.name == "full-cone")
    pair = start_pair(lab, full_cone, "quic-full-cone", quic=True, tcp=False)
    try:
        seen = connected_events(lab, pair, 45.0)
        dialer = next((e for e in seen if e is not None and e.get("initiated_by") == "us"), None)
        assert dialer is not None, story(lab, pair)
        assert dialer["path"] == "direct" and dialer["transport"] == "quic", story(lab, pair)
    finally:
        stop_pair(lab, pair)
