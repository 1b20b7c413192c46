"""The worker: one libp2p host and the tasks that keep it registered, reserved at relays and connected.

Every long-lived task lives in the nursery `Worker.run` owns, and the per-peer tasks in a nursery of
`_keep_connected`'s own; cancelling `run` stops them all. `leave()` unregisters (the runner calls it on
SIGTERM, which Cloud Run sends before stopping a container).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2 import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.tools.anyio_service import background_trio_service

from shared import httpd, tracing
from shared.addresses import own_addrs
from shared.backoff import Backoff
from shared.host import ConnectionWatch, build_host, is_relayed, running
from shared.identity import Identity
from shared.registrar import Registrar
from shared.rendezvous_client import Change, PeerEntry, RendezvousClient, RendezvousError, Snapshot
from worker import chat, echo, events, metrics
from worker.connector import Connector, Timeouts
from worker.dialable import DialPolicy
from worker.events import PeerPath
from worker.holepunch import HolePuncher, connection_kinds
from worker.portmap import PortMapper, listen_ports
from worker.settings import WorkerSettings

log = logging.getLogger("worker")

MAX_RELAYS = 2
MAX_CONCURRENT_CONNECTS = 16
PAGES_PER_ROUND = 10  # of 100 peers: a round reads at most 1,000 registrations
NEW_PEERS_PER_ROUND = 64
FIRST_REGISTRATION_WAIT_S = 2.0
WATCH_GRACE_S = 2.0  # the watch stream's snapshot usually arrives within milliseconds


class Worker:
    def __init__(self, settings: WorkerSettings, identity: Identity):
        self.settings = settings
        self.identity = identity
        self.host = build_host(identity, settings.listen)
        # STOP role: accept connections relayed to us; the CLIENT side (dial, reserve) is the transport.
        self.circuit = CircuitV2Protocol(self.host, allow_hop=False)
        self.relay_transport = CircuitV2Transport(self.host, self.circuit,
                                                  RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT))
        self.puncher = HolePuncher(self.host, dial_timeout=3) if settings.holepunch else None
        self.tracer = events.Tracer()
        self.dial_policy = DialPolicy(settings.dial_scope, settings.public_networks)
        self.watch = ConnectionWatch(self.host)
        self.connector = Connector(self.host, self.relay_transport, self.puncher,
                                   Timeouts(settings.direct_dial_timeout, settings.relay_dial_timeout,
                                            settings.holepunch_timeout), self.watch, self.tracer)
        self.rendezvous = RendezvousClient(settings.rendezvous_url, identity)
        self.registrar = Registrar(self.rendezvous, settings.namespace, settings.ttl, self.current_addrs,
                                   metrics.REGISTRATIONS)
        self.port_mapper = PortMapper(settings.port_mapping, settings.port_mapping_lease)
        self.relays: dict[str, str] = {}  # relay peer ID -> our circuit address through it
        self.http_port: int | None = None
        self._busy: set[str] = set()
        self._known: dict[str, PeerEntry] = {}  # the namespace as the watch stream or the last poll showed it
        self._watching = trio.Event()  # set while the watch stream is live: no polling then
        self._relays_tried = trio.Event()  # the first round of reservations is over
        self._chatting: set[str] = set()
        self._connect_slots = trio.Semaphore(MAX_CONCURRENT_CONNECTS)
        self._relay_backoff: dict[str, tuple[Backoff, float]] = {}

    @property
    def peer_id(self) -> str:
        return str(self.identity.peer_id)

    @property
    def peers(self) -> dict[str, PeerPath]:
        return self.tracer.peers

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with (running(self.host, self.settings.listen), background_trio_service(self.circuit),
                    trio.open_nursery() as nursery):
            if self.puncher is not None:
                await nursery.start(self._run_service, self.puncher)
            self.host.set_stream_handler(echo.PROTOCOL, echo.serve)
            self.host.set_stream_handler(chat.PROTOCOL, chat.handler(self.peer_id))
            if self.settings.port is not None:
                self.http_port = await nursery.start(httpd.serve, self.settings.http_host, self.settings.port,
                                                     self.routes())
            log.info("worker started", extra={"peer": self.peer_id, "listen": [str(a) for a in self.host.get_addrs()],
                                              "namespace": self.settings.namespace,
                                              "rendezvous": self.settings.rendezvous_url})
            nursery.start_soon(self.port_mapper.run, listen_ports([str(a) for a in self.host.get_transport_addrs()]))
            nursery.start_soon(self._keep_relays, nursery)
            nursery.start_soon(self._register)
            nursery.start_soon(self._keep_connected)
            task_status.started(self)
        with trio.CancelScope(shield=True):
            await self.rendezvous.aclose()

    async def leave(self) -> None:
        """Unregister now rather than when the TTL runs out (the runner calls it on SIGTERM), then delete
        our port mappings at the gateway."""
        await self.registrar.unregister()
        await self.port_mapper.release()

    @staticmethod
    async def _run_service(service, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(service):
            task_status.started()
            await trio.sleep_forever()

    # --- registration -------------------------------------------------------------------------------

    async def _register(self) -> None:
        # Registered before its relay slots exist, a peer behind a NAT lists no address its peers can use:
        # the join they see fails and backs off. So the first registration waits for the first round of
        # reservations (they take a few round trips), but never long: a peer with no relay registers anyway.
        with trio.move_on_after(FIRST_REGISTRATION_WAIT_S):
            await self._relays_tried.wait()
        await self.registrar.keep_registered()

    def current_addrs(self) -> list[str]:
        announced = self.settings.announce + tuple(self.port_mapper.addrs())  # the gateway's mapped ports too
        return own_addrs(self.host, list(self.relays.values()), announced, self.settings.public_networks)

    # --- relays --------------------------------------------------------------------------------------

    async def _keep_relays(self, nursery: trio.Nursery) -> None:
        """Hold reservations with up to MAX_RELAYS relays: the bootstrap ones, then those registered."""
        while True:
            for relay_id in list(self.relays):
                if not connection_kinds(self.host, ID.from_base58(relay_id)):
                    self.tracer.emit(events.RelayLost(relay_id))
                    del self.relays[relay_id]
            if len(self.relays) < MAX_RELAYS:
                for addr in await self._relay_candidates():
                    if len(self.relays) >= MAX_RELAYS:
                        break
                    await self._try_reserve(addr, nursery)
            metrics.RELAY_RESERVATIONS.set(len(self.relays))
            self._relays_tried.set()
            await trio.sleep(self.settings.discover_interval)

    async def _relay_candidates(self) -> list[str]:
        """The bootstrap relays (the operator's), then those registered in RELAY_NAMESPACE whose peer IDs are
        trusted (RELAY_PEER_IDS): anyone can register there, so a registration alone proves nothing, and the
        trusted ones are looked up by ID, so no number of strangers' registrations hides them."""
        candidates = list(self.settings.relay)
        trusted = self.settings.relay_peer_ids
        namespace = self.settings.relay_namespace
        try:
            if trusted is None:  # '*': whoever is on the first page
                entries = (await self.rendezvous.discover_pages(namespace, max_pages=1)).entries
            else:
                entries = [e for peer in trusted if (e := await self.rendezvous.lookup(namespace, peer)) is not None]
            for entry in entries:
                candidates.extend(f"{a}/p2p/{entry.peer_id}" for a in entry.addrs
                                  if not is_relayed(a) and "/p2p/" not in a and "/ws" not in a
                                  and self.dial_policy.allows(a))
        except RendezvousError as exc:
            log.debug("could not list relays at the rendezvous", extra={"error": str(exc)})
        return list(dict.fromkeys(candidates))

    async def _try_reserve(self, addr: str, nursery: trio.Nursery) -> None:
        maddr = multiaddr.Multiaddr(addr)
        relay_id = ID.from_base58(maddr.get_peer_id())
        key = str(relay_id)
        if key in self.relays or key == self.peer_id:
            return
        backoff, not_before = self._relay_backoff.get(key, (Backoff(2.0, 120.0), 0.0))
        if time.monotonic() < not_before:
            return
        try:
            with trio.fail_after(self.settings.relay_dial_timeout):
                await self.host.connect(PeerInfo(relay_id, [maddr]))
                stream = await self.host.new_stream(relay_id, [HOP_PROTOCOL])
                reserved = await self.relay_transport.reserve(stream, relay_id, nursery)
                await stream.close()
            if not reserved:
                raise ConnectionError("the relay refused the reservation")
        except Exception as exc:
            delay = backoff.next_delay()
            self._relay_backoff[key] = (backoff, time.monotonic() + delay)
            self.tracer.emit(events.ReservationFailed(addr, repr(exc), round(delay, 2)))
            return
        self._relay_backoff.pop(key, None)
        base = addr if not addr.endswith(f"/p2p/{relay_id}") else addr[: -len(f"/p2p/{relay_id}")]
        self.relays[key] = f"{base}/p2p/{relay_id}/p2p-circuit"
        self.tracer.emit(events.Reserved(addr, self.relays[key]))

    # --- discovery and connections -------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Tend the namespace's peers every DISCOVER_INTERVAL. While the watch stream is live (`_watch`), what
        it told us is the namespace, and the rounds only check each connection and retry failed peers; while
        it is broken, each round polls instead: bounded (PAGES_PER_ROUND pages, NEW_PEERS_PER_ROUND new
        connects), a large namespace swept over several rounds from the cookie where the last one stopped."""
        backoff = Backoff()
        cookie, swept = None, set()
        async with trio.open_nursery() as peer_tasks:  # one task per peer being tended, owned here
            peer_tasks.start_soon(self._watch, peer_tasks)
            with trio.move_on_after(WATCH_GRACE_S):  # give the stream its chance before the first poll
                await self._watching.wait()
            while True:
                if self._watching.is_set():
                    cookie = None  # a poll after the stream breaks sweeps from the start
                    entries = list(self._known.values())
                else:
                    try:
                        with tracing.span("discover", attributes={"namespace": self.settings.namespace}):
                            found = await self.rendezvous.discover_pages(self.settings.namespace, cookie,
                                                                         PAGES_PER_ROUND)
                    except RendezvousError as exc:
                        delay = backoff.next_delay(exc.retry_after)
                        log.warning(f"discovery failed: {exc}; retrying in {delay:.1f} s",
                                    extra={"retry_in": round(delay, 2)})
                        await trio.sleep(delay)
                        continue
                    backoff.reset()
                    if cookie is None:
                        swept = set()  # a sweep of the namespace begins
                    entries = self._dialable([e for e in found.entries if e.peer_id != self.peer_id])
                    self._known.update((e.peer_id, e) for e in entries)
                    swept |= {e.peer_id for e in entries}
                    if found.more:
                        cookie = found.cookie
                    else:  # the sweep is complete: whoever it did not see has left
                        for peer in set(self._known) - swept:
                            self._depart(peer, peer_tasks)
                        cookie = None
                metrics.DISCOVERED_PEERS.set(len(self._known))
                self._forget_unlisted()
                for entry in self._choose(entries):
                    self._start_tending(entry, peer_tasks)
                await trio.sleep(self.settings.discover_interval)

    async def _watch(self, peer_tasks: trio.Nursery) -> None:
        """Changes as they happen (GET /peers/watch): a peer that joins, or registers new addresses while we
        cannot reach it, is dialed at once; one that leaves or expires is dropped, its connections closed.
        A snapshot (at the start, or after the server resynced us) replaces what we knew. While the stream
        is broken, `_watching` is clear and the rounds of `_keep_connected` poll instead."""
        backoff, last_event = Backoff(), None
        while True:
            try:
                async for change in self.rendezvous.watch(self.settings.namespace, last_event):
                    backoff.reset()
                    last_event = change.event_id or last_event
                    self._watching.set()
                    if isinstance(change, Snapshot):
                        self._replace_known(change.entries, peer_tasks)
                    elif change.entry.peer_id != self.peer_id:
                        self._apply(change, peer_tasks)
            except RendezvousError as exc:  # cannot open, or broke: the rounds poll meanwhile
                self._watching = trio.Event()
                delay = backoff.next_delay(exc.retry_after)
                log.info(f"watching the namespace failed: {exc}; polling, and watching again in {delay:.1f} s",
                         extra={"retry_in": round(delay, 2)})
                await trio.sleep(delay)
            # else the server ended the stream (its time limit, or a replica draining): resume at once

    def _replace_known(self, entries: list[PeerEntry], peer_tasks: trio.Nursery) -> None:
        listed = self._dialable([e for e in entries if e.peer_id != self.peer_id])
        for peer in set(self._known) - {e.peer_id for e in listed}:
            self._depart(peer, peer_tasks)
        self._known = {e.peer_id: e for e in listed}
        for entry in self._choose(listed):
            self._start_tending(entry, peer_tasks)

    def _apply(self, change: Change, peer_tasks: trio.Nursery) -> None:
        peer = change.entry.peer_id
        if change.kind in ("leave", "expire"):
            self._depart(peer, peer_tasks)
            return
        entry = self._dialable([change.entry])[0]
        before = self._known.get(peer)
        self._known[peer] = entry
        record = self.peers.get(peer)
        if record is not None and record.connected:
            return
        if record is not None and before is not None and before.addrs != entry.addrs:
            self.tracer.emit(events.Readdressed(peer))  # new addresses (a relay slot, say): no waiting out a retry
        if change.kind == "join" or record is None or time.monotonic() >= record.retry_at:
            self._start_tending(entry, peer_tasks)

    def _depart(self, peer_id: str, peer_tasks: trio.Nursery) -> None:
        """A peer that left the namespace (or whose registration expired): we close our connections to it,
        unless it is one of our relays, and forget it."""
        self._known.pop(peer_id, None)
        if peer_id in self.relays:
            return
        if connection_kinds(self.host, ID.from_base58(peer_id)):
            peer_tasks.start_soon(self._drop, peer_id)
        else:
            self._forget_if_gone(peer_id)

    def _forget_unlisted(self) -> None:
        """Forget the records of peers no longer listed to which no connection is left and which no task is
        tending (a peer that dialed us without registering keeps its record while it stays connected)."""
        for peer_id in [p for p in self.peers if p not in self._known]:
            self._forget_if_gone(peer_id)

    def _forget_if_gone(self, peer_id: str) -> None:
        if peer_id not in self._busy and not connection_kinds(self.host, ID.from_base58(peer_id)):
            self.tracer.emit(events.Departed(peer_id))

    async def _drop(self, peer_id: str) -> None:
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:  # already closing: the connection is gone either way
            log.debug("closing a departed peer's connection failed", extra={"peer": peer_id, "error": repr(exc)})
        if peer_id not in self._known:  # it may have come back meanwhile
            self.tracer.emit(events.Departed(peer_id))

    def _start_tending(self, entry: PeerEntry, peer_tasks: trio.Nursery) -> None:
        if entry.peer_id not in self._busy:
            self._busy.add(entry.peer_id)
            peer_tasks.start_soon(self._tend_peer, entry, peer_tasks)

    def _dialable(self, entries: list[PeerEntry]) -> list[PeerEntry]:
        """Each entry with only the addresses we may dial (worker/dialable.py); a peer with none left is
        still listed, so a connection it opens to us is adopted and kept."""
        own = self.dial_policy.public_ips(self.current_addrs())
        out = []
        for entry in entries:
            allowed = tuple(self.dial_policy.filter_peer(entry.addrs, own))
            if len(allowed) < len(entry.addrs):
                log.debug("not dialing some registered addresses",
                          extra={"peer": entry.peer_id, "refused": sorted(set(entry.addrs) - set(allowed))})
            out.append(dataclasses.replace(entry, addrs=allowed))
        return out

    def _choose(self, entries: list[PeerEntry]) -> list[PeerEntry]:
        """The connect policy (all, or N at random), keeping the peers we are already connected to, and at
        most NEW_PEERS_PER_ROUND others this round, at random (a namespace full of strangers' registrations
        must not queue our connects behind theirs in registration order)."""
        held = [e for e in entries if e.peer_id in self.peers and self.peers[e.peer_id].connected]
        rest = [e for e in entries if e not in held]
        room = NEW_PEERS_PER_ROUND if self.settings.connect is None else max(0, self.settings.connect - len(held))
        if self.settings.connect is not None:
            held = held[: self.settings.connect]
        return held + random.sample(rest, min(room, NEW_PEERS_PER_ROUND, len(rest)))

    async def _tend_peer(self, entry: PeerEntry, peer_tasks: trio.Nursery) -> None:
        """Connect to one peer, or check that its connection still carries our echo."""
        try:
            record = self.tracer.record(entry.peer_id)
            if record.connected:
                await self._check_alive(entry, record)
            elif time.monotonic() >= record.retry_at:
                # outside the slot: a peer whose ID sorts lower (any ID can be chosen) must not hold one
                await self._yield_to_lower_id(entry)
                async with self._connect_slots:
                    await self.connector.connect(entry)
                if record.connected and self.settings.chat_greeting and entry.peer_id not in self._chatting:
                    self._chatting.add(entry.peer_id)
                    peer_tasks.start_soon(self._chat, entry.peer_id)
        finally:
            self._busy.discard(entry.peer_id)

    async def _chat(self, peer_id: str) -> None:
        """Greet a peer over our chat protocol and answer it for as long as it talks (the browser demo)."""
        try:
            stream = await self.host.new_stream(ID.from_base58(peer_id), [chat.PROTOCOL])
            await chat.converse(stream, self.peer_id, self.settings.chat_greeting)
        except Exception as exc:
            log.info("chat: could not talk to the peer", extra={"peer": peer_id, "error": repr(exc)})
        finally:
            self._chatting.discard(peer_id)

    async def _yield_to_lower_id(self, entry: PeerEntry) -> None:
        # When two workers discover each other at once, both would dial and end with two connections (and
        # two hole punches). The peer with the lower ID dials; the other waits long enough for that dial to
        # reach it, and dials itself only if it did not.
        if self.peer_id < entry.peer_id:
            return
        budget = self.settings.direct_dial_timeout + self.settings.relay_dial_timeout + 1.0
        peer = ID.from_base58(entry.peer_id)
        await self.watch.wait_until(lambda: bool(connection_kinds(self.host, peer)), budget)

    async def _check_alive(self, entry: PeerEntry, record: PeerPath) -> None:
        peer = ID.from_base58(entry.peer_id)
        kinds = connection_kinds(self.host, peer)
        try:
            if not kinds:
                raise ConnectionError("no connection is left")
            rtt_ms, over, _ = await self.connector.prove(peer)
        except Exception as exc:
            self.tracer.emit(events.Lost(entry.peer_id, repr(exc)))
            return
        upgraded = record.path == "relayed" and "direct" in kinds  # the peer's DCUtR got through later
        self.tracer.emit(events.EchoAnswered(entry.peer_id, rtt_ms, over, upgraded))

    # --- HTTP endpoints ------------------------------------------------------------------------------

    def routes(self) -> dict:
        return {"/healthz": lambda: httpd.json_reply({"status": "ok"}),
                "/status": lambda: httpd.json_reply(self.status()),
                "/metrics": httpd.metrics_reply}

    def status(self) -> dict:
        counts: dict[str, int] = {}
        for record in self.peers.values():
            counts[record.path] = counts.get(record.path, 0) + 1
        return {"peer_id": self.peer_id, "namespace": self.settings.namespace,
                "rendezvous": self.settings.rendezvous_url, "registered_addrs": self.registrar.registered_addrs,
                "relays": self.relays, "port_mapping": self.port_mapper.status(), "paths": counts,
                "peers": [r.as_json() for r in sorted(self.peers.values(), key=lambda r: r.peer_id)]}
