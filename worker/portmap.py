"""Port mapping at the gateway (the plan's NATPortMap()): the worker asks its router to forward its TCP and
QUIC (UDP) listen ports, by PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD, and registers the mapped public
address.

A forwarded port is reachable from anywhere whatever the NAT does to our outgoing connections, so a worker
behind a symmetric NAT, where hole punching cannot work, is still dialed directly.

PORT_MAPPING=auto tries NAT-PMP first, then UPnP. NAT-PMP is one UDP round trip to the default gateway (its
client speaks PCP, NAT-PMP's successor on the same port, and falls back to NAT-PMP's own messages when the
gateway answers that it knows only those), and
a router without it answers at once with ICMP port unreachable or stays silent for NATPMP_TRIES short
waits; UPnP always waits out an SSDP multicast search (UPNP_DISCOVERY_MS) and then makes three HTTP/SOAP
requests. Routers offering both (miniupnpd, most home routers) are served by the quicker one, and the one
that worked is tried first from then on.

Leases: we ask for PORT_MAPPING_LEASE seconds and renew at half of what the gateway granted (RFC 6886
section 3.3); `release` deletes the mappings on leave (SIGTERM). A failure is logged and retried with
backoff; nothing here stops the worker. In auto mode a gateway with neither protocol is logged once.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import random
import socket
import struct
import time
from typing import Protocol

import miniupnpc
import multiaddr
import trio

from shared.backoff import Backoff
from worker import metrics

log = logging.getLogger("worker.portmap")

MODES = ("auto", "upnp", "natpmp", "off")
NATPMP, PCP, UPNP = "natpmp", "pcp", "upnp"
DESCRIPTION = "holepunch-services worker"  # the label an operator sees in the router's mapping table
RETRY_FIRST, RETRY_CEILING = 5.0, 600.0
RELEASE_TIMEOUT = 5.0  # on SIGTERM: Cloud Run and systemd give ~10 s before SIGKILL, shared with unregistering
PERMANENT_RECHECK = 1800.0  # a permanent UPnP lease is still looked at, in case the router rebooted

NATPMP_PORT = 5351
# RFC 6886 section 3.1: 250 ms, doubling, up to 9 tries (64 s). A gateway on our LAN answers within
# milliseconds, so 4 tries (3.75 s) are plenty; the backoff loop tries again later anyway.
NATPMP_FIRST_WAIT, NATPMP_TRIES = 0.25, 4
_OP_ADDRESS, _OP_MAP = 0, {"udp": 1, "tcp": 2}
_RESULTS = {1: "unsupported version", 2: "not authorized or refused", 3: "network failure",
            4: "out of resources", 5: "unsupported opcode"}
# PCP (RFC 6887): version 2, the MAP opcode, and its result codes (section 7.4)
_PCP_VERSION, _PCP_MAP, _PCP_PROTOCOLS = 2, 1, {"tcp": 6, "udp": 17}
_PCP_RESULTS = {1: "unsupported version", 2: "not authorized", 3: "malformed request", 4: "unsupported opcode",
                5: "unsupported option", 6: "malformed option", 7: "network failure", 8: "out of resources",
                9: "unsupported protocol", 10: "user over quota", 11: "cannot provide that external address",
                12: "address mismatch (a NAT between us and the gateway)", 13: "too many remote peers"}
_UNSUPPORTED_VERSION = 1

UPNP_DISCOVERY_MS = 1000  # how long the SSDP search listens for gateways
UPNP_CONFLICT_TRIES = 3  # our own port first, then random ones when another host holds it


class MappingError(Exception):
    """The gateway could not be asked, or refused; the message says which and why."""


def parse_mode(text: str) -> str:
    """The PORT_MAPPING option."""
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}")
    return mode


def listen_ports(addrs: list[str]) -> list[tuple[str, int]]:
    """(transport, port) of the plain TCP and the QUIC listeners: what peers dial. The WebSocket port is for
    browsers, which need a certificate for a public address anyway. A listener on loopback is left out: the
    gateway would forward to our LAN address, where it does not listen (and a test stack on one machine
    must not open ports on the developer's router)."""
    out = []
    for text in addrs:
        if "/p2p-circuit" in text or "/ws" in text:
            continue
        addr = multiaddr.Multiaddr(text)
        protocols = [p.name for p in addr.protocols() if p.name != "p2p"]
        if ipaddress.ip_address(addr.value_for_protocol(protocols[0])).is_loopback:
            continue
        if protocols[1:] == ["tcp"]:
            out.append(("tcp", int(addr.value_for_protocol("tcp"))))
        elif protocols[1:] == ["udp", "quic-v1"]:
            out.append(("udp", int(addr.value_for_protocol("udp"))))
    return list(dict.fromkeys(out))


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One port the gateway forwards to us."""
    protocol: str  # natpmp | upnp
    transport: str  # tcp | udp
    internal_port: int
    external_ip: str
    external_port: int
    lease_seconds: int  # as granted; 0: permanent (an IGD that grants no other)
    expires: float | None  # wall clock; None: permanent

    @property
    def addr(self) -> str:
        if self.transport == "tcp":
            return f"/ip4/{self.external_ip}/tcp/{self.external_port}"
        return f"/ip4/{self.external_ip}/udp/{self.external_port}/quic-v1"

    def as_json(self) -> dict:
        return {"protocol": self.protocol, "transport": self.transport, "internal_port": self.internal_port,
                "external_addr": self.addr, "lease_seconds": self.lease_seconds, "expires": self.expires}


class Client(Protocol):
    name: str

    async def map(self, transport: str, internal_port: int, lease: int, external_port: int | None) -> Mapping: ...

    async def unmap(self, mapping: Mapping) -> None: ...


def _mapping(protocol: str, transport: str, internal: int, ip: str, external: int, lease: int) -> Mapping:
    try:
        if ipaddress.IPv4Address(ip).is_unspecified:
            raise ValueError
    except ValueError:
        raise MappingError(f"the gateway has no usable external address ({ip!r})") from None
    return Mapping(protocol, transport, internal, ip, external, lease, time.time() + lease if lease else None)


# --- NAT-PMP (RFC 6886) ---------------------------------------------------------------------------------------

def default_gateway() -> str | None:
    """The IPv4 default gateway (Linux: /proc/net/route), where NAT-PMP is asked."""
    try:
        with open("/proc/net/route") as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 2:  # RTF_GATEWAY
                    return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    except OSError:
        pass
    return None


class _OnlyNatPmp(Exception):
    """The gateway answered a PCP request with NAT-PMP's "unsupported version": it speaks NAT-PMP only."""


class NatPmpClient:
    """PCP, or NAT-PMP where the gateway knows only that, over UDP to the gateway's port 5351. The socket is
    connected to the gateway, so the kernel drops answers from anyone else (RFC 6886 section 3.1, RFC 6887
    section 8.3: only the gateway's answers count). Mappings say which of the two made them."""
    name = NATPMP

    def __init__(self, gateway: str | None = None):
        self.gateway = gateway
        self.pcp = True  # until the gateway says it knows NAT-PMP only (RFC 6887 section 9)
        # PCP ties a mapping to a random nonce: renewing or deleting it needs the same one (section 11.1)
        self._nonces: dict[tuple[str, int], bytes] = {}

    async def map(self, transport: str, internal_port: int, lease: int, external_port: int | None) -> Mapping:
        suggested = external_port or internal_port
        protocol = PCP if self.pcp else NATPMP
        try:
            if self.pcp:
                port, ip, granted = await self._pcp_map(transport, internal_port, suggested, lease)
        except _OnlyNatPmp:
            self.pcp, protocol = False, NATPMP
            log.debug("port mapping: the gateway speaks NAT-PMP, not PCP", extra={"gateway": self.gateway})
        if protocol == NATPMP:
            ip = await self.external_address()
            port, granted = await self._map(transport, internal_port, suggested, lease)
        if granted == 0:
            raise MappingError("the gateway granted a lease of 0 s")
        return _mapping(protocol, transport, internal_port, ip, port, granted)

    async def unmap(self, mapping: Mapping) -> None:
        # PCP section 15 and NAT-PMP section 3.4: a lifetime of 0 deletes the mapping
        if mapping.protocol == PCP:
            try:
                await self._pcp_map(mapping.transport, mapping.internal_port, 0, 0)
            finally:
                self._nonces.pop((mapping.transport, mapping.internal_port), None)
        else:
            await self._map(mapping.transport, mapping.internal_port, 0, 0)

    async def external_address(self) -> str:
        answer = await self._ask(struct.pack("!BB", 0, _OP_ADDRESS), _natpmp_answer(_OP_ADDRESS, 12))
        return socket.inet_ntoa(answer[8:12])

    async def _map(self, transport: str, internal: int, suggested: int, lease: int) -> tuple[int, int]:
        op = _OP_MAP[transport]
        answer = await self._ask(struct.pack("!BBHHHI", 0, op, 0, internal, suggested, lease), _natpmp_answer(op, 16))
        _, _, _, _, echoed, external, granted = struct.unpack("!BBHIHHI", answer[:16])
        if echoed != internal:
            raise MappingError(f"the gateway answered for port {echoed}, not {internal}")
        return external, granted

    async def _pcp_map(self, transport: str, internal: int, suggested: int, lease: int) -> tuple[int, str, int]:
        """A PCP MAP request (sections 7.1 and 11.1) -> (external port, external IPv4, lease granted)."""
        nonce = self._nonces.setdefault((transport, internal), os.urandom(12))
        protocol = _PCP_PROTOCOLS[transport]

        def request(own_ip: str) -> bytes:
            # the header carries our own address as the gateway sees it (a NAT between would be refused), and
            # the suggested external address ::ffff:0.0.0.0 asks for an IPv4 mapping without naming one
            return (struct.pack("!BBHI", _PCP_VERSION, _PCP_MAP, 0, lease) + _v4_mapped(own_ip)
                    + nonce + struct.pack("!B3xHH", protocol, internal, suggested) + _v4_mapped("0.0.0.0"))

        def result(answer: bytes) -> int | None:
            if len(answer) >= 4 and answer[0] == 0 and answer[3] == _UNSUPPORTED_VERSION:
                raise _OnlyNatPmp  # a NAT-PMP gateway's answer to any version it does not know
            if len(answer) >= 60 and answer[0] == _PCP_VERSION and answer[1] == 128 + _PCP_MAP \
                    and answer[24:36] == nonce:
                return answer[3]
            return None  # a stray answer to an earlier request

        answer = await self._ask(request, result, _PCP_RESULTS)
        lifetime = struct.unpack("!I", answer[4:8])[0]
        answered_protocol, echoed, external = struct.unpack("!B3xHH", answer[36:44])
        if (answered_protocol, echoed) != (protocol, internal):
            raise MappingError(f"the gateway answered for {answered_protocol}/{echoed}, not {protocol}/{internal}")
        return external, str(ipaddress.IPv6Address(answer[44:60]).ipv4_mapped or "::"), lifetime

    async def _ask(self, request, result, results: dict = _RESULTS) -> bytes:
        """Send `request` (bytes, or a function of our own address) to the gateway, doubling the wait
        between tries, until an answer has a `result` code (None: not an answer to this request); a nonzero
        one is a refusal."""
        gateway = self.gateway or default_gateway()
        if gateway is None:
            raise MappingError("no IPv4 default gateway to ask")
        wait = NATPMP_FIRST_WAIT
        try:
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                await sock.connect((gateway, NATPMP_PORT))
                payload = request(sock.getsockname()[0]) if callable(request) else request
                for _ in range(NATPMP_TRIES):
                    await sock.send(payload)
                    with trio.move_on_after(wait):
                        while (code := result(answer := await sock.recv(1100))) is None:  # PCP's largest
                            pass
                        if code:
                            raise MappingError(f"the gateway refused: {results.get(code, code)}")
                        return answer
                    wait *= 2
        except OSError as exc:  # ICMP port unreachable arrives as ECONNREFUSED: no NAT-PMP there
            raise MappingError(f"{gateway}:{NATPMP_PORT} does not answer NAT-PMP or PCP ({exc.strerror})") from None
        raise MappingError(f"{gateway}:{NATPMP_PORT} did not answer NAT-PMP or PCP in {NATPMP_TRIES} tries")


def _natpmp_answer(op: int, size: int):
    """The result code of NAT-PMP's answer to opcode `op`, or None for any other datagram."""
    return lambda answer: (struct.unpack("!H", answer[2:4])[0]
                           if len(answer) >= size and answer[0] == 0 and answer[1] == 128 + op else None)


def _v4_mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ip}").packed


# --- UPnP IGD (miniupnpc) --------------------------------------------------------------------------------------

class UpnpClient:
    """UPnP IGD through miniupnpc, the library py-libp2p's UpnpManager wraps. Used directly because that
    manager asks for no lease (a mapping it leaves behind lasts for ever) and refuses any gateway whose
    external address Python does not call global. miniupnpc blocks (SSDP, HTTP), so every call runs in a
    thread; a cancelled call is waited for, which its own socket timeouts bound."""
    name = UPNP

    def __init__(self) -> None:
        self._igd: miniupnpc.UPnP | None = None

    async def map(self, transport: str, internal_port: int, lease: int, external_port: int | None) -> Mapping:
        try:
            igd = self._igd or await trio.to_thread.run_sync(self._discover)
            self._igd = igd
            return await trio.to_thread.run_sync(self._add, igd, transport, internal_port, lease, external_port)
        except MappingError:
            self._igd = None  # look for the gateway afresh next time: it may have restarted elsewhere
            raise

    async def unmap(self, mapping: Mapping) -> None:
        self._igd = self._igd or await trio.to_thread.run_sync(self._discover)
        await trio.to_thread.run_sync(self._delete, self._igd, mapping)

    @staticmethod
    def _discover() -> miniupnpc.UPnP:
        igd = miniupnpc.UPnP()
        igd.discoverdelay = UPNP_DISCOVERY_MS
        try:
            if igd.discover() == 0:
                raise MappingError("no UPnP gateway answered the SSDP search")
            igd.selectigd()
        except MappingError:
            raise
        except Exception as exc:  # miniupnpc raises the bare Exception with the UPnP error's name, and
            if str(exc) == "Success":  # "Success" when the search found nothing (errno 0 behind it)
                raise MappingError("no UPnP gateway answered the SSDP search") from None
            raise MappingError(f"no UPnP internet gateway: {exc}") from None
        return igd

    @staticmethod
    def _add(igd: miniupnpc.UPnP, transport: str, internal: int, lease: int, external: int | None) -> Mapping:
        try:
            ip = igd.externalipaddress()
        except Exception as exc:
            raise MappingError(f"the UPnP gateway gave no external address: {exc}") from None
        ports = [external or internal] + [random.randint(1024, 65535) for _ in range(UPNP_CONFLICT_TRIES - 1)]
        error = ""
        for port in ports:
            for granted in (lease, 0):  # 725: an IGDv1 that grants permanent leases only
                try:
                    igd.addportmapping(port, transport.upper(), igd.lanaddr, internal, DESCRIPTION, "", granted)
                    return _mapping(UPNP, transport, internal, ip, port, granted)
                except Exception as exc:
                    error = str(exc)
                    if error != "OnlyPermanentLeasesSupported":
                        break
            if error != "ConflictInMappingEntry":  # 718: another host holds this port; else give up
                break
        raise MappingError(f"the UPnP gateway refused to map {transport} {internal}: {error}")

    @staticmethod
    def _delete(igd: miniupnpc.UPnP, mapping: Mapping) -> None:
        try:
            igd.deleteportmapping(mapping.external_port, mapping.transport.upper())
        except Exception as exc:
            raise MappingError(f"the UPnP gateway did not delete {mapping.addr}: {exc}") from None


# --- the worker's mappings ----------------------------------------------------------------------------------

class PortMapper:
    """Holds the worker's mappings: map, renew at half the lease, retry with backoff, delete on release.

    `addrs()` is the address source for registration; `status()` is what /status shows."""

    def __init__(self, mode: str, lease: int, clients: list[Client] | None = None):
        self.mode = mode
        self.lease = lease
        if clients is None:
            clients = {"off": [], "natpmp": [NatPmpClient()], "upnp": [UpnpClient()],
                       "auto": [NatPmpClient(), UpnpClient()]}[mode]
        self.clients = clients
        self.mappings: list[Mapping] = []
        self.error: str | None = None
        self._held_by: Client | None = None
        self._told_unavailable = False
        self._stopped = False
        self._lock = trio.Lock()
        self._scope = trio.CancelScope()

    def addrs(self) -> list[str]:
        return [m.addr for m in self.mappings]

    def status(self) -> dict:
        return {"mode": self.mode, "protocol": self.mappings[0].protocol if self.mappings else None,
                "mappings": [m.as_json() for m in self.mappings], "error": self.error}

    async def run(self, ports: list[tuple[str, int]]) -> None:
        """Map `ports` and keep them mapped until `release` (or cancellation)."""
        if not self.clients or not ports:
            return
        backoff = Backoff(RETRY_FIRST, RETRY_CEILING)
        with self._scope:
            while not self._stopped:
                started = time.monotonic()
                try:
                    async with self._lock:
                        client, mappings = await self._map_all(ports)
                except MappingError as exc:
                    delay = backoff.next_delay()
                    self._failed(str(exc), delay)
                    await trio.sleep(delay)
                    continue
                backoff.reset()
                self._held(client, mappings, time.monotonic() - started)
                leases = [m.lease_seconds for m in mappings if m.lease_seconds] or [PERMANENT_RECHECK * 2]
                await trio.sleep(min(leases) / 2)

    async def release(self) -> None:
        """Delete our mappings (on leave): a lease left behind would forward the ports to whoever holds our
        LAN address next, until it ran out. No more are made afterwards."""
        self._stopped = True
        self._scope.cancel()
        with trio.move_on_after(RELEASE_TIMEOUT):
            async with self._lock:
                held, self.mappings = self.mappings, []
                self._gauge()
                for mapping in held:
                    try:
                        await self._held_by.unmap(mapping)
                        log.info(f"port mapping: deleted {mapping.addr}",
                                 extra={"event": "port_unmapped", **mapping.as_json()})
                    except MappingError as exc:
                        log.warning(f"port mapping: could not delete {mapping.addr}; it lapses with its lease",
                                    extra={"event": "port_unmap_failed", "error": str(exc), **mapping.as_json()})

    async def _map_all(self, ports: list[tuple[str, int]]) -> tuple[Client, list[Mapping]]:
        """Every port by one protocol: the one that worked last first, then the others in order."""
        ordered = sorted(self.clients, key=lambda c: c is not self._held_by)
        errors = []
        for client in ordered:
            previous = {(m.transport, m.internal_port): m.external_port for m in self.mappings
                        if client is self._held_by}
            made: list[Mapping] = []
            try:
                for transport, port in ports:
                    made.append(await client.map(transport, port, self.lease, previous.get((transport, port))))
            except MappingError as exc:
                metrics.PORT_MAPPING_ATTEMPTS.labels(client.name, "error").inc()
                errors.append(f"{client.name}: {exc}")
                for mapping in made:  # all or none by one protocol: take back the half-made set
                    with trio.move_on_after(RELEASE_TIMEOUT):
                        try:
                            await client.unmap(mapping)
                        except MappingError:
                            pass
                continue
            metrics.PORT_MAPPING_ATTEMPTS.labels(client.name, "ok").inc()
            return client, made
        raise MappingError("; ".join(errors))

    def _held(self, client: Client, mappings: list[Mapping], seconds: float) -> None:
        changed = client is not self._held_by or [m.addr for m in mappings] != self.addrs()
        self._held_by, self.mappings, self.error = client, mappings, None
        self._gauge()
        protocol = mappings[0].protocol  # pcp or natpmp by the NAT-PMP client
        fields = {"event": "port_mapped" if changed else "port_mapping_renewed", "protocol": protocol,
                  "external_addrs": self.addrs(), "lease_seconds": min(m.lease_seconds for m in mappings),
                  "seconds": round(seconds, 3)}
        verb = "holding" if changed else "renewed"
        log.log(logging.INFO if changed else logging.DEBUG,
                f"port mapping: {verb} {', '.join(self.addrs())} by {protocol}", extra=fields)

    def _failed(self, error: str, retry_in: float) -> None:
        lost, self.mappings, self.error = self.mappings, [], error
        self._gauge()
        fields = {"error": error, "retry_in": round(retry_in, 1)}
        if lost:
            log.warning(f"port mapping: lost {', '.join(m.addr for m in lost)}: {error}",
                        extra={"event": "port_mapping_lost", **fields})
        elif self.mode != "auto":  # asked for by name: every failure is worth a line
            log.warning(f"port mapping by {self.mode} failed: {error}",
                        extra={"event": "port_mapping_failed", **fields})
        elif not self._told_unavailable:  # auto: most networks have neither protocol; say so once
            self._told_unavailable = True
            log.info(f"port mapping: none by NAT-PMP or UPnP ({error}); carrying on without one",
                     extra={"event": "port_mapping_unavailable", **fields})
        else:
            log.debug("port mapping: still unavailable", extra=fields)

    def _gauge(self) -> None:
        for client in self.clients:
            held = len(self.mappings) if client is self._held_by else 0
            metrics.PORT_MAPPINGS.labels(client.name).set(held)
