"""The registry: the one service layer under both doors of the rendezvous (HTTP in rendezvous/http, the
libp2p protocol in rendezvous/p2p). Each door only decodes its requests and encodes the answers; here
they are validated (rules.py), authorised, rate-limited and stored (store.py), and counted (metrics.py),
the same way whichever door they came through.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import logging
from typing import Awaitable, Callable

import multiaddr

from rendezvous import metrics, rules
from rendezvous.cookie import START, CookieCodec
from rendezvous.record import Registration
from rendezvous.settings import Settings
from rendezvous.store import Store
from rendezvous.watch import Hub, Watch
from shared.envelope import (PEER_RECORD_DOMAIN, b58encode, check_peer_record, open_envelope, peer_record_addrs,
                             public_key_from_peer_id)
from shared.errors import ApiError, ErrorCode
from shared.registration import REGISTER_PAYLOAD_TYPE, UNREGISTER_PAYLOAD_TYPE, new_nonce, open_signed

log = logging.getLogger("rendezvous.registry")

ALL_NAMESPACES = "*"  # the cookie codec's namespace for discovery across every namespace ('*' is no namespace)
MAX_NAMESPACES_SCANNED = 1000


@dataclasses.dataclass(frozen=True)
class Registered:
    registration: Registration
    expiry_ms: int
    renewed: bool


@dataclasses.dataclass(frozen=True)
class Found:
    """Stored records (rendezvous/record.py) of one page, in registration order, and where to go on."""
    now_ms: int
    records: list[tuple[str, bytes]]  # (namespace, stored record)
    cookie: str
    more: bool


class Registry:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.cookies = CookieCodec(settings.cookie_key)
        self.watches = Hub(store, settings.limits)

    # --- registering ---------------------------------------------------------------------------------------

    async def register_signed(self, read_body: Callable[[], Awaitable[bytes]], client_ip: str) -> Registered:
        """A registration signed by its peer (the HTTP door)."""
        source = rules.source(client_ip)

        async def parse() -> Registration:
            return rules.registration(open_signed(await read_body(), REGISTER_PAYLOAD_TYPE), self.limits,
                                      self.settings.default_namespace)

        return await self._register(await self._parsed(source, parse), source)

    async def _parsed(self, source: str, parse: Callable[[], Awaitable[Registration]]) -> Registration:
        """A registration request read and checked, counted against its source whatever its fate: in the
        store's one step that writes it, or here when it is refused before that (so junk costs an attacker
        its rate limit too). A source this replica saw over its limit is refused before its request is read
        or its signature verified."""
        with _counted(metrics.REGISTRATIONS):
            self.store.refuse_if_limited(source)
            try:
                return await parse()
            except ApiError:
                await self.store.count_request(source)  # over the limit, that refusal comes first
                raise
            except Exception:  # a body that never came, a client gone: counted, and answered as it was
                with contextlib.suppress(ApiError):
                    await self.store.count_request(source)
                raise

    async def register_peer_record(self, peer_id: str, signed_peer_record: bytes, namespace: str, ttl: int,
                                   client_ip: str) -> Registered:
        """The libp2p door's spec form: `peer_id` is the peer its connection authenticated, and the standard
        signed peer record it sent must be its own. `ttl` 0 means the default."""
        source = rules.source(client_ip)

        async def parse() -> Registration:
            envelope = open_envelope(signed_peer_record, PEER_RECORD_DOMAIN, "signedPeerRecord")
            check_peer_record(signed_peer_record, envelope.public_key)
            try:
                addrs = [_multiaddr_text(raw) for raw in peer_record_addrs(envelope.payload)]
            except ValueError as exc:
                raise ApiError(ErrorCode.BAD_PEER_RECORD, f"the record's addresses are malformed: {exc}") from None
            return self._authenticated(peer_id, envelope.peer_id, envelope.public_key, namespace, addrs, ttl,
                                       base64.b64encode(signed_peer_record).decode())

        return await self._register(await self._parsed(source, parse), source)

    async def register_legacy(self, peer_id: str, named_peer: bytes, addrs: list[bytes], namespace: str, ttl: int,
                              client_ip: str) -> Registered:
        """py-libp2p's form: an unsigned PeerInfo (peer ID bytes, binary multiaddrs), trusted because the
        connection authenticated `peer_id`, which it must name (or leave empty)."""
        source = rules.source(client_ip)

        async def parse() -> Registration:
            named = b58encode(named_peer) if named_peer else peer_id
            try:
                texts = [_multiaddr_text(raw) for raw in addrs]
            except ValueError as exc:
                raise ApiError(ErrorCode.INVALID_ADDRS, str(exc)) from None
            return self._authenticated(peer_id, named, public_key_from_peer_id(peer_id), namespace, texts, ttl, None)

        return await self._register(await self._parsed(source, parse), source)

    def _authenticated(self, peer_id: str, named: str, public_key: bytes, namespace: str, addrs: list[str],
                       ttl: int, record: str | None) -> Registration:
        if named != peer_id:
            raise ApiError(ErrorCode.PEER_ID_MISMATCH, f"the registration is for {named}; a peer may only "
                                                       f"register itself ({peer_id})")
        return rules.check_size(Registration(
            peer_id, public_key, rules.check_namespace(namespace), rules.check_addrs(addrs, self.limits),
            rules.check_ttl(ttl or self.limits.ttl_default, self.limits),
            new_nonce(),  # the connection is the proof; the nonce only keys the replay check
            record), self.limits)

    async def _register(self, reg: Registration, source: str) -> Registered:
        with _counted(metrics.REGISTRATIONS):
            expiry, replaced, evicted = await self.store.register(reg, source)
        outcome = "renewed" if replaced else "created"
        metrics.REGISTRATIONS.labels(outcome).inc()
        if evicted:
            log.info("namespace full: the largest holder's oldest registration made room",
                     extra={"namespace": reg.namespace, "source": source})
        log.debug("registered", extra={"peer": reg.peer_id, "namespace": reg.namespace, "outcome": outcome})
        return Registered(reg, expiry, replaced)

    # --- deregistering -------------------------------------------------------------------------------------

    async def unregister_signed(self, read_body: Callable[[], Awaitable[bytes]], peer_id: str,
                                client_ip: str) -> list[str]:
        """A deregistration signed by the peer itself, counted before it is read. -> the namespaces it left."""
        await self.store.count_request(rules.source(client_ip))
        body = await read_body()
        if not body:
            raise ApiError(ErrorCode.UNAUTHORIZED, "deregistration needs a signed request from the peer, "
                           "or an operator's admin token in 'Authorization: Bearer'")
        request = open_signed(body, UNREGISTER_PAYLOAD_TYPE)
        if request.peer_id != peer_id:
            raise ApiError(ErrorCode.PEER_ID_MISMATCH, f"the request is signed by {request.peer_id}, not by {peer_id}")
        namespace = rules.unregistration_namespace(request, self.limits)
        await self.store.admit_unregistration(peer_id, request.nonce)
        return await self._unregister(peer_id, namespace, "peer")

    async def unregister_by_admin(self, authorization: str, peer_id: str, namespace: str | None) -> list[str]:
        """A deregistration by an operator holding ADMIN_TOKEN (`Authorization: Bearer <token>`)."""
        scheme, _, token = authorization.partition(" ")
        if self.settings.admin_token is None:
            raise ApiError(ErrorCode.UNAUTHORIZED, "admin deregistration is disabled (no ADMIN_TOKEN configured)")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 self.settings.admin_token.encode()):
            raise ApiError(ErrorCode.UNAUTHORIZED, "the admin token is wrong")
        public_key_from_peer_id(peer_id)
        return await self._unregister(peer_id, None if namespace is None else rules.check_namespace(namespace),
                                      "admin")

    async def unregister_authenticated(self, peer_id: str, namespace: str, client_ip: str) -> list[str]:
        """A deregistration from a peer its connection authenticated (the libp2p door); rate-limited as a
        signed one is."""
        await self.store.count_request(rules.source(client_ip))
        namespace = rules.check_namespace(namespace)
        await self.store.admit_unregistration(peer_id, new_nonce())
        return await self._unregister(peer_id, namespace, "peer")

    async def _unregister(self, peer_id: str, namespace: str | None, by: str) -> list[str]:
        removed = await self.store.unregister(peer_id, namespace)
        if removed:
            metrics.DEREGISTRATIONS.labels(by).inc()
            log.info("deregistered", extra={"peer": peer_id, "namespaces": removed, "by": by})
        return removed

    # --- discovering ---------------------------------------------------------------------------------------

    async def discover(self, namespace: str, cookie: str | None, limit: int, client_ip: str) -> Found:
        """One page of `namespace`, continuing after `cookie` (a cookie of ours, or None to start)."""
        namespace = rules.check_namespace(namespace)
        cursor = self.cookies.decode(namespace, cookie)
        page = await self.store.discover(namespace, cursor, limit, rules.source(client_ip))
        return Found(page.now_ms, [(namespace, r) for r in page.records],
                     self.cookies.encode(namespace, page.cursor), page.more)

    async def discover_everywhere(self, cookie: str | None, limit: int, client_ip: str) -> Found:
        """One page across every namespace, walked in name order; the cookie holds the namespace reached and
        the position in it."""
        position = self.cookies.decode(ALL_NAMESPACES, cookie)
        at_namespace, _, cursor = position.partition("\n") if position != START else ("", "", START)
        found: list[tuple[str, bytes]] = []
        now_ms, more = 0, False
        for namespace in await self.store.live_namespaces(MAX_NAMESPACES_SCANNED):
            if namespace < at_namespace:
                continue
            start = cursor if namespace == at_namespace else START
            page = await self.store.discover(namespace, start, limit - len(found), rules.source(client_ip))
            found += [(namespace, r) for r in page.records]
            now_ms, at_namespace, cursor, more = page.now_ms, namespace, page.cursor, page.more
            if len(found) >= limit:
                break
        next_cookie = self.cookies.encode(ALL_NAMESPACES, f"{at_namespace}\n{cursor}") if at_namespace else ""
        return Found(now_ms, found, next_cookie, more)

    # --- watching -------------------------------------------------------------------------------------------

    async def watch(self, namespace: str, cookie: str | None, last_event_id: str | None, client_ip: str,
                    alive: Callable[[], bool]) -> Watch:
        """A watch stream of `namespace` (counted against its source first, as every request is): from
        `last_event_id` (an event ID from any replica), else from a GET /peers `cookie`'s position, else
        from a snapshot. A position the namespace's events no longer cover begins with `resync`."""
        source = rules.source(client_ip)
        await self.store.count_request(source)
        namespace = rules.check_namespace(namespace)
        resume = (last_event_id or "").strip() or None
        resuming = resume is not None
        if resume is None and cookie:
            cursor = self.cookies.decode(namespace, cookie)  # a sequence number: Redis's clock in us
            if cursor != START:
                # every change after the cookie's registration was written in that millisecond or later
                resume = f"{int(cursor) // 1000 - 1}-{2 ** 64 - 1}"
        return await self.watches.open(namespace, source, resume, resuming, alive)

    async def lookup(self, namespace: str, peer_id: str, client_ip: str) -> tuple[int, bytes | None]:
        public_key_from_peer_id(peer_id)  # a clear error for a malformed ID
        return await self.store.lookup(rules.check_namespace(namespace), peer_id, rules.source(client_ip))


def _multiaddr_text(raw: bytes) -> str:
    try:
        return str(multiaddr.Multiaddr(raw))
    except Exception as exc:
        raise ValueError(f"an address is not a binary multiaddr ({exc})") from None


class _counted:
    """Count a refusal under its error code, and let it go on."""

    def __init__(self, counter):
        self.counter = counter

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if isinstance(exc, ApiError):
            self.counter.labels(exc.kind.code).inc()
        return False
