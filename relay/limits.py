"""Reservation limits beyond what py-libp2p's relay enforces: at most N reservations per IP address
(go-libp2p's default 8), so one machine cannot take every slot; and counts of what was refused and why.
"""
from __future__ import annotations

import logging

from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.resources import RelayLimits, RelayResourceManager

from relay import metrics
from shared.host import connections_to

log = logging.getLogger("relay.limits")


def remote_ip(host: IHost, peer_id: ID) -> str | None:
    for conn in connections_to(host, peer_id):
        try:
            for addr in conn.get_transport_addresses():
                for proto in ("ip4", "ip6"):
                    try:
                        return addr.value_for_protocol(proto)
                    except Exception:
                        continue
        except Exception:
            continue
    return None


class LimitedResourceManager(RelayResourceManager):
    def __init__(self, limits: RelayLimits, host: IHost, max_per_ip: int):
        super().__init__(limits, host)
        self.max_per_ip = max_per_ip
        self._ip_of: dict[ID, str | None] = {}

    def can_accept_reservation(self, peer_id: ID) -> bool:
        if not super().can_accept_reservation(peer_id):
            return self._refuse(peer_id, "max_reservations")
        existing = self._reservations.get(peer_id)
        if existing and not existing.is_expired():
            return True
        ip = remote_ip(self.host, peer_id)
        holders = sum(1 for pid in self._reservations if self._ip_of.get(pid) == ip)
        if ip is not None and holders >= self.max_per_ip:
            return self._refuse(peer_id, "max_reservations_per_ip")
        return True

    def reserve(self, peer_id: ID) -> int:
        ttl = super().reserve(peer_id)
        self._ip_of[peer_id] = remote_ip(self.host, peer_id)
        metrics.RESERVATIONS.labels("accepted", "").inc()
        metrics.ACTIVE_RESERVATIONS.set(len(self._reservations))
        log.info("reservation accepted", extra={"peer": str(peer_id), "ip": self._ip_of[peer_id], "ttl": ttl})
        return ttl

    def can_accept_connection(self, peer_id: ID) -> bool:
        accepted = super().can_accept_connection(peer_id)
        metrics.CIRCUITS.labels("accepted" if accepted else "refused").inc()
        return accepted

    def _clean_expired(self) -> None:
        super()._clean_expired()
        # A reservation is only usable over the connection it was made on (the relay reaches the peer
        # through it). py-libp2p keeps it for its whole TTL after the peer has gone, so departed peers
        # would fill the per-IP and total limits for an hour; go-libp2p drops it on disconnect, as here.
        for peer_id in [pid for pid in self._reservations if not self._is_peer_connected(pid)]:
            del self._reservations[peer_id]
        for peer_id in [pid for pid in self._ip_of if pid not in self._reservations]:
            del self._ip_of[peer_id]
        metrics.ACTIVE_RESERVATIONS.set(len(self._reservations))

    def _refuse(self, peer_id: ID, reason: str) -> bool:
        metrics.RESERVATIONS.labels("refused", reason).inc()
        log.warning("reservation refused", extra={"peer": str(peer_id), "reason": reason})
        return False

    def active(self) -> int:
        self._clean_expired()
        return len(self._reservations)
