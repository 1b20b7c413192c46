"""How the worker gets a proven connection to one peer.

Order: a direct dial to the peer's own addresses; else a dial through a relay (`/p2p-circuit`); then, over
the relayed connection, a DCUtR upgrade to a direct connection (both peers dial each other at once, so
each NAT lets the other's packets in). Whatever the path, one round trip of our echo protocol proves it.
Each step is an event (worker/events.py); the tracer turns it into the log line, metrics and records.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2 import CircuitV2Transport
from opentelemetry.trace import StatusCode

from shared import tracing
from shared.host import ConnectionWatch, connections_to, is_relayed
from shared.rendezvous_client import PeerEntry
from worker import echo, events
from worker.holepunch import HolePuncher, connection_kinds, listens_on_quic, stream_kind

log = logging.getLogger("worker.connect")

ECHO_TIMEOUT = 5.0
PEER_DIAL_GRACE = 1.0
DIAL_HEAD_START = 0.25  # before the next address is tried, as go-libp2p does
RELAY_HEAD_START = 0.5  # the direct dials' lead over the relay dial (go-libp2p's dial ranker gives 500 ms)


@dataclasses.dataclass(frozen=True)
class Timeouts:
    direct: float
    relay: float
    holepunch: float


@dataclasses.dataclass
class _Outcome:
    path: str = "connecting"
    initiated_by: str = "us"


class Connector:
    def __init__(self, host: IHost, relay_transport: CircuitV2Transport, puncher: HolePuncher | None,
                 timeouts: Timeouts, watch: ConnectionWatch, tracer: events.Tracer):
        self.host = host
        self.relay_transport = relay_transport
        self.puncher = puncher
        self.timeouts = timeouts
        self.watch = watch
        self.tracer = tracer

    async def connect(self, entry: PeerEntry) -> None:
        """Reach `entry`'s peer on a proven path (a Connected event), or fail with the reason (ConnectFailed)."""
        peer_id = ID.from_base58(entry.peer_id)
        self.tracer.emit(events.ConnectStarted(entry.peer_id))
        started = time.monotonic()
        outcome = _Outcome()
        # the hole punch's own task may outlive the moment its direct connection exists: it is owned here
        async with trio.open_nursery() as punching:
            with tracing.span("connect", attributes={"peer": entry.peer_id}) as span:
                try:
                    await self._establish(peer_id, entry, outcome, started, punching)
                    rtt_ms, over, transport = await self.prove(peer_id)
                except Exception as exc:  # any fault with this one peer ends this attempt, never the worker
                    span.set_status(StatusCode.ERROR, type(exc).__name__)
                    self.tracer.emit(events.ConnectFailed(entry.peer_id, f"{type(exc).__name__}: {exc}"))
                    return
                finally:
                    span.set_attributes({"path": outcome.path, "initiated_by": outcome.initiated_by})
                self.tracer.emit(events.Connected(entry.peer_id, outcome.path, outcome.initiated_by,
                                                  round(time.monotonic() - started, 4), rtt_ms, over, transport))

    async def _establish(self, peer_id: ID, entry: PeerEntry, outcome: _Outcome, started: float,
                         punching: trio.Nursery) -> None:
        kinds = connection_kinds(self.host, peer_id)
        if kinds:  # the peer dialed us first: adopt its connection instead of making a second one
            outcome.initiated_by = "them"
            if kinds == {"direct"}:
                outcome.path = "direct"
            elif "direct" in kinds:  # it came through the relay, and its DCUtR already made it direct
                outcome.path = "hole-punched"
            else:
                # as long as the peer's own wait for its punch (_upgrade): a second DCUtR round can land late
                outcome.path = await self._await_direct(peer_id, time.monotonic(),
                                                        self.timeouts.holepunch + PEER_DIAL_GRACE, "them")
            return
        # QUIC addresses first when we listen on QUIC: the hole punch's preference too (worker/holepunch.py)
        quic_first = listens_on_quic(self.host)
        direct = sorted((a for a in entry.addrs if not is_relayed(a)), key=lambda a: not (quic_first and "/quic" in a))
        circuits = [a for a in entry.addrs if is_relayed(a)]
        relay_addr = await self._direct_or_relayed(peer_id, direct, circuits, started)
        if relay_addr is None:
            outcome.path = "direct"
            return
        relayed_at = time.monotonic()
        self.tracer.emit(events.Relayed(entry.peer_id, relay_addr, round(relayed_at - started, 4)))
        outcome.path = await self._upgrade(peer_id, relayed_at, punching)

    async def _direct_or_relayed(self, peer_id: ID, direct: list[str], circuits: list[str],
                                 started: float) -> str | None:
        """None once a direct dial wins; else the relay address of a relayed connection (raises when
        neither path exists). Behind most NATs the direct dials only time out (the SYNs are dropped), so
        the relay dial does not wait for that: it starts RELAY_HEAD_START after them, as go-libp2p ranks
        relay addresses. A relay dial that wins stops the direct dials still waiting; one that loses to a
        direct dial is allowed to finish, and its connection closed."""
        won_direct, direct_over = trio.Event(), trio.Event()
        relayed: list[str] = []
        errors: list[Exception] = []

        async def dial_direct() -> None:
            try:
                if direct and await self._dial_direct(peer_id, direct):
                    won_direct.set()
                    return
                self.tracer.emit(events.DirectDialFailed(str(peer_id), tuple(direct),
                                                         round(time.monotonic() - started, 4)))
            finally:
                direct_over.set()

        async def dial_relayed(cancel_direct: trio.CancelScope) -> None:
            with trio.move_on_after(RELAY_HEAD_START):
                await direct_over.wait()
            if won_direct.is_set():
                return
            try:
                relayed.append(await self._dial_relayed(peer_id, circuits))
            except ConnectionError as exc:
                errors.append(exc)
                return
            if won_direct.is_set():  # the direct dial won meanwhile: this connection is surplus
                await close_relayed(self.host, peer_id)
            else:
                cancel_direct.cancel()

        async with trio.open_nursery() as nursery:
            direct_scope = trio.CancelScope()

            async def direct_task() -> None:
                with direct_scope:
                    await dial_direct()
            nursery.start_soon(direct_task)
            if circuits:
                nursery.start_soon(dial_relayed, direct_scope)
        if won_direct.is_set():
            return None
        if relayed:
            return relayed[0]
        if errors:
            raise errors[0]
        raise ConnectionError("no direct address answered and the peer registered no relay address")

    async def _dial_direct(self, peer_id: ID, addrs: list[str]) -> bool:
        """Dial the direct addresses one after another, each given a head start (happy eyeballs).

        Attempts that lose the race are allowed to finish and their connection is closed: cancelling a
        dial halfway through its handshake leaves the peer holding a connection nobody answers on, and
        py-libp2p may later open streams on it.
        """
        network = self.host.get_network()
        won = trio.Event()
        finished: list[trio.Event] = []

        async def attempt(addr: str, done: trio.Event) -> None:
            try:
                conn = await network.dial_addr(multiaddr.Multiaddr(addr), peer_id)
            except Exception as exc:
                log.debug("direct dial failed", extra={"peer": str(peer_id), "addr": addr, "error": repr(exc)})
            else:
                if won.is_set():
                    await conn.close()
                won.set()
            finally:
                done.set()

        with trio.move_on_after(self.timeouts.direct):
            async with trio.open_nursery() as nursery:
                for addr in addrs:
                    finished.append(trio.Event())
                    nursery.start_soon(attempt, addr, finished[-1])
                    with trio.move_on_after(DIAL_HEAD_START):
                        await _first_of(won, finished[-1])
                    if won.is_set():
                        break
                for done in finished:  # until one wins or every attempt has ended
                    await _first_of(won, done)
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
            self.tracer.emit(events.RelayDialFailed(str(peer_id), addr, errors[-1]))
        raise ConnectionError("every relay failed: " + "; ".join(errors))

    async def _upgrade(self, peer_id: ID, relayed_at: float, punching: trio.Nursery) -> str:
        """DCUtR over the relayed connection, started at once. -> 'hole-punched' or 'relayed'.

        The path is known the moment a direct connection exists: py-libp2p's exchange returns up to 0.3 s
        after that (it sleeps 0.1 s after its dial and looks for the connection every 0.2 s), so it runs on
        in `punching` while we go on to prove the connection."""
        if self.puncher is None:
            return "relayed"
        self.tracer.emit(events.HolePunchStarted(str(peer_id)))
        exchanged = trio.Event()

        async def exchange() -> None:
            with tracing.span("holepunch", attributes={"peer": str(peer_id)}):
                with trio.move_on_after(self.timeouts.holepunch):
                    await self.puncher.initiate_hole_punch(peer_id)
            exchanged.set()
        punching.start_soon(exchange)
        direct = lambda: "direct" in connection_kinds(self.host, peer_id)  # noqa: E731
        async with trio.open_nursery() as waiting:
            async def until_exchanged() -> None:
                await exchanged.wait()
                waiting.cancel_scope.cancel()
            waiting.start_soon(until_exchanged)
            if await self.watch.wait_until(direct, self.timeouts.holepunch + PEER_DIAL_GRACE):
                waiting.cancel_scope.cancel()
        # The peer dials us back during the exchange; its connection may land just after ours gave up.
        return await self._await_direct(peer_id, relayed_at, PEER_DIAL_GRACE, "us")

    async def _await_direct(self, peer_id: ID, relayed_at: float, patience: float, initiated_by: str) -> str:
        if await self.watch.wait_until(lambda: "direct" in connection_kinds(self.host, peer_id), patience):
            self.tracer.emit(events.HolePunched(str(peer_id), round(time.monotonic() - relayed_at, 4), initiated_by))
            return "hole-punched"
        self.tracer.emit(events.StayedRelayed(str(peer_id)))
        return "relayed"

    async def prove(self, peer_id: ID) -> tuple[float, str, str]:
        """One echo round trip on a new stream -> (RTT in ms, the kind of connection it ran over, that
        connection's transport); raises when the peer does not answer."""
        with trio.fail_after(ECHO_TIMEOUT):
            stream = await self.host.new_stream(peer_id, [echo.PROTOCOL])
            over, transport = stream_kind(self.host, stream)
            client = echo.EchoClient(stream)
            try:
                rtt = await client.round_trip()
            finally:
                await client.close()
        return round(rtt * 1000, 3), over, transport


async def close_relayed(host: IHost, peer_id: ID) -> None:
    for conn in connections_to(host, peer_id):
        try:
            if all(is_relayed(a) for a in conn.get_transport_addresses()):
                await conn.close()
        except Exception as exc:  # closing is best effort: the connection may be gone already
            log.debug("closing a surplus relayed connection failed", extra={"peer": str(peer_id), "error": repr(exc)})


async def _first_of(*conditions: trio.Event) -> None:
    """Return as soon as any of the events is set."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()
        for event in conditions:
            nursery.start_soon(wait, event)
