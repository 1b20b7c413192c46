"""How the worker gets a proven connection to one peer, and the record of the path it took.

Order: a direct dial to the peer's own addresses; else a dial through a relay (`/p2p-circuit`); then, over
the relayed connection, a DCUtR upgrade to a direct connection (both peers dial each other at once, so
each NAT lets the other's packets in). Whatever the path, one round trip of our echo protocol proves it.
Each step is a `holepunch:` log line with structured fields, a metric and part of the /status record.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time

import multiaddr
import trio
from opentelemetry.trace import StatusCode
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2 import CircuitV2Transport

from rendezvous import tracing
from worker import echo, metrics
from worker.holepunch import HolePuncher, connection_kinds, stream_kind
from worker.host import is_relayed
from worker.rendezvous_client import PeerEntry

log = logging.getLogger("worker.connect")

ECHO_TIMEOUT = 5.0
PEER_DIAL_GRACE = 1.0
DIAL_HEAD_START = 0.25  # before the next address is tried, as go-libp2p does
FAILED_RETRY_FIRST = 2.0
FAILED_RETRY_CEILING = 60.0


@dataclasses.dataclass
class PeerPath:
    """What we know of our connection to one peer; served as JSON on /status."""
    peer_id: str
    path: str = "connecting"  # direct | relayed | hole-punched | failed | connecting
    initiated_by: str = "us"  # us | them (the peer dialed first; we adopted its connection)
    connect_seconds: float | None = None  # from the start of our attempt to the path being settled
    time_to_direct_seconds: float | None = None  # hole-punched only: relayed connection -> direct one
    rtt_ms: float | None = None
    over: str | None = None  # the kind of connection the last echo actually ran over
    attempts: int = 0
    error: str | None = None
    updated: float = dataclasses.field(default_factory=time.time)
    retry_at: float = 0.0  # monotonic; a failed peer is tried again after it

    @property
    def connected(self) -> bool:
        return self.path in ("direct", "relayed", "hole-punched")

    def as_json(self) -> dict:
        fields = dataclasses.asdict(self)
        fields.pop("retry_at")
        return fields


@dataclasses.dataclass(frozen=True)
class Timeouts:
    direct: float
    relay: float
    holepunch: float


class Connector:
    def __init__(self, host: IHost, relay_transport: CircuitV2Transport, puncher: HolePuncher | None,
                 timeouts: Timeouts):
        self.host = host
        self.relay_transport = relay_transport
        self.puncher = puncher
        self.timeouts = timeouts

    async def connect(self, entry: PeerEntry, record: PeerPath) -> None:
        """Settle `record` on a proven path to `entry`'s peer, or on 'failed' with the reason."""
        peer_id = ID.from_base58(entry.peer_id)
        record.attempts += 1
        started = time.monotonic()
        with tracing.span("connect", attributes={"peer": entry.peer_id}) as span:
            try:
                await self._establish(peer_id, entry, record, started)
                await self.prove(peer_id, record)
            except Exception as exc:  # any fault with this one peer ends this attempt, never the worker
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                self._fail(record, f"{type(exc).__name__}: {exc}")
                return
            finally:
                span.set_attributes({"path": record.path, "initiated_by": record.initiated_by})
        record.connect_seconds = round(time.monotonic() - started, 4)
        record.error = None
        metrics.CONNECTIONS.labels(record.path).inc()
        metrics.CONNECT_SECONDS.labels(record.path).observe(record.connect_seconds)
        log.info(f"holepunch: connected to {entry.peer_id} path={record.path} rtt={record.rtt_ms} ms",
                 extra={"event": "connected", "peer": entry.peer_id, "path": record.path,
                        "initiated_by": record.initiated_by, "seconds": record.connect_seconds,
                        "time_to_direct": record.time_to_direct_seconds, "rtt_ms": record.rtt_ms, "over": record.over})

    async def _establish(self, peer_id: ID, entry: PeerEntry, record: PeerPath, started: float) -> None:
        kinds = connection_kinds(self.host, peer_id)
        if kinds:  # the peer dialed us first: adopt its connection instead of making a second one
            record.initiated_by = "them"
            if kinds == {"direct"}:
                record.path = "direct"
            elif "direct" in kinds:  # it came through the relay, and its DCUtR already made it direct
                record.path = "hole-punched"
            else:
                await self._await_direct(peer_id, record, time.monotonic(), self.timeouts.holepunch)
            return
        record.initiated_by = "us"
        direct = [a for a in entry.addrs if not is_relayed(a)]
        circuits = [a for a in entry.addrs if is_relayed(a)]
        if direct and await self._dial_direct(peer_id, direct):
            record.path = "direct"
            return
        log.info(f"holepunch: no direct path to {entry.peer_id}; trying {len(circuits)} relay address(es)",
                 extra={"event": "direct_failed", "peer": entry.peer_id, "addrs": direct,
                        "seconds": round(time.monotonic() - started, 4)})
        if not circuits:
            raise ConnectionError("no direct address answered and the peer registered no relay address")
        relay_addr = await self._dial_relayed(peer_id, circuits)
        relayed_at = time.monotonic()
        log.info(f"holepunch: relayed connection to {entry.peer_id} via {relay_addr}",
                 extra={"event": "relayed", "peer": entry.peer_id, "relay": relay_addr,
                        "seconds": round(relayed_at - started, 4)})
        await self._upgrade(peer_id, record, relayed_at)

    async def _dial_direct(self, peer_id: ID, addrs: list[str]) -> bool:
        """Dial the direct addresses one after another, each given a head start (happy eyeballs).

        Attempts that lose the race are allowed to finish and their connection is closed: cancelling a
        dial halfway through its handshake leaves the peer holding a connection nobody answers on, and
        py-libp2p may later open streams on it.
        """
        network = self.host.get_network()
        won = trio.Event()

        async def attempt(addr: str, failed: trio.Event) -> None:
            try:
                conn = await network.dial_addr(multiaddr.Multiaddr(addr), peer_id)
            except Exception as exc:
                log.debug("direct dial failed", extra={"peer": str(peer_id), "addr": addr, "error": repr(exc)})
                failed.set()
                return
            if won.is_set():
                await conn.close()
            won.set()

        failures: list[trio.Event] = []
        with trio.move_on_after(self.timeouts.direct):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    failures.append(trio.Event())
                    nursery.start_soon(attempt, addr, failures[-1])
                    with trio.move_on_after(DIAL_HEAD_START):
                        while not (won.is_set() or failures[-1].is_set()):
                            await trio.sleep(0.005)
                    if won.is_set():
                        break
                while not (won.is_set() or all(f.is_set() for f in failures)):
                    await trio.sleep(0.005)
        return won.is_set() and "direct" in connection_kinds(self.host, peer_id)

    async def _dial_relayed(self, peer_id: ID, circuits: list[str]) -> str:
        errors = []
        for addr in random.sample(circuits, len(circuits)):  # spread peers over their relays
            target = multiaddr.Multiaddr(addr if addr.endswith(f"/p2p/{peer_id}") else f"{addr}/p2p/{peer_id}")
            try:
                with trio.fail_after(self.timeouts.relay):
                    await self.relay_transport.dial(target)
                return addr
            except trio.TooSlowError:
                errors.append(f"{addr}: no answer in {self.timeouts.relay} s")
            except Exception as exc:
                errors.append(f"{addr}: {exc}")
            log.warning("holepunch: relay dial failed", extra={"event": "relay_failed", "peer": str(peer_id),
                                                                "relay": addr, "error": errors[-1]})
        raise ConnectionError("every relay failed: " + "; ".join(errors))

    async def _upgrade(self, peer_id: ID, record: PeerPath, relayed_at: float) -> None:
        """DCUtR over the relayed connection, started at once; the path ends hole-punched or relayed."""
        if self.puncher is None:
            record.path = "relayed"
            return
        metrics.HOLEPUNCH_ATTEMPTS.inc()
        with tracing.span("holepunch", attributes={"peer": str(peer_id)}) as span:
            with trio.move_on_after(self.timeouts.holepunch):
                await self.puncher.initiate_hole_punch(peer_id)
            # The peer dials us back during the exchange; its connection may land just after ours gave up.
            await self._await_direct(peer_id, record, relayed_at, PEER_DIAL_GRACE)
            span.set_attribute("path", record.path)

    async def _await_direct(self, peer_id: ID, record: PeerPath, relayed_at: float, patience: float) -> None:
        with trio.move_on_after(patience):
            while "direct" not in connection_kinds(self.host, peer_id):
                await trio.sleep(0.02)
        if "direct" in connection_kinds(self.host, peer_id):
            record.path = "hole-punched"
            record.time_to_direct_seconds = round(time.monotonic() - relayed_at, 4)
            if record.initiated_by == "us":
                metrics.HOLEPUNCH_SUCCESSES.inc()
                metrics.TIME_TO_DIRECT.observe(record.time_to_direct_seconds)
            log.info(f"holepunch: {peer_id} upgraded from relayed to direct in {record.time_to_direct_seconds} s",
                     extra={"event": "hole_punched", "peer": str(peer_id), "seconds": record.time_to_direct_seconds})
        else:
            record.path = "relayed"
            log.info(f"holepunch: no direct connection to {peer_id}; staying relayed",
                     extra={"event": "stay_relayed", "peer": str(peer_id)})

    async def prove(self, peer_id: ID, record: PeerPath) -> None:
        """One echo round trip on a new stream; raises when the peer does not answer."""
        with trio.fail_after(ECHO_TIMEOUT):
            stream = await self.host.new_stream(peer_id, [echo.PROTOCOL])
            record.over = stream_kind(self.host, stream)
            client = echo.EchoClient(stream)
            try:
                rtt = await client.round_trip()
            finally:
                await client.close()
        record.rtt_ms = round(rtt * 1000, 3)
        record.updated = time.time()
        metrics.ECHO_RTT.labels(record.over).observe(rtt)

    def _fail(self, record: PeerPath, reason: str) -> None:
        delay = min(FAILED_RETRY_CEILING, FAILED_RETRY_FIRST * 2 ** min(record.attempts - 1, 10))
        delay = random.uniform(delay / 2, delay)
        record.path, record.error, record.updated = "failed", reason, time.time()
        record.retry_at = time.monotonic() + delay
        metrics.CONNECTIONS.labels("failed").inc()
        log.warning(f"holepunch: cannot reach {record.peer_id}: {reason}; retrying in {delay:.1f} s",
                    extra={"event": "failed", "peer": record.peer_id, "error": reason, "retry_in": round(delay, 2)})
