"""The NAT-lab matrix (tests/natlab.py): one lab, 25 ms one way on every router, and one test per class of
cell with the outcome theory predicts: direct, hole-punched, or relayed and still exchanging frames."""
from __future__ import annotations

import os

import pytest

from shared.identity import Identity
from tests.natlab import (CELLS, HOSTS, PUBLIC_IP, SITES, Cell, NatLab, connected_events, missing_prerequisite,
                          set_routers, start_pair, stop_pair)

pytestmark = pytest.mark.skipif(missing_prerequisite() is not None,
                                reason=f"NAT lab unavailable: {missing_prerequisite()}")

DELAY_MS = 25.0
DIRECT_DIAL_TIMEOUT_S = 2.0  # the worker's default DIRECT_DIAL_TIMEOUT
CELL = {cell.name: cell for cell in CELLS}


@pytest.fixture(scope="module")
def lab():
    """One lab for every cell: each run resets the routers and starts new workers on new ports in a
    rendezvous namespace of their own, so nothing of an earlier cell is seen by a later one."""
    relay = Identity.from_seed(os.urandom(32))
    with NatLab(delay_ms=DELAY_MS) as built:
        built.start_services(relay.encoded(), str(relay.peer_id))
        yield built


def keys_dialer_first() -> tuple[str, str]:
    """Two identities, the first with the lower peer ID: the worker holding it is the one that dials."""
    one, two = sorted((Identity.from_seed(os.urandom(32)) for _ in range(2)), key=lambda i: str(i.peer_id))
    return one.encoded(), two.encoded()


def connect(lab: NatLab, cell: Cell, env: dict[str, str] | None = None):
    """Start the cell's pair, the worker on cell.hosts[0] dialing; -> (pair, its event, the other's event)."""
    pair = start_pair(lab, cell, cell.name.replace("/", "-"), keys=keys_dialer_first(), env=env)
    seen = connected_events(lab, pair, 45.0)
    for name, event in zip(pair.names, seen):
        assert event is not None, f"{name} never connected; its log:\n{lab.log_text(name)[-4000:]}"
    return pair, seen[0], seen[1]


def story(lab: NatLab, pair) -> str:
    """Both workers' holepunch lines, for a failure message."""
    return "\n".join(f"{name}: {e['message']}" for name in pair.names for e in lab.events(name)
                     if e.get("event") not in (None, "echo"))


def later_echo_over(lab: NatLab, pair, over: str) -> None:
    """Both workers keep exchanging echo frames with each other over `over` after connecting."""
    for name, peer in zip(pair.names, reversed(pair.peers)):
        echo = lab.wait_for(name, lambda e: e.get("event") == "echo" and e.get("peer") == peer
                            and e.get("over") == over, 10.0)
        assert echo is not None, story(lab, pair)


def test_every_router_delays_its_wan_link_both_ways(lab):
    set_routers(lab, CELL["port-restricted"])
    through_one_router = lab.ping("a", PUBLIC_IP)  # router A out and back: 2 x 25 ms
    through_two = lab.ping("a", SITES["b"].wan_ip)  # A out, B in, B out, A in: 4 x 25 ms
    assert 2 * DELAY_MS <= through_one_router < 2 * DELAY_MS + 15, through_one_router
    assert 4 * DELAY_MS <= through_two < 4 * DELAY_MS + 25, through_two
    assert lab.ping("a", HOSTS["a2"][1]) < 5  # the LAN behind a router is not delayed


@pytest.mark.parametrize("name", ["full-cone", "public/port-restricted", "hairpin"])
def test_a_dial_to_the_peers_registered_address_connects_directly(lab, name):
    # full cone: the NAT forwards the dial to the observed address; public: the NATed peer dials out;
    # hairpin: one public address for both, so the dial policy allows the peer's LAN address
    pair, dialer, dialed = connect(lab, CELL[name])
    try:
        for seen, initiated_by in ((dialer, "us"), (dialed, "them")):
            assert seen["path"] == "direct" and seen["over"] == "direct", story(lab, pair)
            assert seen["initiated_by"] == initiated_by, story(lab, pair)
        if name == "hairpin":  # over the LAN, which no router delays
            assert dialer["rtt_ms"] < 2 * DELAY_MS, dialer
        else:
            assert dialer["rtt_ms"] >= 4 * DELAY_MS, dialer
    finally:
        stop_pair(lab, pair)


@pytest.mark.parametrize("name", ["address-restricted", "port-restricted"])
def test_cone_nats_on_both_sides_end_hole_punched(lab, name):
    pair, dialer, dialed = connect(lab, CELL[name])
    try:
        for seen in (dialer, dialed):
            assert seen["path"] == "hole-punched", story(lab, pair)
            assert seen["over"] == "direct" and seen["rtt_ms"] >= 4 * DELAY_MS, seen  # echoed over the punch
            assert seen["transport"] == "tcp", seen  # these workers have no QUIC
        # the dialer went through the relay first, and says how long the upgrade took
        assert dialer["initiated_by"] == "us" and dialer["time_to_direct"] > 0, story(lab, pair)
        # its relay dial did not wait for the direct dials (whose SYNs the NAT drops) to time out
        relayed = lab.wait_for(pair.names[0], lambda e: e.get("event") == "relayed", 1.0)
        assert relayed is not None and relayed["seconds"] < DIRECT_DIAL_TIMEOUT_S, story(lab, pair)
        later_echo_over(lab, pair, "direct")
    finally:
        stop_pair(lab, pair)


@pytest.mark.parametrize("name", ["symmetric", "sequential"])
def test_endpoint_dependent_mapping_on_both_sides_stays_relayed_and_talking(lab, name):
    pair, dialer, dialed = connect(lab, CELL[name], env={"HOLEPUNCH_TIMEOUT": "6"})
    try:
        for seen in (dialer, dialed):
            assert seen["path"] == "relayed" and seen["over"] == "relayed" and seen["rtt_ms"] > 0, story(lab, pair)
        assert any(e.get("event") == "stay_relayed" for name in pair.names for e in lab.events(name))
        later_echo_over(lab, pair, "relayed")
    finally:
        stop_pair(lab, pair)
