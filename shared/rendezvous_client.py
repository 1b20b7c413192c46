"""The worker's side of the rendezvous HTTP API: signed register and unregister, paged discovery, and the
lookup of one peer's registration.

Runs under trio (httpx over anyio). Every failure becomes a RendezvousError carrying what the caller needs
to back off: whether to retry at all, and the server's Retry-After when it sent one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import AsyncIterator

import httpx
from opentelemetry.trace import SpanKind, StatusCode

from shared import tracing
from shared.registration import sign_registration, sign_unregistration
from shared.identity import Identity

log = logging.getLogger("worker.rendezvous")
PAGE_LIMIT = 100
WATCH_READ_TIMEOUT = 45.0  # three missed heartbeats: the stream is gone
MAX_PAGES = 1000  # a server that never says "no more" must not keep us paging forever


class RendezvousError(Exception):
    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Network faults, 429 and 5xx pass; a 4xx means our request is wrong and resending will not help."""
        return self.status is None or self.status == 429 or self.status >= 500


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str  # join | renew | leave | expire
    entry: "PeerEntry"
    event_id: str | None  # resume after it (Last-Event-ID)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every peer of the namespace at the stream's position `event_id`: what the watcher knows is replaced."""
    entries: list["PeerEntry"]
    event_id: str | None
    more: bool = False  # a part, with more to come (watch() yields whole snapshots only)


RESYNC = Snapshot([], None, more=True)  # the server starts a snapshot afresh: the parts so far are void


@dataclasses.dataclass(frozen=True)
class Discovered:
    entries: list[PeerEntry]
    cookie: str | None  # where the next call goes on from
    more: bool  # peers are waiting after `cookie`


@dataclasses.dataclass(frozen=True)
class PeerEntry:
    peer_id: str
    addrs: tuple[str, ...]
    ttl: int


@dataclasses.dataclass(frozen=True)
class Registered:
    ttl: int  # what the service granted


class RendezvousClient:
    def __init__(self, base_url: str, identity: Identity, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                      headers={"User-Agent": "holepunch-services-worker"})

    async def aclose(self) -> None:
        await self.http.aclose()

    async def register(self, namespace: str, addrs: list[str], ttl: int) -> Registered:
        body = sign_registration(self.identity.signing_key, namespace, addrs, ttl,
                                 self.identity.signed_peer_record(addrs))
        response = await self._send("POST", "/peers", content=body,
                                    headers={"Content-Type": "application/octet-stream"})
        answer = _json(response)
        return Registered(ttl=int(answer.get("TTL", ttl)))

    async def unregister(self, namespace: str) -> None:
        body = sign_unregistration(self.identity.signing_key, namespace)
        try:
            await self._send("DELETE", f"/peers/{self.identity.peer_id}", content=body)
        except RendezvousError as exc:
            if exc.status != 404:  # 404: nothing live to remove, which is what we wanted
                raise

    async def lookup(self, namespace: str, peer_id: str | None = None) -> PeerEntry | None:
        """The live registration of `peer_id` (default: ours) in `namespace`, or None when it has none (404)."""
        peer_id = peer_id or str(self.identity.peer_id)
        try:
            response = await self._send("GET", f"/peers/{peer_id}", params={"namespace": namespace})
        except RendezvousError as exc:
            if exc.status == 404:
                return None
            raise
        entry = _peer_entry(_json(response))
        if entry is None:
            raise RendezvousError("the rendezvous answered a lookup with a malformed peer entry",
                                  status=response.status_code)
        return entry

    async def discover(self, namespace: str) -> list[PeerEntry]:
        """Every live registration in `namespace` (up to MAX_PAGES pages)."""
        return (await self.discover_pages(namespace)).entries

    async def discover_pages(self, namespace: str, cookie: str | None = None,
                             max_pages: int = MAX_PAGES) -> Discovered:
        """Live registrations in `namespace`, at most `max_pages` pages of them, starting after `cookie`.

        A page that fails after others answered ends the call with what was read (`more` stays true and
        `cookie` says where to go on): one 429 in a large namespace must not throw a whole round away."""
        peers: dict[str, PeerEntry] = {}
        more = True
        for page in range(max_pages):
            params = {"namespace": namespace, "limit": str(PAGE_LIMIT)}
            if cookie:
                params["cookie"] = cookie
            try:
                answer = _json(await self._send("GET", "/peers", params=params))
            except RendezvousError as exc:
                if page == 0:
                    raise
                log.info("discovery stopped early; going on next round", extra={"error": str(exc)})
                break
            for item in answer.get("Peers", []):
                entry = _peer_entry(item)
                if entry is not None:
                    peers[entry.peer_id] = entry
            cookie = answer.get("Cookie") or cookie
            more = bool(answer.get("More")) and bool(answer.get("Cookie"))
            if not more:
                break
        return Discovered(list(peers.values()), cookie, more)

    async def watch(self, namespace: str, last_event_id: str | None = None) -> AsyncIterator[Change | Snapshot]:
        """The namespace's changes from GET /peers/watch (Server-Sent Events), each with the event ID to resume
        after: first a Snapshot (unless resuming), then join, renew, leave and expire as they happen, and a new
        Snapshot whenever the server had to resync us.
        Ends when the server ends the stream; raises RendezvousError when it cannot be opened or breaks."""
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        timeout = httpx.Timeout(10.0, read=WATCH_READ_TIMEOUT)  # heartbeats come every 15 s
        try:
            async with self.http.stream("GET", "/peers/watch", params={"namespace": namespace}, headers=headers,
                                        timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise RendezvousError(f"GET /peers/watch answered {response.status_code}",
                                          status=response.status_code,
                                          retry_after=_retry_after(response.headers.get("Retry-After")))
                event: dict[str, str] = {}
                parts: list[PeerEntry] = []  # a snapshot's parts so far (it comes in parts of 100 peers)
                async for line in response.aiter_lines():
                    if line:
                        field, _, value = line.partition(":")
                        if field in ("event", "id", "data"):
                            event[field] = value.removeprefix(" ")
                        continue
                    for change in _changes(event):  # a blank line ends an event
                        if change is RESYNC:
                            parts = []  # a snapshot begins again
                        elif isinstance(change, Snapshot) and change.more:
                            parts += change.entries
                        elif isinstance(change, Snapshot):
                            yield Snapshot(parts + change.entries, change.event_id)
                            parts = []
                        else:
                            yield change
                    event = {}
        except httpx.HTTPError as exc:
            raise RendezvousError(f"GET /peers/watch: {type(exc).__name__}: {exc}") from None

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        with tracing.span(f"{method} {path}", SpanKind.CLIENT) as span:
            headers = dict(kwargs.pop("headers", None) or {})
            tracing.inject(headers)  # traceparent: the rendezvous continues this trace
            try:
                response = await self.http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                raise RendezvousError(f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}") from None
            span.set_attributes({"http.request.method": method, "http.response.status_code": response.status_code,
                                 "url.full": f"{self.base_url}{path}"})
        if response.status_code < 400:
            return response
        code, message = None, response.text[:200]
        try:
            error = response.json()
            code, message = error.get("error"), error.get("message", message)
        except ValueError:
            pass
        raise RendezvousError(f"{method} {path} answered {response.status_code} {code or ''}: {message}",
                              status=response.status_code, code=code,
                              retry_after=_retry_after(response.headers.get("Retry-After")))


def _json(response: httpx.Response) -> dict:
    try:
        answer = response.json()
    except ValueError:
        raise RendezvousError(f"the rendezvous answered {response.status_code} with a body that is not JSON",
                              status=response.status_code) from None
    if not isinstance(answer, dict):
        raise RendezvousError("the rendezvous answered with JSON that is not an object", status=response.status_code)
    return answer


def _changes(event: dict[str, str]) -> list[Change | Snapshot]:
    """A Server-Sent Event of the watch stream as changes (`resync` announces a snapshot afresh: RESYNC)."""
    kind, data = event.get("event"), event.get("data")
    if not kind or data is None:
        return []  # a comment (heartbeat) or an event without data
    try:
        body = json.loads(data)
    except ValueError:
        log.warning("rendezvous: skipping a watch event that is not JSON", extra={"event": kind})
        return []
    event_id = event.get("id")
    if kind == "resync":
        return [RESYNC]
    if kind == "snapshot":
        peers = body.get("Peers", []) if isinstance(body, dict) else []
        more = isinstance(body, dict) and body.get("More") is True
        return [Snapshot([e for item in peers if (e := _peer_entry(item)) is not None], event_id, more)]
    entry = _peer_entry(body)
    return [Change(kind, entry, event_id)] if entry is not None else []


def _peer_entry(item: object) -> PeerEntry | None:
    """A discovered peer, or None (logged) when the server sent something malformed."""
    try:
        peer_id, addrs, ttl = item["ID"], item["Addrs"], item.get("TTL", 0)  # type: ignore[index,union-attr]
        if not isinstance(peer_id, str) or not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise TypeError("ID must be a string and Addrs a list of strings")
        return PeerEntry(peer_id, tuple(addrs), int(ttl))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("rendezvous: skipping a malformed peer entry", extra={"error": str(exc),
                                                                         "entry": json.dumps(item, default=str)[:200]})
        return None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
