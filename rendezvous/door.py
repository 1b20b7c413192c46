"""The libp2p door: the rendezvous protocol's requests served from the same store as the HTTP API.

A peer registered here is discoverable over HTTP and the other way round, with the same limits, expiry
and metrics. The remote peer is the one the libp2p connection authenticated, so a peer may only register
itself: the signed peer record (or py-libp2p's PeerInfo) must name that peer. This module is asyncio, like
the store; `p2p_door.py` carries the requests over from the trio side.
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os

import multiaddr

from rendezvous import metrics, wire
from rendezvous.cookie import START, CookieCodec
from rendezvous.envelope import (PEER_RECORD_DOMAIN, b58decode, b58encode, check_peer_record, open_envelope,
                                 parse_message, public_key_from_peer_id)
from rendezvous.errors import ApiError, ErrorCode
from rendezvous.registration import Registration, check_addrs, namespace_problem
from rendezvous.settings import Settings
from rendezvous.store import Store, peer_fields, remaining_seconds

log = logging.getLogger("rendezvous.door")

ALL_NAMESPACES = "*"  # the cookie codec's namespace for discovery across every namespace ('*' is no namespace)
MAX_NAMESPACES_SCANNED = 1000

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
    legacy: bool  # answer discovers in py-libp2p's format (this connection registered in it)


class Door:
    def __init__(self, store: Store, cookies: CookieCodec, settings: Settings):
        self.store = store
        self.cookies = cookies
        self.limits = settings.limits

    async def handle(self, caller: Caller, request: wire.Request) -> bytes | None:
        """The response message to `request` (None for an unregister, which has none)."""
        try:
            if isinstance(request, wire.Register):
                return await self.register(caller, request)
            if isinstance(request, wire.Unregister):
                await self.unregister(caller, request)
                return None
            return await self.discover(caller, request)
        except ApiError as exc:
            if isinstance(request, wire.Register):
                metrics.REGISTRATIONS.labels(exc.kind.code).inc()
                return wire.register_response(status_of(exc), exc.message)
            if isinstance(request, wire.Discover):
                return wire.discover_response(status_of(exc), text=exc.message)
            log.info("unregister refused", extra={"peer": caller.peer_id, "error": exc.message})
            return None

    async def register(self, caller: Caller, request: wire.Register) -> bytes:
        namespace = self._namespace(request.namespace)
        ttl = request.ttl or self.limits.ttl_default
        if not self.limits.ttl_min <= ttl <= self.limits.ttl_max:
            raise ApiError(ErrorCode.INVALID_TTL, f"ttl must lie between {self.limits.ttl_min} and "
                                                  f"{self.limits.ttl_max} seconds, got {ttl}")
        if request.signed_peer_record is not None:
            public_key, addrs = self._open_record(caller, request.signed_peer_record)
            record = base64.b64encode(request.signed_peer_record).decode()
        else:
            public_key, addrs = self._legacy_peer(caller, request.legacy_peer)
            record = None
        addrs = check_addrs(list(addrs), self.limits)
        nonce = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()  # the connection is the proof
        reg = Registration(caller.peer_id, public_key, namespace, addrs, ttl, nonce, record)
        _, replaced = await self.store.register(reg, caller.ip)
        metrics.REGISTRATIONS.labels("renewed" if replaced else "created").inc()
        return wire.register_response(wire.Status.OK, ttl=ttl)

    def _namespace(self, namespace: str) -> str:
        problem = namespace_problem(namespace)
        if problem:
            raise ApiError(ErrorCode.INVALID_NAMESPACE, f"{problem} (got {namespace[:80]!r})")
        return namespace

    def _open_record(self, caller: Caller, data: bytes) -> tuple[bytes, list[str]]:
        envelope = open_envelope(data, PEER_RECORD_DOMAIN, "signedPeerRecord")
        check_peer_record(data, envelope.public_key)
        if envelope.peer_id != caller.peer_id:
            raise ApiError(ErrorCode.PEER_ID_MISMATCH, f"the record is for {envelope.peer_id}; a peer may only "
                                                       f"register itself ({caller.peer_id})")
        try:
            infos = parse_message(envelope.payload).get(3, [])
            addrs = [_multiaddr_text(parse_message(info).get(1, [b""])[0]) for info in infos]
        except (ValueError, IndexError, TypeError) as exc:
            raise ApiError(ErrorCode.BAD_PEER_RECORD, f"the record's addresses are malformed: {exc}") from None
        return envelope.public_key, addrs

    def _legacy_peer(self, caller: Caller, peer: wire.LegacyPeer) -> tuple[bytes, list[str]]:
        named = b58encode(peer.peer_id) if peer.peer_id else caller.peer_id
        if named != caller.peer_id:
            raise ApiError(ErrorCode.PEER_ID_MISMATCH, f"the registration is for {named}; a peer may only "
                                                       f"register itself ({caller.peer_id})")
        try:
            addrs = [_multiaddr_text(a) for a in peer.addrs]
        except ValueError as exc:
            raise ApiError(ErrorCode.INVALID_ADDRS, str(exc)) from None
        return public_key_from_peer_id(caller.peer_id), addrs

    async def unregister(self, caller: Caller, request: wire.Unregister) -> None:
        removed = await self.store.unregister(caller.peer_id, self._namespace(request.namespace))
        if removed:
            metrics.DEREGISTRATIONS.labels("peer").inc()

    async def discover(self, caller: Caller, request: wire.Discover) -> bytes:
        limit = min(request.limit or self.limits.discover_limit_default, self.limits.discover_limit_max)
        try:
            cookie = request.cookie.decode("ascii")
        except UnicodeDecodeError:
            raise ApiError(ErrorCode.INVALID_COOKIE, "the cookie was not issued by this service") from None
        if request.namespace:
            namespace = self._namespace(request.namespace)
            cursor = self.cookies.decode(namespace, cookie)
            entries, cursor, _ = await self._page(caller, namespace, cursor, limit)
            return wire.discover_response(wire.Status.OK, entries, self.cookies.encode(namespace, cursor).encode())
        return await self._discover_everywhere(caller, cookie, limit)

    async def _discover_everywhere(self, caller: Caller, cookie: str, limit: int) -> bytes:
        # The cookie holds the namespace reached and the position in it; namespaces are walked in name order.
        position = self.cookies.decode(ALL_NAMESPACES, cookie)
        at_namespace, _, cursor = position.partition("\n") if position != START else ("", "", START)
        entries: list[bytes] = []
        for namespace in await self.store.live_namespaces(MAX_NAMESPACES_SCANNED):
            if namespace < at_namespace:
                continue
            start = cursor if namespace == at_namespace else START
            page, end, more = await self._page(caller, namespace, start, limit - len(entries))
            entries += page
            at_namespace, cursor = namespace, end
            if len(entries) >= limit:
                break
        next_cookie = self.cookies.encode(ALL_NAMESPACES, f"{at_namespace}\n{cursor}") if at_namespace else ""
        return wire.discover_response(wire.Status.OK, entries, next_cookie.encode())

    async def _page(self, caller: Caller, namespace: str, cursor: str, limit: int) -> tuple[list[bytes], str, bool]:
        page = await self.store.discover(namespace, cursor, max(limit, 1), caller.ip)
        entries = [entry for record in page.records
                   if (entry := self._entry(namespace, record, page.now_ms, caller.legacy)) is not None]
        return entries, page.cursor, page.more

    @staticmethod
    def _entry(namespace: str, record: bytes, now_ms: int, legacy: bool) -> bytes | None:
        ttl = max(1, remaining_seconds(record, now_ms))
        peer = peer_fields(record)
        if legacy:
            addrs = []
            for addr in peer["Addrs"]:
                try:
                    addrs.append(multiaddr.Multiaddr(addr).to_bytes())
                except Exception:  # registered over HTTP in a protocol this multiaddr library lacks
                    continue
            return wire.registration(namespace, wire.legacy_peer_info(b58decode(peer["ID"]), addrs), ttl)
        if "SignedPeerRecord" not in peer:
            return None  # registered over HTTP without a record: nothing a spec client could verify
        return wire.registration(namespace, base64.b64decode(peer["SignedPeerRecord"]), ttl)


def _multiaddr_text(raw: bytes) -> str:
    try:
        return str(multiaddr.Multiaddr(raw))
    except Exception as exc:
        raise ValueError(f"an address is not a binary multiaddr ({exc})") from None
