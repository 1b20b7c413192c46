"""Watching a namespace (GET /peers/watch): its changes pushed as they happen, through Redis, on any replica.

Each namespace has an event stream in its own hash tag (keys.py), written by the Lua step that makes the
change (lua.py: REGISTER -> join or renew, UNREGISTER or an eviction -> leave, a purge -> expire). A stream
entry's ID is the event's ID: any replica can resume a watcher from it (Last-Event-ID), since they all read
the same stream. The stream is bounded (WATCH_STREAM_MAX_EVENTS entries, WATCH_RESUME_SECONDS of age); a
watcher whose position is no longer covered gets `resync` and a fresh snapshot, never a silent gap.

On one replica, one reader per watched namespace (a `_Feed`) waits on the stream with XREAD BLOCK, on a
connection of its own, and hands each event to that namespace's watchers here. The replica sweeps every
namespace it watches about twice a second, all in one round trip: a Lua step per namespace that removes the
expired registrations and writes their `expire` events atomically, so every replica watching may sweep,
none is needed, and each expiry is told exactly once. An expiry is told within SWEEP_INTERVAL_S (plus a
read) while any replica watches: the `expire` entries wake the readers' XREAD like any other.

Idle watchers cost little: the readers' XREADs wait READ_BLOCK_MS between wake-ups, and the places the
watchers hold in their sources' caps are renewed by one round trip per heartbeat for the whole replica.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

from rendezvous import metrics, record
from rendezvous.store import Store, StoreUnavailable
from rendezvous.settings import Limits
from shared.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
READ_BLOCK_MS = 5000  # a reader's XREAD wait, under the reader connection's socket timeout (store.py)
READ_COUNT = 500  # entries per read of the stream
SNAPSHOT_PART = 100  # peers in one `snapshot` event: a big namespace's snapshot comes in parts
QUEUE_MAX = 2000  # events waiting for one slow watcher; past it the watcher resyncs
RETRY_S = 0.25  # between attempts while Redis is unavailable
JANITOR_INTERVAL_S = 1.0  # how soon a stream whose client hung up gives its places back
CLOSE_WAIT_S = 0.5  # at shutdown, for the streams to send their end
CHANGES = (b"join", b"renew", b"leave", b"expire")  # what a stream entry may tell ('start' entries are positions)


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # join, renew, leave, expire, snapshot, resync; heartbeat and end are for the door alone
    id: str | None  # the stream position to resume after (Last-Event-ID); None: this event sets none
    data: bytes  # JSON


HEARTBEAT = Event("heartbeat", None, b"")
END = Event("end", None, b"")
_RESYNC = ("resync",)  # in a watcher's queue: its position is lost, it needs a snapshot
_STOP = ("stop",)  # in a watcher's queue: the replica is stopping


def entry_id(text: str) -> tuple[int, int]:
    """A stream entry ID ("ms-seq") as a comparable pair; ValueError if it is not one."""
    ms, _, seq = text.partition("-")
    value = (int(ms), int(seq or 0))
    if value[0] < 0 or value[1] < 0:
        raise ValueError(text)
    return value


def covered(position: str, first: str, last: str, trimmed: str) -> bool:
    """Whether a stream whose first, last and last trimmed entries are these holds every event after
    `position`: nothing after it was trimmed, and the stream is the one `position` came from (a stream
    that expired and was made again starts after it, with nothing trimmed at `position`)."""
    at, trimmed_at = entry_id(position), entry_id(trimmed)
    return (0, 0) < at <= entry_id(last) and trimmed_at <= at and (entry_id(first) <= at or trimmed_at == at)


def change_event(entry: str, kind: bytes, stored: bytes) -> Event:
    """A stream entry as the watcher's event: the peer object GET /peers sends. Its TTL is what was left
    when the change was written (join, renew), 0 for leave and expire."""
    at_ms = entry_id(entry)[0] if kind in (b"join", b"renew") else record.expiry_ms(stored)
    return Event(kind.decode(), entry, record.peer_json(stored, at_ms))


class _Queue(asyncio.Queue):
    overflowed = False


class _Feed:
    """One namespace's reader on this replica."""

    def __init__(self, hub: "Hub", namespace: str, position: str):
        self.hub = hub
        self.namespace = namespace
        self.position = position
        self.queues: set[_Queue] = set()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        store = self.hub.store
        failing = False
        while self.queues:
            try:
                if failing:  # the stream may have gone with Redis: see where this replica stands before reading
                    self.check(*(await store.sweep(self.namespace))[1:])
                    log.info("watch: reading the namespace's events again", extra={"namespace": self.namespace})
                    failing = False
                entries = await store.read_events(self.namespace, self.position, READ_COUNT, block_ms=READ_BLOCK_MS)
            except ApiError as exc:  # Redis unavailable: the watchers stay connected, and resume once it is back
                if not failing:
                    log.warning("watch: cannot read the namespace's events (%s); retrying", exc.message,
                                extra={"namespace": self.namespace})
                failing = True
                await asyncio.sleep(RETRY_S)
                continue
            for entry, kind, stored in entries:
                if kind in CHANGES:
                    self.broadcast((entry, kind, stored))
            if entries and entry_id(entries[-1][0]) > entry_id(self.position):  # a resync may have moved it on
                self.position = entries[-1][0]

    def check(self, first: str, last: str, trimmed: str) -> None:
        """After a sweep: whether the stream still holds every event after this replica's position; if
        not, its watchers resync from a snapshot."""
        if entry_id(self.position) > entry_id(last):
            return  # read past what the sweep saw (the reader ran meanwhile): nothing can be missing
        if not covered(self.position, first, last, trimmed):
            log.info("watch: the stream no longer holds this replica's position; watchers resync",
                     extra={"namespace": self.namespace})
            self.position = last
            self.broadcast(_RESYNC)

    def broadcast(self, item: tuple) -> None:
        for queue in self.queues:
            if queue.overflowed:
                continue  # it will read from a snapshot: what comes meanwhile is in the stream
            if item is _RESYNC or queue.qsize() >= QUEUE_MAX:
                while not queue.empty():
                    queue.get_nowait()
                queue.overflowed = True
                queue.put_nowait(_RESYNC)
            else:
                queue.put_nowait(item)


class Hub:
    """This replica's watchers and its readers, one per watched namespace."""

    def __init__(self, store: Store, limits: Limits):
        self.store = store
        self.limits = limits
        self.feeds: dict[str, _Feed] = {}
        self.watchers = 0
        self.stopping = False
        self.open_watches: set[Watch] = set()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """Start the replica's own tasks: the sweeps, the lease renewals, and the janitor."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(SWEEP_INTERVAL_S, self._sweep)),
                       loop.create_task(self._every(self.limits.watch_heartbeat_seconds, self._renew_leases)),
                       loop.create_task(self._every(JANITOR_INTERVAL_S, self._end_the_gone))]

    @staticmethod
    async def _every(seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except ApiError as exc:  # Redis unavailable: the readers say so, and retry; this step runs again
                log.debug("watch: a periodic step failed", extra={"step": step.__name__, "error": exc.message})
            except Exception:  # a bug: said loudly, and the replica's watchers keep their sweeps and leases
                log.exception("watch: a periodic step failed", extra={"step": step.__name__})

    async def _sweep(self) -> None:
        """Every watched namespace's expiries told, in one round trip for the replica."""
        feeds = [feed for feed in self.feeds.values() if feed.queues]
        if feeds:
            for feed, (_, first, last, trimmed) in zip(feeds, await self.store.sweep_all([f.namespace for f in feeds])):
                feed.check(first, last, trimmed)

    async def _renew_leases(self) -> None:
        """The places of this replica's watch streams in their sources' caps, renewed in one round trip: each
        lease runs three heartbeats, so one that lapses (the replica died) frees its place soon."""
        by_source: dict[str, list[str]] = {}
        for watch in self.open_watches:
            by_source.setdefault(watch.source, []).append(watch.watcher)
        if by_source:
            await self.store.renew_watchers(by_source, self._lease_ms())

    async def _end_the_gone(self) -> None:
        """End the streams whose clients have gone. aiohttp does not cancel a handler when its client hangs
        up, and a stream idle between heartbeats would hold its places in the caps until its next write
        failed."""
        for watch in list(self.open_watches):
            if not watch.alive():
                watch.stop()

    async def close(self) -> None:
        """End every stream cleanly (their handlers send the end and return), then stop the readers."""
        self.stopping = True
        for watch in list(self.open_watches):
            watch.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                while self.open_watches:
                    await asyncio.sleep(0.01)
        tasks = [feed.task for feed in self.feeds.values() if feed.task] + self._tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.feeds.clear()

    async def open(self, namespace: str, source: str, resume: str | None, resuming: bool,
                   alive: Callable[[], bool]) -> "Watch":
        """Admit a watcher of `namespace` (the caps), and place it: after `resume` if the stream still covers
        that position, else on a snapshot (with `resync` first when a resume was asked: `resuming`)."""
        if self.stopping:
            raise ApiError(ErrorCode.STORE_UNAVAILABLE, "this replica is stopping; reconnect", retry_after=1)
        if self.watchers >= self.limits.watch_max_per_replica:
            metrics.WATCH_REFUSED.labels("replica").inc()
            raise ApiError(ErrorCode.WATCHERS_FULL, f"this replica serves its maximum of "
                           f"{self.limits.watch_max_per_replica} watch streams; retry (another replica may)",
                           retry_after=1)
        watcher = uuid.uuid4().hex
        if not await self.store.hold_watcher(source, watcher, self.limits.watch_max_per_source, self._lease_ms()):
            metrics.WATCH_REFUSED.labels("source").inc()
            raise ApiError(ErrorCode.WATCHERS_FULL, f"this address holds its maximum of "
                           f"{self.limits.watch_max_per_source} open watch streams", retry_after=5)
        self.watchers += 1
        metrics.WATCHERS.inc()
        watch = Watch(self, namespace, source, watcher, alive)
        self.open_watches.add(watch)
        try:
            _, first, last, trimmed = await self.store.sweep(namespace)  # tells of pending expiries first
            feed = self.feeds.get(namespace)
            if feed is None:
                feed = self.feeds[namespace] = _Feed(self, namespace, last)
            feed.queues.add(watch.queue)  # before the backlog is read: no event can fall between the two
            if feed.task is None or feed.task.done():
                feed.task = asyncio.get_running_loop().create_task(self._run(feed))
            try:
                placed = resume is not None and covered(resume, first, last, trimmed)
            except ValueError:
                placed = False  # not an ID of ours: a fresh snapshot, as for one that fell off
            watch.start, watch.resync_first = (resume, False) if placed else (None, resuming)
        except BaseException:
            await watch.close()
            raise
        return watch

    async def _run(self, feed: _Feed) -> None:
        try:
            await feed.run()
        except Exception:  # a reader must not die quietly: its watchers would wait forever
            log.exception("watch: the namespace's reader failed; its watchers resync",
                          extra={"namespace": feed.namespace})
            for watch in self.open_watches:
                if watch.namespace == feed.namespace:
                    watch.stop()
        finally:
            if self.feeds.get(feed.namespace) is feed and not feed.queues:
                del self.feeds[feed.namespace]

    def _lease_ms(self) -> int:
        return 3 * self.limits.watch_heartbeat_seconds * 1000


class Watch:
    """One client's watch stream: its place in the namespace's events, and its share of the caps."""

    def __init__(self, hub: Hub, namespace: str, source: str, watcher: str, alive: Callable[[], bool]):
        self.hub = hub
        self.alive = alive  # whether the client is still connected
        self.namespace = namespace
        self.source = source
        self.watcher = watcher
        self.queue = _Queue()
        self.start: str | None = None
        self.resync_first = False
        self._closed = False
        self._stopped = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hub.open_watches.discard(self)
        self.hub.watchers -= 1
        metrics.WATCHERS.dec()
        feed = self.hub.feeds.get(self.namespace)
        if feed is not None:
            feed.queues.discard(self.queue)
        await self.hub.store.release_watcher(self.source, self.watcher)

    def stop(self) -> None:
        """End the stream at its next step (the replica stops, or the client is gone)."""
        if not self._stopped:
            self._stopped = True
            self.queue.put_nowait(_STOP)

    async def events(self) -> AsyncIterator[Event]:
        """The events to send, heartbeats between them when idle, until WATCH_MAX_SECONDS (then END)."""
        limits = self.hub.limits
        deadline = time.monotonic() + limits.watch_max_seconds
        position = None
        async for event in self._catch_up(self.start, self.resync_first, deadline):
            position = event.id or position
            yield event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                yield END
                return
            try:
                async with asyncio.timeout(min(left, limits.watch_heartbeat_seconds)):
                    item = await self.queue.get()
            except TimeoutError:
                if time.monotonic() < deadline:
                    yield HEARTBEAT
                continue
            if item is _STOP:
                yield END
                return
            if item is _RESYNC:
                self.queue.overflowed = False
                async for event in self._catch_up(None, True, deadline):
                    position = event.id or position
                    yield event
                continue
            entry, kind, stored = item
            if position is not None and entry_id(entry) <= entry_id(position):
                continue  # read in the backlog already
            position = entry
            yield self._counted(change_event(entry, kind, stored))

    async def _catch_up(self, position: str | None, resync: bool, deadline: float) -> AsyncIterator[Event]:
        """From `position`, or from `resync` (if asked) and a snapshot: the events the stream holds after it.
        While Redis is unavailable it waits for its return (heartbeats meanwhile), as the live events do."""
        beat = time.monotonic() + self.hub.limits.watch_heartbeat_seconds
        while True:
            try:
                if position is None:
                    if resync:
                        yield self._counted(Event("resync", None, b"{}"))
                        resync = False
                    async for event in self._snapshot():
                        resync = True  # should Redis fail before the last part: start the client afresh
                        yield event
                        position = event.id  # None until the last part
                    resync = False
                async for event in self._backlog(position):
                    position = event.id
                    yield event
                return
            except StoreUnavailable:
                if time.monotonic() >= deadline:
                    return
                if time.monotonic() >= beat:
                    beat = time.monotonic() + self.hub.limits.watch_heartbeat_seconds
                    yield HEARTBEAT
                await asyncio.sleep(RETRY_S)

    async def _backlog(self, position: str) -> AsyncIterator[Event]:
        """The events after `position` that the stream holds (read before the live ones: see Hub.open)."""
        while True:
            entries = await self.hub.store.read_events(self.namespace, position, READ_COUNT)
            for entry, kind, stored in entries:
                position = entry
                if kind in CHANGES:
                    yield self._counted(change_event(entry, kind, stored))
            if len(entries) < READ_COUNT:
                return

    async def _snapshot(self) -> AsyncIterator[Event]:
        """Every live peer of the namespace as `snapshot` events of SNAPSHOT_PART peers each, all but the last
        with `"More": true` and no ID, so a client resumes only from a whole snapshot. The last one's ID is
        the stream position read before the peers: the events after it may repeat what the snapshot shows,
        never miss a change. In parts, so a namespace of 200,000 peers costs a watcher one part of memory,
        not the whole namespace's JSON at once."""
        store = self.hub.store
        _, _, position, _ = await store.sweep(self.namespace)
        name, cursor = json.dumps(self.namespace).encode(), "0"
        while True:
            page = await store.discover(self.namespace, cursor, SNAPSHOT_PART, self.source)
            peers = b",".join(record.peer_json(stored, page.now_ms) for stored in page.records)
            cursor = page.cursor
            if page.more:
                yield Event("snapshot", None, b'{"Namespace":%s,"Peers":[%s],"More":true}' % (name, peers))
            else:
                yield self._counted(Event("snapshot", position, b'{"Namespace":%s,"Peers":[%s]}' % (name, peers)))
                return

    @staticmethod
    def _counted(event: Event) -> Event:
        metrics.WATCH_EVENTS.labels(event.kind).inc()
        if event.id is not None and event.kind != "snapshot":
            metrics.WATCH_LAG.observe(max(0.0, time.time() - entry_id(event.id)[0] / 1000))
        return event
