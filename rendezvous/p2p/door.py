"""The libp2p door: the rendezvous protocol's requests, answered by the registry (rendezvous/registry.py)
that the HTTP door uses too, so a peer registered here is discoverable over HTTP and the other way round,
with the same rules, limits, expiry and metrics. The remote peer is the one the libp2p connection
authenticated, so a peer may only register itself. This module is asyncio, like the registry;
handler.py carries the requests over from the trio side.
"""
from __future__ import annotations

import base64
import dataclasses
import logging

import multiaddr

from rendezvous import record, rules
from rendezvous.p2p import wire
from rendezvous.registry import Found, Registry
from shared.envelope import b58decode
from shared.errors import ApiError, ErrorCode

log = logging.getLogger("rendezvous.door")

_STATUS_OF = {
    ErrorCode.INVALID_NAMESPACE: wire.Status.E_INVALID_NAMESPACE,
    ErrorCode.INVALID_TTL: wire.Status.E_INVALID_TTL,
    ErrorCode.INVALID_COOKIE: wire.Status.E_INVALID_COOKIE,
    ErrorCode.PEER_ID_MISMATCH: wire.Status.E_NOT_AUTHORIZED,
    ErrorCode.UNAUTHORIZED: wire.Status.E_NOT_AUTHORIZED,
    ErrorCode.PEER_REGISTRATION_LIMIT: wire.Status.E_NOT_AUTHORIZED,
    ErrorCode.RATE_LIMITED: wire.Status.E_UNAVAILABLE,
    ErrorCode.STORE_UNAVAILABLE: wire.Status.E_UNAVAILABLE,
    ErrorCode.NAMESPACE_FULL: wire.Status.E_UNAVAILABLE,
    **{kind: wire.Status.E_INVALID_SIGNED_PEER_RECORD for kind in (
        ErrorCode.BAD_ENVELOPE, ErrorCode.UNSUPPORTED_KEY_TYPE, ErrorCode.BAD_SIGNATURE, ErrorCode.WRONG_PAYLOAD_TYPE,
        ErrorCode.BAD_PEER_RECORD, ErrorCode.INVALID_ADDRS, ErrorCode.INVALID_PEER_ID)},
}


def status_of(error: ApiError) -> wire.Status:
    return _STATUS_OF.get(error.kind, wire.Status.E_INTERNAL_ERROR)


@dataclasses.dataclass(frozen=True)
class Caller:
    peer_id: str  # authenticated by the libp2p connection
    ip: str
    legacy: bool  # answer discovers in py-libp2p's format (the peer is py-libp2p's legacy client)


class Door:
    def __init__(self, registry: Registry):
        self.registry = registry

    async def handle(self, caller: Caller, request: wire.Request) -> bytes | None:
        """The response message to `request` (None for an unregister, which has none)."""
        try:
            if isinstance(request, wire.Register):
                return await self.register(caller, request)
            if isinstance(request, wire.Unregister):
                await self.registry.unregister_authenticated(caller.peer_id, request.namespace, caller.ip)
                return None
            return await self.discover(caller, request)
        except ApiError as exc:
            if isinstance(request, wire.Register):
                return wire.register_response(status_of(exc), exc.message)
            if isinstance(request, wire.Discover):
                return wire.discover_response(status_of(exc), text=exc.message)
            log.info("unregister refused", extra={"peer": caller.peer_id, "error": exc.message})
            return None

    async def register(self, caller: Caller, request: wire.Register) -> bytes:
        if request.signed_peer_record is not None:
            registered = await self.registry.register_peer_record(
                caller.peer_id, request.signed_peer_record, request.namespace, request.ttl, caller.ip)
        else:
            registered = await self.registry.register_legacy(
                caller.peer_id, request.legacy_peer.peer_id, list(request.legacy_peer.addrs), request.namespace,
                request.ttl, caller.ip)
        return wire.register_response(wire.Status.OK, ttl=registered.registration.ttl)

    async def discover(self, caller: Caller, request: wire.Discover) -> bytes:
        limit = rules.clamp_page_limit(request.limit, self.registry.limits)
        try:
            cookie = request.cookie.decode("ascii") or None
        except UnicodeDecodeError:
            raise ApiError(ErrorCode.INVALID_COOKIE, "the cookie was not issued by this service") from None
        if request.namespace:
            found = await self.registry.discover(request.namespace, cookie, limit, caller.ip)
        else:
            found = await self.registry.discover_everywhere(cookie, limit, caller.ip)
        return wire.discover_response(wire.Status.OK, self._entries(found, caller.legacy), found.cookie.encode())

    @staticmethod
    def _entries(found: Found, legacy: bool) -> list[bytes]:
        entries = []
        for namespace, stored in found.records:
            ttl = max(1, record.remaining_seconds(stored, found.now_ms))
            peer = record.peer_fields(stored)
            if legacy:
                addrs = []
                for addr in peer["Addrs"]:
                    try:
                        addrs.append(multiaddr.Multiaddr(addr).to_bytes())
                    except Exception:  # registered over HTTP in a protocol this multiaddr library lacks
                        continue
                entries.append(wire.registration(namespace, wire.legacy_peer_info(b58decode(peer["ID"]), addrs), ttl))
            elif "SignedPeerRecord" in peer:  # registered over HTTP without one: nothing a spec client could verify
                entries.append(wire.registration(namespace, base64.b64decode(peer["SignedPeerRecord"]), ttl))
        return entries
