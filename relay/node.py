"""The relay: a circuit relay v2 hop with go-libp2p's limits, a fixed identity, and (when told where the
rendezvous is) a registration of its own so workers can find it there.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import multiaddr
import trio
from libp2p.relay.circuit_v2 import RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from relay import metrics
from relay.limits import LimitedResourceManager
from relay.protocol import CountingRelayProtocol
from relay.settings import RelaySettings
from shared import httpd
from shared.addresses import listen_addrs
from shared.host import build_host, running
from shared.identity import Identity
from shared.registrar import Registrar
from shared.rendezvous_client import RendezvousClient

log = logging.getLogger("relay")


class Relay:
    def __init__(self, settings: RelaySettings, identity: Identity):
        self.settings = settings
        self.identity = identity
        announce = [multiaddr.Multiaddr(a) for a in settings.announce]
        self.host = build_host(identity, settings.listen, announce)
        limits = settings.limits
        library_limits = RelayLimits(duration=limits.circuit_duration, data=limits.circuit_bytes,
                                     max_circuit_conns=limits.max_circuits_per_peer,
                                     max_reservations=limits.max_reservations,
                                     reservation_ttl=limits.reservation_ttl)
        self.protocol = CountingRelayProtocol(self.host, limits=library_limits, allow_hop=True)
        self.protocol.resource_manager = LimitedResourceManager(library_limits, self.host,
                                                                limits.max_reservations_per_ip)
        self.rendezvous = (RendezvousClient(settings.rendezvous_url, identity)
                           if settings.rendezvous_url else None)
        self.registrar = (Registrar(self.rendezvous, settings.relay_namespace, settings.ttl, self.addrs,
                                    metrics.REGISTRATIONS)
                          if self.rendezvous is not None else None)
        self.http_port: int | None = None

    @property
    def peer_id(self) -> str:
        return str(self.identity.peer_id)

    def addrs(self) -> list[str]:
        """Where the relay can be dialed, without the /p2p suffix."""
        return list(self.settings.announce) or listen_addrs(self.host)

    def multiaddrs(self) -> list[str]:
        return [f"{a}/p2p/{self.peer_id}" for a in self.addrs()]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with (running(self.host, self.settings.listen), background_trio_service(self.protocol),
                    trio.open_nursery() as nursery):
            if self.settings.port is not None:
                self.http_port = await nursery.start(httpd.serve, self.settings.http_host, self.settings.port,
                                                     self.routes())
            log.info("relay started", extra={"peer": self.peer_id, "multiaddrs": self.multiaddrs()})
            if self.registrar is not None:
                nursery.start_soon(self.registrar.keep_registered)
            nursery.start_soon(self._sample_gauges)
            task_status.started(self)
        if self.rendezvous is not None:
            with trio.CancelScope(shield=True):
                await self.rendezvous.aclose()

    async def leave(self) -> None:
        """Unregister from the rendezvous before the process stops (the runner calls it on SIGTERM)."""
        if self.registrar is not None:
            await self.registrar.unregister()

    async def _sample_gauges(self) -> None:
        while True:
            metrics.ACTIVE_RESERVATIONS.set(self.protocol.resource_manager.active())
            metrics.CONNECTED_PEERS.set(len(self.host.get_network().connections))
            await trio.sleep(5)

    def routes(self) -> dict:
        return {"/healthz": lambda: httpd.json_reply({"status": "ok"}),
                "/status": lambda: httpd.json_reply(self.status()),
                "/metrics": httpd.metrics_reply}

    def status(self) -> dict:
        return {"peer_id": self.peer_id, "multiaddrs": self.multiaddrs(),
                "reservations": self.protocol.resource_manager.active(),
                "connected_peers": len(self.host.get_network().connections),
                "limits": dataclasses.asdict(self.settings.limits),
                "time": time.time()}
