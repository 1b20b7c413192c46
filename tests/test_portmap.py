"""Port mapping (worker/portmap.py) against Debian's miniupnpd on a NAT-lab router: the PCP, NAT-PMP and UPnP
clients map, renew and delete (the router's nft rules and lease file show it); behind a symmetric NAT
whose router maps, a peer dials the worker directly; auto without a mapping gateway logs once and goes on."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest

from shared.identity import Identity
from shared.settings import ConfigError
from tests.natlab import (HOSTS, IGD_PUBLIC_IPS, Nat, NatLab, Pair, connected_events, missing_prerequisite)
from worker.portmap import listen_ports
from worker.settings import WorkerSettings

_why_not = missing_prerequisite() or (None if shutil.which("miniupnpd") else
                                      "miniupnpd is not installed (scripts/test.sh installs it)")
needs_lab = pytest.mark.skipif(_why_not is not None, reason=f"NAT lab unavailable: {_why_not}")

A_IP = HOSTS["a"][1]
PUBLIC = IGD_PUBLIC_IPS["a"]


@pytest.fixture(scope="module")
def lab():
    """One lab (25 ms each way on every router) whose router A runs miniupnpd; router B offers no mapping."""
    relay = Identity.from_seed(os.urandom(32))
    with NatLab(nat_a=Nat.SYMMETRIC) as built:
        built.start_igd("a")
        built.start_services(relay.encoded(), str(relay.peer_id))
        yield built


def ask(lab: NatLab, host: str, *request) -> dict:
    """Run one client call (protocol, action, transport, port, lease, external port) on `host`."""
    code = ("import dataclasses, json, sys, trio\n"
            "from worker.portmap import Mapping, NatPmpClient, UpnpClient\n"
            "protocol, action, transport, port, lease, external = json.loads(sys.argv[1])\n"
            "client = UpnpClient() if protocol == 'upnp' else NatPmpClient()\n"
            "client.pcp = protocol == 'pcp'  # NAT-PMP's own messages, to a gateway that also speaks PCP\n"
            "# each call is a process of its own: PCP's nonce is kept across them, as one worker keeps it\n"
            "client._nonces = {(transport, port): (transport + str(port)).encode().ljust(12, b'.')}\n"
            "if action == 'map':\n"
            "    mapping = trio.run(client.map, transport, port, lease, external)\n"
            "else:\n"
            "    mapping = Mapping(protocol, transport, port, '', external, 0, None)\n"
            "    trio.run(client.unmap, mapping)\n"
            "print(json.dumps(dataclasses.asdict(mapping)))\n")
    return json.loads(lab.run_in(f"h{host}", sys.executable, "-c", code, json.dumps(request)))


def lease_expiry(lab: NatLab, transport: str, port: int) -> int | None:
    """When miniupnpd's lease file says the mapping of `port` ends (its clock, in seconds), or None."""
    for line in lab.igd_leases("a"):
        proto, external, host, internal, expires = line.split(":")[:5]
        if proto == transport.upper() and int(external) == port and host == A_IP and int(internal) == port:
            return int(expires)
    return None


def dnat_rule(transport: str, port: int) -> re.Pattern:
    ip_protocol = {"tcp": "0x6", "udp": "0x11"}[transport]
    return re.compile(rf'iif "wan" @nh,72,8 {ip_protocol} th dport {port} dnat ip to {re.escape(A_IP)}:{port}\n')


@needs_lab
@pytest.mark.parametrize("protocol,transport,port", [("pcp", "tcp", 4304), ("pcp", "udp", 4305),
                                                     ("natpmp", "tcp", 4300), ("natpmp", "udp", 4301),
                                                     ("upnp", "tcp", 4302), ("upnp", "udp", 4303)])
def test_the_gateway_maps_renews_and_deletes(lab, protocol, transport, port):
    mapped = ask(lab, "a", protocol, "map", transport, port, 60, None)
    assert mapped["protocol"] == protocol
    assert (mapped["external_ip"], mapped["external_port"], mapped["lease_seconds"]) == (PUBLIC, port, 60)
    assert dnat_rule(transport, port).search(lab.igd_rules("a")), lab.igd_rules("a")
    first_expiry = lease_expiry(lab, transport, port)
    assert first_expiry is not None, lab.igd_leases("a")

    renewed = ask(lab, "a", protocol, "map", transport, port, 120, port)
    assert (renewed["external_port"], renewed["lease_seconds"]) == (port, 120)
    assert lease_expiry(lab, transport, port) >= first_expiry + 55, lab.igd_leases("a")  # 60 s more, give or take
    assert len(dnat_rule(transport, port).findall(lab.igd_rules("a"))) == 1  # renewed, not mapped twice

    ask(lab, "a", protocol, "unmap", transport, port, 0, port)
    assert not dnat_rule(transport, port).search(lab.igd_rules("a")), lab.igd_rules("a")
    assert lease_expiry(lab, transport, port) is None


@needs_lab
def test_a_mapping_the_gateways_rules_deny_is_refused_with_its_reason(lab):
    # the lab's miniupnpd allows external ports 1024-65535 only; a UPnP request names its external port.
    # (NAT-PMP's is a hint: miniupnpd searches upwards for an allowed one instead, slowly.)
    with pytest.raises(RuntimeError, match="the UPnP gateway refused to map tcp 4701: Action not authorized"):
        ask(lab, "a", "upnp", "map", "tcp", 4701, 60, 80)
    assert "dport 80 " not in lab.igd_rules("a")


@needs_lab
def test_auto_without_a_mapping_gateway_logs_once_and_carries_on(lab):
    # router B answers neither NAT-PMP (ICMP port unreachable) nor the SSDP search (a round waits ~2 s for
    # it); retries 0.3 s apart here
    code = ("import json, logging, trio\n"
            "from worker import portmap\n"
            "portmap.RETRY_FIRST = portmap.RETRY_CEILING = 0.3\n"
            "records = []\n"
            "handler = logging.Handler()\n"
            "handler.emit = records.append\n"
            "logger = logging.getLogger('worker.portmap')\n"
            "logger.addHandler(handler)\n"
            "logger.setLevel(logging.DEBUG)\n"
            "async def main():\n"
            "    mapper = portmap.PortMapper('auto', 60)\n"
            "    with trio.move_on_after(8) as waited:\n"
            "        await mapper.run([('tcp', 4400), ('udp', 4400)])\n"
            "    print(json.dumps({'still_running': waited.cancelled_caught, 'status': mapper.status(),\n"
            "                      'lines': [(r.levelname, r.getMessage()) for r in records]}))\n"
            "trio.run(main)\n")
    seen = json.loads(lab.run_in("hb", sys.executable, "-c", code))
    lines = seen["lines"]
    assert seen["still_running"], lines  # it kept trying until we stopped it, and raised nothing
    said = [message for level, message in lines if level == "INFO"]
    assert len(said) == 1 and "carrying on without one" in said[0], lines
    assert "natpmp" in said[0] and "upnp" in said[0], said  # both were tried
    assert sum(level == "DEBUG" for level, _ in lines) >= 1, lines  # and tried again, quietly
    assert not [line for line in lines if line[0] in ("WARNING", "ERROR")], lines
    assert seen["status"]["mappings"] == [] and seen["status"]["error"], seen["status"]


def keys_dialer_first() -> tuple[str, str]:
    one, two = sorted((Identity.from_seed(os.urandom(32)) for _ in range(2)), key=lambda i: str(i.peer_id))
    return one.encoded(), two.encoded()


def tcp_port(started: dict) -> int:
    return next(int(a.split("/")[4]) for a in started["listen"] if "/tcp/" in a and "/ws" not in a)


def story(lab: NatLab, *names: str) -> str:
    """The workers' own log lines (not the libraries'), for a failure message."""
    return "\n".join(f"{name}: {e['message']} {e.get('addrs') or e.get('error') or ''}" for name in names
                     for e in lab.events(name) if e.get("logger", "").startswith(("worker", "shared")))


def started(lab: NatLab, name: str) -> dict:
    event = lab.wait_for(name, lambda e: e.get("message") == "worker started", 30.0)
    assert event is not None, lab.log_text(name)[-3000:]
    return event


@needs_lab
@pytest.mark.parametrize("mode,protocol,quic", [("auto", "pcp", False), ("upnp", "upnp", True)])
def test_behind_a_symmetric_nat_that_maps_a_peer_dials_the_worker_directly(lab, mode, protocol, quic):
    lab.set_nat("a", Nat.SYMMETRIC)  # endpoint-dependent: no hole punch could work here (the matrix's cells)
    lab.set_nat("b", Nat.PORT_RESTRICTED)  # and router B maps nothing
    dialer_key, worker_key = keys_dialer_first()  # b holds the lower peer ID: b dials
    env = {"NAMESPACE": f"portmap-{mode}", "PORT_MAPPING": mode, "PORT_MAPPING_LEASE": "10"}
    a = lab.start_worker("a", lab.relay_addr, name=f"pm-{mode}-a", env={**env, "IDENTITY_KEY": worker_key},
                         quic=quic)
    started_a = started(lab, a)
    port = tcp_port(started_a)
    # the TCP port, and with QUIC the UDP one (NatLab.start_worker puts QUIC 3000 above TCP)
    expected = {f"/ip4/{PUBLIC}/tcp/{port}"} | ({f"/ip4/{PUBLIC}/udp/{port + 3000}/quic-v1"} if quic else set())
    mapped = lab.wait_for(a, lambda e: e.get("event") == "port_mapped", 20.0)
    assert mapped is not None, story(lab, a)
    assert mapped["protocol"] == protocol and set(mapped["external_addrs"]) == expected, mapped
    registered = lab.wait_for(a, lambda e: e.get("message") == "registered"
                              and expected <= set(e.get("addrs", [])), 10.0)
    assert registered is not None, story(lab, a)

    b = lab.start_worker("b", lab.relay_addr, name=f"pm-{mode}-b", env={**env, "IDENTITY_KEY": dialer_key},
                         quic=quic)
    pair = Pair((b, a), (started(lab, b)["peer"], started_a["peer"]))
    try:
        by_b, by_a = connected_events(lab, pair, 30.0)
        assert by_b is not None and by_a is not None, story(lab, a, b)
        assert (by_b["path"], by_b["initiated_by"], by_b["over"]) == ("direct", "us", "direct"), story(lab, a, b)
        assert (by_a["path"], by_a["initiated_by"]) == ("direct", "them"), story(lab, a, b)
        assert not [e for n in (a, b) for e in lab.events(n) if e.get("event") == "relayed"], story(lab, a, b)

        status = json.loads(lab.run_in("ha", "curl", "-sf", f"http://127.0.0.1:{port + 2000}/status"))
        held = status["port_mapping"]
        assert held["protocol"] == protocol and held["mode"] == mode, held
        assert {m["external_addr"] for m in held["mappings"]} == expected, held
        assert {m["lease_seconds"] for m in held["mappings"]} == {10}, held
        # renewed at half the 10 s lease, keeping its port
        renewed = lab.wait_for(a, lambda e: e.get("event") == "port_mapping_renewed", 10.0)
        assert renewed is not None and renewed["external_addrs"] == mapped["external_addrs"], story(lab, a)
        if mode == "auto":  # b's router maps nothing: said once, and b connected all the same
            told = lab.wait_for(b, lambda e: e.get("event") == "port_mapping_unavailable", 15.0)
            assert told is not None, story(lab, b)
            time.sleep(1.0)  # b's next round is due RETRY_FIRST (5 s) later at the most
            unavailable = [e for e in lab.events(b) if e.get("event") == "port_mapping_unavailable"]
            assert len(unavailable) == 1, story(lab, b)

        log = lab.procs[a][1]
        lab.stop(a)  # SIGTERM: a unregisters and deletes its mapping
        said = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        assert [e for e in said if e.get("event") == "port_unmapped"], [e["message"] for e in said][-20:]
        assert not dnat_rule("tcp", port).search(lab.igd_rules("a")), lab.igd_rules("a")
        assert not dnat_rule("udp", port + 3000).search(lab.igd_rules("a")), lab.igd_rules("a")
    finally:
        for name in (a, b):
            if name in lab.procs:
                lab.stop(name)


def test_a_bad_port_mapping_option_stops_the_worker_with_a_clear_error():
    with pytest.raises(ConfigError, match=r"PORT_MAPPING \(--port-mapping\): must be one of auto, upnp, natpmp, off "
                                          r"\(got 'yes'\)"):
        WorkerSettings.parse([], {"PORT_MAPPING": "yes"})
    with pytest.raises(ConfigError, match=r"PORT_MAPPING_LEASE \(--port-mapping-lease\): 5 is outside 10\.\.604800"):
        WorkerSettings.parse(["--port-mapping-lease", "5"], {})
    assert WorkerSettings.parse([], {"PORT_MAPPING": " UPnP "}).port_mapping == "upnp"
    assert WorkerSettings.parse([], {}).port_mapping == "auto"


def test_only_the_tcp_and_quic_listeners_off_loopback_are_mapped():
    # a stack on one machine (LISTEN_HOST=127.0.0.1) must not open ports on the developer's router
    peer = "/p2p/12D3KooWSAYkv5sxrh7nzEo6YtHtER3qvT63PvMMkMSmdUpbqaGG"
    assert listen_ports([f"/ip4/127.0.0.1/tcp/4001{peer}", "/ip4/127.0.0.1/udp/4003/quic-v1"]) == []
    assert listen_ports([f"/ip4/10.1.1.2/tcp/4100{peer}", "/ip4/10.1.1.2/tcp/5100/ws", "/ip4/0.0.0.0/udp/7100/quic-v1",
                         f"/ip4/198.51.100.1/tcp/4001/p2p/{peer[5:]}/p2p-circuit"]) == [("tcp", 4100), ("udp", 7100)]


def test_a_gateway_that_knows_only_nat_pmp_is_asked_in_nat_pmp_from_then_on():
    """RFC 6887 section 9: a NAT-PMP gateway answers a PCP request with its own "unsupported version"; the
    client then speaks NAT-PMP. miniupnpd speaks both, so this gateway is a socket on loopback that answers
    as RFC 6886 section 3.5 says a NAT-PMP gateway does, and refuses NAT-PMP's address request."""
    import socket
    import threading

    import trio

    from worker.portmap import MappingError, NatPmpClient
    gateway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gateway.bind(("127.0.0.77", 5351))
    gateway.settimeout(10)
    asked: list[bytes] = []

    def answer() -> None:
        for _ in range(2):
            request, source = gateway.recvfrom(1100)
            asked.append(request)
            if request[0] != 0:  # PCP (version 2): "unsupported version", in NAT-PMP's format
                gateway.sendto(bytes([0, 128 + request[1], 0, 1]) + (7).to_bytes(4, "big"), source)
            else:  # NAT-PMP's external-address request: refused, "network failure"
                gateway.sendto(bytes([0, 128, 0, 3]) + (7).to_bytes(4, "big") + bytes(4), source)
    helper = threading.Thread(target=answer, daemon=True)
    helper.start()
    client = NatPmpClient("127.0.0.77")
    try:
        with pytest.raises(MappingError, match="the gateway refused: network failure"):
            trio.run(client.map, "tcp", 4400, 60, None)
    finally:
        helper.join(5)
        gateway.close()
    assert [request[0] for request in asked] == [2, 0]  # PCP first, then NAT-PMP
    assert len(asked[0]) == 60 and asked[0][1] == 1  # a PCP MAP request (RFC 6887 sections 7.1, 11.1)
    assert asked[1] == bytes([0, 0]) and client.pcp is False
