"""Hole punching across real NATs: network namespaces, iptables MASQUERADE, inbound SYNs dropped."""
from __future__ import annotations

import os

import pytest

from tests.natlab import NatLab, missing_prerequisite
from shared.identity import Identity

pytestmark = pytest.mark.skipif(missing_prerequisite() is not None,
                                reason=f"NAT lab unavailable: {missing_prerequisite()}")


def relay_identity() -> Identity:
    return Identity.from_seed(os.urandom(32))


def connected_to_peer(lab: NatLab, worker: str, peer: str, timeout: float = 45.0) -> dict:
    event = lab.wait_for(worker, lambda e: e.get("event") == "connected" and e.get("peer") == peer, timeout)
    assert event is not None, f"{worker} never connected to {peer}; its log:\n{lab.log_text(worker)[-4000:]}"
    return event


def started_peer_id(lab: NatLab, worker: str) -> str:
    event = lab.wait_for(worker, lambda e: e.get("message") == "worker started", 30.0)
    assert event is not None, lab.log_text(worker)
    return event["peer"]


def test_workers_behind_two_nats_end_on_a_hole_punched_direct_connection():
    relay = relay_identity()
    with NatLab() as lab:
        lab.start_stack(relay.encoded(), str(relay.peer_id))
        a, b = started_peer_id(lab, "worker-a"), started_peer_id(lab, "worker-b")
        seen_by_a, seen_by_b = connected_to_peer(lab, "worker-a", b), connected_to_peer(lab, "worker-b", a)
        for seen in (seen_by_a, seen_by_b):
            assert seen["path"] == "hole-punched", seen
            assert seen["over"] == "direct", seen  # the echo ran over the punched connection, not the relay
            assert seen["rtt_ms"] > 0
        # The worker that dialed went through the relay first, and says how long the upgrade took.
        dialer = seen_by_a if seen_by_a["initiated_by"] == "us" else seen_by_b
        assert dialer["initiated_by"] == "us" and dialer["time_to_direct"] > 0
        # Later rounds keep exchanging messages over the direct connection.
        for worker, peer in (("worker-a", b), ("worker-b", a)):
            checks = lab.wait_for(worker, lambda e: e.get("event") == "echo" and e.get("peer") == peer
                                  and e.get("over") == "direct", 10.0)
            assert checks is not None, lab.log_text(worker)[-3000:]


def test_a_port_randomising_nat_keeps_the_workers_relayed_and_talking():
    relay = relay_identity()
    with NatLab(random_fully=True) as lab:
        lab.start_stack(relay.encoded(), str(relay.peer_id), {"HOLEPUNCH_TIMEOUT": "6"})
        a, b = started_peer_id(lab, "worker-a"), started_peer_id(lab, "worker-b")
        for worker, peer in (("worker-a", b), ("worker-b", a)):
            seen = connected_to_peer(lab, worker, peer)
            assert seen["path"] == "relayed", seen
            assert seen["over"] == "relayed" and seen["rtt_ms"] > 0, seen
        assert any(e.get("event") == "stay_relayed" for e in lab.events("worker-a") + lab.events("worker-b"))
