"""Registrations in Redis: the only state the service has, shared by every replica.

One call here is one logical step, done in as few round trips as the Cluster slots allow:
register, on a single node = [count the source's request + admit the peer (rate, nonce, per-peer cap) +
check the source's quota + write the namespace], one script (lua.py REGISTER); on a Cluster, whose slots
part the source's, the peer's and the namespace's keys, [count], then [hold a place in the source's quota +
admit the peer], then [write the namespace]; discover and lookup = [count the source's request + read the
namespace] in one pipeline. A request refused before it reaches the store (a malformed or badly signed
body) is counted on its own (`count_request`), and a source found over its rate limit is refused by this
replica, with no round trip, until its window resets (`refuse_if_limited`).

A source is what rate limits and quotas are counted by: an IPv4 address, or an IPv6 /64 (rules.source).
When Redis fills up, new registrations narrow to small sources at a fair-share mark of its memory, and stop
at the high-water mark (507 store_full), well before Redis refuses writes; renewals and reads go on. If
Redis refuses the rate counter's write anyway (OOM), the read still answers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any, Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from opentelemetry.trace import SpanKind

from rendezvous import lua, metrics, record
from rendezvous.connection import RedisPyBackend, RespConnection
from rendezvous.keys import KeySchema
from rendezvous.record import Registration
from rendezvous.settings import Limits, Settings
from shared import tracing
from shared.logs import RepeatedWarnings
from shared.envelope import public_key_from_peer_id
from shared.errors import ApiError, ErrorCode

log = logging.getLogger(__name__)

RATE_WINDOW_MS = 60_000
STORE_RETRY_AFTER_S = 2
STORE_FULL_RETRY_AFTER_S = 60
# How stale the high-water reading may be: one INFO per replica per second, or per 50 registrations when
# they come faster (bounding how far past the mark a burst can write before it is seen). 50, not 100, since
# a registration in a watched namespace takes about twice the memory: its record, and its event's copy.
MEMORY_CHECK_INTERVAL_S = 1.0
MEMORY_CHECK_WRITES = 50
SMALL_SOURCE_QUOTA = 10  # past the fair-share mark, what a source may still hold and add to
FAIR_SHARE_MARGIN = 10  # percentage points below the high-water mark
METRICS_MAX_NAMESPACES = 200  # bound the label cardinality of the live-peers gauge
LIMITED_SOURCES_MAX = 100_000  # sources remembered over their rate limit (refuse_if_limited), at most
SWEEP_LIMIT = 1000  # expiries one sweep tells of; the rest wait for the next sweep, half a second later
READ_SOCKET_TIMEOUT_S = 10.0  # above any XREAD BLOCK the watchers ask for (watch.py READ_BLOCK_MS)
RENEW_CHUNK = 1000  # watch-stream leases renewed by one script call
READER_SPARE_CONNECTIONS = 64  # the event reader's pool beyond one connection per watcher (connect_reader)
# Redis names a script by the SHA-1 of its text, so the names are known here without asking Redis: a script
# Redis lacks (after a restart or SCRIPT FLUSH) is a NOSCRIPT reply, never a name missing on our side.
_SHA = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in lua.ALL.items()}


@dataclasses.dataclass(frozen=True)
class Page:
    now_ms: int
    records: list[bytes]  # stored records (rendezvous/record.py)
    cursor: str
    more: bool


class StoreUnavailable(ApiError):
    def __init__(self, detail: str):
        super().__init__(ErrorCode.STORE_UNAVAILABLE, f"the registration store is unavailable ({detail}); retry later",
                         retry_after=STORE_RETRY_AFTER_S)


def connect_reader(settings: Settings, backend: RespConnection | RedisPyBackend) -> Any:
    """A redis-py client for the event streams' blocking reads (XREAD BLOCK), apart from the pipelining
    connection: a blocked read there would hold up every request queued behind it. Each namespace's reader
    takes a connection of its own from the client's pool while it waits, so the pool holds one per watched
    namespace, and more for the watchers' own reads as they open: redis-py's default of 100 would refuse the
    reads of a replica watching 100 namespaces (MaxConnectionsError). A replica has at most one namespace
    per watcher, so its cap of watchers bounds the pool (on a Cluster, each node's)."""
    if settings.embedded:
        return backend.client  # fakeredis: one process, nothing to block
    pool = settings.limits.watch_max_per_replica + READER_SPARE_CONNECTIONS
    if settings.redis_cluster:
        return aioredis.RedisCluster.from_url(settings.redis_url, socket_connect_timeout=2.0, max_connections=pool,
                                              socket_timeout=READ_SOCKET_TIMEOUT_S, **_cluster_auth(settings))
    return aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, max_connections=pool,
                                   socket_timeout=READ_SOCKET_TIMEOUT_S)


def _cluster_auth(settings: Settings) -> dict:
    """Memorystore for Redis Cluster authenticates by IAM: each new connection presents the service
    account's access token (REDIS_IAM_AUTH); a password in REDIS_URL works as with any Redis."""
    if not settings.redis_iam_auth:
        return {}
    from shared.secrets import AccessTokenCredentials

    return {"credential_provider": AccessTokenCredentials()}


def connect(settings: Settings) -> RespConnection | RedisPyBackend:
    """The connection for REDIS_URL (a single node or a Cluster), or the embedded in-process store."""
    if settings.embedded:
        import fakeredis  # only the embedded default needs it

        return RedisPyBackend(fakeredis.FakeAsyncRedis())
    if settings.redis_cluster:
        return RedisPyBackend(aioredis.RedisCluster.from_url(settings.redis_url, socket_connect_timeout=2.0,
                                                             socket_timeout=2.0, **_cluster_auth(settings)))
    return RespConnection(settings.redis_url)


async def open_store(settings: Settings) -> "Store":
    """A store on `settings`' Redis (or the embedded one), its scripts loaded when Redis answers."""
    # the embedded store has no maxmemory to watch (and fakeredis no INFO)
    backend = connect(settings)
    store = Store(backend, KeySchema(settings.key_prefix), settings.limits, watch_memory=not settings.embedded,
                  reader=connect_reader(settings, backend))
    if settings.embedded:
        log.warning("store: embedded in-process store (fakeredis); registrations live only as long as this "
                    "process and are not shared with other replicas; set REDIS_URL for production")
    else:
        log.info("store: Redis%s", " Cluster" if settings.redis_cluster else "")
    try:
        await store.load_scripts()
    except Exception as exc:  # start anyway: /readyz says not ready and requests get 503 until Redis is back
        log.warning("store: Redis not reachable at start (%s); serving 503 until it is", exc)
    return store


class Store:
    def __init__(self, redis: RespConnection | RedisPyBackend, keys: KeySchema, limits: Limits,
                 watch_memory: bool = True, reader: Any = None):
        self.redis = redis
        self.reader = reader  # redis-py client for the event streams' reads (connect_reader); None: no watching
        self.keys = keys
        self.limits = limits
        self._warnings = RepeatedWarnings(log)
        self._watch_memory = watch_memory
        self._memory_checked = float("-inf")
        self._writes_since_check = 0
        self._memory_percent = 0.0  # of maxmemory, at the last check; 0 when Redis has no maxmemory
        # a single node runs a whole registration as one script; a Cluster's slots part its steps (lua.py)
        self._one_script = not getattr(redis, "cluster", False)
        self._limited: dict[str, float] = {}  # source -> when its rate window resets (monotonic), from Redis
        self._latencies: dict[str, Any] = {}  # operation -> its child of metrics.REDIS_LATENCY

    async def close(self) -> None:
        await self.redis.aclose()
        if self.reader is not None and self.reader is not getattr(self.redis, "client", None):
            await self.reader.aclose()

    # --- plumbing -------------------------------------------------------------------------------------------

    async def load_scripts(self) -> None:
        """Load the requests' Lua scripts into Redis (every primary, on a Cluster), so they run by SHA."""
        for name in lua.AT_START:
            await self.redis.script_load(lua.ALL[name])

    async def _pipeline(self, build: Callable[["_Batch"], None], full_ok: tuple[int, ...] = ()) -> list:
        """Run the commands `build` adds as one round trip. The scripts that met NOSCRIPT (Redis restarted,
        or its scripts flushed) are sent again with their text, which Redis runs and caches for the next
        EVALSHA: no reload for concurrent requests to race, however often the cache is flushed. The other
        commands are not sent again (a rate counter or a nonce must not count one request twice)."""
        batch = _Batch()
        build(batch)
        results = await self._execute(batch)
        missing = [i for i, reply in enumerate(results) if isinstance(reply, NoScriptError)]
        if missing:
            for i, reply in zip(missing, await self._execute(batch.with_source(missing))):
                results[i] = reply
        for i in full_ok:  # a write Redis refused for lack of memory that the caller can do without
            if isinstance(results[i], ResponseError) and str(results[i]).startswith("OOM"):
                results[i] = None
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise self._unavailable(failures[0]) from None
        return results

    async def _execute(self, batch: "_Batch") -> list:
        """One round trip to Redis, timed and traced; a failed one counted and turned into a 503."""
        # a handful of fixed combinations (rate+register, rate+discover, ...), a repeated step named once
        operation = "+".join(dict.fromkeys(batch.names))
        with tracing.span(f"redis {operation}", SpanKind.CLIENT, {"db.system": "redis", "db.operation.name": operation}):
            started = time.perf_counter()
            try:
                return await self.redis.execute(batch.commands)
            except RedisError as exc:
                metrics.REDIS_ERRORS.inc()
                raise self._unavailable(exc) from None
            finally:
                self._latency(operation).observe(time.perf_counter() - started)

    def _latency(self, operation: str) -> Any:
        """The latency histogram's child for `operation`, looked up once: labels() costs a lock and a tuple
        on every call, and this is every round trip's."""
        child = self._latencies.get(operation)
        if child is None:
            child = self._latencies[operation] = metrics.REDIS_LATENCY.labels(operation)
        return child

    def _unavailable(self, exc: BaseException) -> ApiError:
        if isinstance(exc, ResponseError) and not str(exc).startswith(("OOM", "LOADING", "BUSY", "CLUSTERDOWN",
                                                                         "TRYAGAIN", "MASTERDOWN", "READONLY")):
            log.error("store: unexpected reply from Redis: %s", exc)
            return ApiError(ErrorCode.INTERNAL, "the registration store refused the operation")
        self._warnings.warning(type(exc).__name__, "store: Redis unavailable: %s: %s", type(exc).__name__, exc)
        return StoreUnavailable(type(exc).__name__)

    def _rate(self, batch: "_Batch", source: str) -> None:
        batch.script("rate", [self.keys.ip_rate(source)], RATE_WINDOW_MS)

    def _check_ip_rate(self, source: str, reply: list | None) -> None:
        if reply is None:  # Redis is full and refused the counter: reads go on, registrations stop elsewhere
            return
        count, retry_ms = reply
        if count > self.limits.rate_limit_ip_per_minute:
            raise self._over_ip_rate(source, retry_ms)

    def _over_ip_rate(self, source: str, retry_ms: int) -> ApiError:
        """The refusal of a source over its rate limit, remembered until its window resets."""
        if len(self._limited) >= LIMITED_SOURCES_MAX:
            now = time.monotonic()
            self._limited = {s: until for s, until in self._limited.items() if until > now}
        if len(self._limited) < LIMITED_SOURCES_MAX:
            self._limited[source] = time.monotonic() + retry_ms / 1000
        return self._ip_rate_error(retry_ms / 1000)

    def _ip_rate_error(self, retry_s: float) -> ApiError:
        return ApiError(ErrorCode.RATE_LIMITED,
                        f"more than {self.limits.rate_limit_ip_per_minute} requests a minute from this address",
                        retry_after=max(retry_s, 1.0))

    def refuse_if_limited(self, source: str) -> None:
        """Refuse a request from a source this replica saw over its rate limit, until its window resets: no
        round trip, and none of the request's parsing or signature checking, is spent on it."""
        until = self._limited.get(source)
        if until is not None:
            left = until - time.monotonic()
            if left > 0:
                raise self._ip_rate_error(left)
            del self._limited[source]

    # --- operations -----------------------------------------------------------------------------------------

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise self._unavailable(exc) from None

    async def count_request(self, source: str) -> None:
        """Count a request against its source's rate limit: a request that does not reach a step counting it
        (a refused registration body, a deregistration, a watch)."""
        self.refuse_if_limited(source)
        [reply] = await self._pipeline(lambda batch: self._rate(batch, source), full_ok=(0,))
        self._check_ip_rate(source, reply)

    async def register(self, reg: Registration, source: str) -> tuple[int, bool, bool]:
        """Count the request against its source, and store `reg`, superseding the peer's registration in that
        namespace. -> (expiry ms, replaced, evicted another source's registration to make room)."""
        # Past the fair-share mark of Redis memory only small sources may add a registration, past the
        # high-water mark nobody; renewals always may (they take no new room). So a Redis that fills up never
        # refuses the reads' counters, and a new peer from an address of its own gets in until the high water.
        if not self._one_script:
            await self.count_request(source)  # first of the Cluster's steps: nothing is held for a refused one
        self._writes_since_check += 1
        percent = await self._memory_level()
        full = percent >= self._fair_share_mark()
        cap = SMALL_SOURCE_QUOTA if full else self.limits.max_registrations_per_source
        if percent >= self.limits.redis_high_water_percent:
            cap = 0
        if self._one_script:
            expiry, replaced, released = await self._register_at_once(reg, source, cap, full, percent)
        else:
            expiry, replaced, released = await self._register_by_slots(reg, source, cap, full, percent)
        pairs = list(zip(released[::2], released[1::2]))
        await self._release_held(reg.namespace, pairs)
        member = record.member(reg.public_key)
        return expiry, bool(replaced), any(other != member for _, other in pairs)

    async def _register_at_once(self, reg: Registration, source: str, cap: int, full: bool,
                                percent: float) -> tuple[int, int, list]:
        """A registration as one script on a single node (lua.py REGISTER): nothing to undo on a refusal."""
        [(status, *reply)] = await self._pipeline(lambda batch: batch.script(
            "register", *self.register_arguments(reg, source, cap)))
        if status == b"ok":
            return reply[0], reply[1], reply[2]
        if status == b"ip_rate":
            raise self._over_ip_rate(source, reply[0])
        self._check_admission(status, reply[0])
        if status == b"quota":
            raise self._quota_refusal(full, percent)
        raise self._namespace_full(reg)

    def register_arguments(self, reg: Registration, source: str, cap: int) -> tuple:
        """The keys and then the arguments of lua.py REGISTER for `reg` (bench/bench_redis_clients.py sends
        the same through other clients)."""
        peer, ns = self.keys.peer(reg.peer_id), self.keys.namespace(reg.namespace)
        member = record.member(reg.public_key)
        return ([self.keys.ip_rate(source), self.keys.held_by(source), peer.rate, peer.nonce(reg.nonce), peer.index,
                 *ns.all(), self.keys.namespaces()],
                self.limits.rate_limit_ip_per_minute, RATE_WINDOW_MS, _held_entry(reg.namespace, member),
                reg.ttl * 1000, cap, self.limits.rate_limit_peer_per_minute, self._nonce_ttl_ms(), reg.namespace,
                self.limits.max_registrations_per_peer, member, record.stored_body(reg),
                self.limits.max_peers_per_namespace, source, *self._event_bounds())

    async def _register_by_slots(self, reg: Registration, source: str, cap: int, full: bool,
                                 percent: float) -> tuple[int, int, list]:
        """A registration on a Cluster (counted already): hold + admit on the source's and the peer's slots in
        one round trip, then the write on the namespace's; the places held are given back on a refusal."""
        peer = self.keys.peer(reg.peer_id)
        held = self.keys.held_by(source)
        member = record.member(reg.public_key)
        entry = _held_entry(reg.namespace, member)
        ttl_ms = reg.ttl * 1000

        def admit(batch):
            batch.script("hold", [held], entry, ttl_ms, cap)
            batch.script("admit", [peer.rate, peer.nonce(reg.nonce), peer.index],
                         self.limits.rate_limit_peer_per_minute, RATE_WINDOW_MS, self._nonce_ttl_ms(),
                         reg.namespace, ttl_ms, self.limits.max_registrations_per_peer, member)

        hold, (status, detail) = await self._pipeline(admit)
        undo = []
        if hold == 2:
            undo.append(("ZREM", held, entry))
        if status == b"ok" and detail == 1:
            undo.append(("ZREM", peer.index, member + reg.namespace.encode()))
        try:
            self._check_admission(status, detail)
            if hold == 0:
                raise self._quota_refusal(full, percent)
            ns = self.keys.namespace(reg.namespace)

            def write(batch):
                batch.script("write", ns.all(), member, record.stored_body(reg),
                             ttl_ms, self.limits.max_peers_per_namespace, source, *self._event_bounds())
                expires = int(time.time() * 1000) + ttl_ms  # for indexes only: this replica's clock will do
                batch.call("ZADD", self.keys.namespaces(), "GT", expires, reg.namespace)  # live-peers metric
                batch.call("ZADD", held, "XX", "GT", expires, entry)  # a renewal's quota place lasts as long
                batch.call("PEXPIREAT", held, expires, "GT")

            [(stored, expiry, replaced, released), *_] = await self._pipeline(write)
            if not stored:
                raise self._namespace_full(reg)
        except ApiError:
            if undo:
                await self._undo(undo)
            raise
        return expiry, replaced, released

    def _quota_refusal(self, full: bool, percent: float) -> ApiError:
        """The source holds all it may: its quota, or past the fair-share mark of memory, a small source's."""
        if full:
            return self._store_full(percent)
        return ApiError(ErrorCode.SOURCE_QUOTA, f"this address holds its maximum of "
                        f"{self.limits.max_registrations_per_source} live registrations; they expire with "
                        f"their TTL", retry_after=STORE_FULL_RETRY_AFTER_S)

    def _namespace_full(self, reg: Registration) -> ApiError:
        return ApiError(ErrorCode.NAMESPACE_FULL, f"namespace {reg.namespace!r} holds its maximum of "
                        f"{self.limits.max_peers_per_namespace} peers, and this address holds no fewer than any other")

    async def _release_held(self, namespace: str, pairs: list[tuple[bytes, bytes]]) -> None:
        """Drop the quota entries of registrations that left a namespace: (source, member) pairs."""
        commands = [("ZREM", self.keys.held_by(source.decode()), _held_entry(namespace, member))
                    for source, member in pairs if source]
        if commands:
            await self._undo(commands)

    async def _memory_level(self) -> float:
        """Redis's used memory in percent of maxmemory, read at most once a second (or per MEMORY_CHECK_WRITES
        registrations) per replica; 0 for the embedded store, or when it cannot be read."""
        now = time.monotonic()
        if self._watch_memory and (now - self._memory_checked >= MEMORY_CHECK_INTERVAL_S
                                   or self._writes_since_check > MEMORY_CHECK_WRITES):
            self._memory_checked, self._writes_since_check = now, 0
            try:
                self._memory_percent = memory_percent(await self.redis.execute([("INFO", "memory")]))
            except RedisError as exc:
                self._warnings.warning("memory", "store: cannot read Redis memory: %s", exc)
        return self._memory_percent

    def _fair_share_mark(self) -> float:
        """Ten points below the high-water mark: past it, only small sources may add a registration."""
        return max(1, self.limits.redis_high_water_percent - FAIR_SHARE_MARGIN)

    def _store_full(self, percent: float) -> ApiError:
        return ApiError(ErrorCode.STORE_FULL, f"the registration store is {percent:.0f}% full; past "
                        f"{self._fair_share_mark():.0f}% only addresses holding fewer than {SMALL_SOURCE_QUOTA} "
                        f"registrations may add one, past {self.limits.redis_high_water_percent}% none; renewals "
                        f"and discovery go on", retry_after=STORE_FULL_RETRY_AFTER_S)

    async def writable(self) -> bool:
        """Whether a new registration from a small source would be taken now (for /readyz)."""
        return await self._memory_level() < self.limits.redis_high_water_percent

    def _check_admission(self, status: bytes, detail: int) -> None:
        if status == b"rate":
            raise ApiError(ErrorCode.RATE_LIMITED,
                           f"more than {self.limits.rate_limit_peer_per_minute} signed requests a minute from this peer",
                           retry_after=max(detail, 1000) / 1000)
        if status == b"replay":
            raise ApiError(ErrorCode.REPLAYED_NONCE, "this nonce was already used; sign a new request")
        if status == b"peer_cap":
            raise ApiError(ErrorCode.PEER_REGISTRATION_LIMIT, f"the peer is registered in its maximum of "
                           f"{self.limits.max_registrations_per_peer} namespaces")

    def _event_bounds(self) -> tuple[int, int]:
        """The last two arguments of every script that writes a namespace's event stream (lua.py _EVENTS)."""
        return self.limits.watch_stream_max_events, self.limits.watch_resume_seconds * 1000

    def _nonce_ttl_ms(self) -> int:
        # a nonce must be remembered as long as its timestamp could still pass the window check
        return 2 * self.limits.timestamp_window * 1000 + 1000

    async def _undo(self, commands: list[tuple]) -> None:
        """Give back the places a refused registration reserved (in the source's quota, the peer's index)."""
        try:
            await self.redis.execute(commands)
        except RedisError as exc:  # the stale entries expire with the TTL they were reserved for
            self._warnings.warning("release", "store: could not release a refused registration's places: %s", exc)

    async def discover(self, namespace: str, cursor: str, limit: int, source: str) -> Page:
        ns = self.keys.namespace(namespace)

        def read(batch):
            self._rate(batch, source)
            batch.script("discover", ns.all(), cursor, limit)

        self.refuse_if_limited(source)
        ip_reply, reply = await self._pipeline(read, full_ok=(0,))
        self._check_ip_rate(source, ip_reply)
        now, new_cursor, more, *records = reply
        return Page(now, records, new_cursor.decode(), bool(more))

    async def lookup(self, namespace: str, peer_id: str, source: str) -> tuple[int, bytes | None]:
        member = record.member(public_key_from_peer_id(peer_id))

        def read(batch):
            self._rate(batch, source)
            batch.script("lookup", self.keys.namespace(namespace).all(), member)

        self.refuse_if_limited(source)
        ip_reply, (now, stored) = await self._pipeline(read, full_ok=(0,))
        self._check_ip_rate(source, ip_reply)
        return now, stored or None

    async def admit_unregistration(self, peer_id: str, nonce: str) -> None:
        """The peer's rate limit and the replay check for a deregistration (its request was counted already)."""
        peer = self.keys.peer(peer_id)
        [(status, detail)] = await self._pipeline(lambda batch: batch.script(
            "admit", [peer.rate, peer.nonce(nonce), peer.index], self.limits.rate_limit_peer_per_minute,
            RATE_WINDOW_MS, self._nonce_ttl_ms(), "", 0, 0, b""))
        self._check_admission(status, detail)

    async def unregister(self, peer_id: str, namespace: str | None) -> list[str]:
        """Remove the peer from `namespace`, or from every namespace when None. -> namespaces it left."""
        member = record.member(public_key_from_peer_id(peer_id))
        index = self.keys.peer(peer_id).index
        if namespace is None:  # the peer's entries in its bucket of the index (keys.py INDEX_BUCKETS)
            [entries] = await self._pipeline(lambda batch: batch.call("ZRANGE", index, 0, -1))
            namespaces = [e[len(member):].decode() for e in entries if e.startswith(member)]
        else:
            namespaces = [namespace]
        if not namespaces:
            return []

        def remove(batch):
            for name in namespaces:
                batch.script("unregister", self.keys.namespace(name).all(), member, *self._event_bounds())
            batch.call("ZREM", index, *(member + name.encode() for name in namespaces))

        *removed, _ = await self._pipeline(remove)
        for name, (_, source) in zip(namespaces, removed):
            await self._release_held(name, [(source, member)])
        return [name for name, (was_live, _) in zip(namespaces, removed) if was_live]

    # --- watching (rendezvous/watch.py) --------------------------------------------------------------------

    async def sweep(self, namespace: str) -> tuple[int, str, str, str]:
        """Tell of the namespace's expired registrations (at most SWEEP_LIMIT) as `expire` events, and keep its
        event stream (which exists while it is watched).
        -> (how many expired, the stream's first entry ID, its last, the last it trimmed)."""
        [swept] = await self.sweep_all([namespace])
        return swept

    async def read_events(self, namespace: str, after: str, count: int,
                          block_ms: int | None = None) -> list[tuple[str, bytes, bytes]]:
        """Events of the namespace's stream after entry `after`: (entry ID, kind, stored record). With
        `block_ms`, wait that long for the first one (XREAD BLOCK, on the reader's own connection)."""
        key = self.keys.namespace(namespace).events
        try:
            if block_ms is None:
                entries = await self.reader.xrange(key, f"({after}", "+", count=count)
            else:
                replies = await self.reader.xread({key: after}, count=count, block=block_ms)
                entries = replies[0][1] if replies else []  # [[key, entries]]: one stream asked
        except RedisError as exc:
            metrics.REDIS_ERRORS.inc()
            raise self._unavailable(exc) from None
        return [(_text(entry_id), fields.get(b"e", b""), fields.get(b"r", b"")) for entry_id, fields in entries]

    async def hold_watcher(self, source: str, watcher: str, cap: int, lease_ms: int) -> bool:
        """Take a lease on one of the source's places for watch streams, if it holds fewer than `cap`."""
        [admitted] = await self._pipeline(lambda batch: batch.script(
            "watcher", [self.keys.watchers(source)], lease_ms, cap, watcher))
        return bool(admitted)

    async def renew_watchers(self, by_source: dict[str, list[str]], lease_ms: int) -> None:
        """Renew the leases of these watchers, by source, in one round trip."""
        def build(batch: _Batch) -> None:
            for source, watchers in by_source.items():
                for at in range(0, len(watchers), RENEW_CHUNK):
                    batch.script("watcher", [self.keys.watchers(source)], lease_ms, 0,
                                 *watchers[at:at + RENEW_CHUNK])
        await self._pipeline(build)

    async def sweep_all(self, namespaces: list[str]) -> list[tuple[int, str, str, str]]:
        """`sweep` for each of these namespaces, in one round trip."""
        def build(batch: _Batch) -> None:
            for namespace in namespaces:
                batch.script("sweep", self.keys.namespace(namespace).all(), SWEEP_LIMIT, *self._event_bounds())
        return [(expired, _text(first), _text(last), _text(trimmed))
                for expired, first, last, trimmed in await self._pipeline(build)]

    async def release_watcher(self, source: str, watcher: str) -> None:
        await self._undo([("ZREM", self.keys.watchers(source), watcher)])

    async def live_namespaces(self, limit: int) -> list[str]:
        """Namespaces holding live registrations, in name order (this replica's clock decides "live")."""
        now_ms = int(time.time() * 1000)
        [names] = await self._pipeline(lambda batch: batch.call(
            "ZRANGEBYSCORE", self.keys.namespaces(), f"({now_ms}", "+inf", "LIMIT", 0, limit))
        return sorted(name.decode() for name in names)

    async def live_peers(self) -> dict[str, int]:
        """Live registrations per namespace, for the metrics gauge (at most METRICS_MAX_NAMESPACES)."""
        now_ms = int(time.time() * 1000)  # a gauge: this replica's clock is close enough
        names = await self.live_namespaces(METRICS_MAX_NAMESPACES)
        if not names:
            return {}

        def count(batch):
            for name in names:
                batch.call("ZCOUNT", self.keys.namespace(name).expiries, f"({now_ms}", "+inf")

        counts = await self._pipeline(count)
        return dict(zip(names, counts))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _held_entry(namespace: str, member: bytes) -> bytes:
    """A registration in its source's quota set: the namespace, a NUL (no namespace holds one), the member."""
    return namespace.encode() + b"\0" + member


def memory_percent(replies: list) -> float:
    """Used memory as a percentage of maxmemory from an INFO memory reply (raw text from our connection, a
    dict from redis-py, or a dict per node from a Cluster: the fullest node counts); 0 without maxmemory."""
    [info] = replies
    if isinstance(info, (bytes, str)):
        text = info.decode() if isinstance(info, bytes) else info
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    nodes = [info] if "used_memory" in info else [v for v in info.values() if isinstance(v, dict)]
    percents = [100.0 * int(node["used_memory"]) / int(node["maxmemory"]) for node in nodes
                if int(node.get("maxmemory", 0) or 0) > 0]
    return max(percents, default=0.0)


class _Batch:
    """The commands of one round trip, recorded so the scripts Redis lacked can be sent again."""

    def __init__(self) -> None:
        self.commands: list[tuple] = []
        self.names: list[str] = []  # what each command does, for traces and the latency metric

    def script(self, name: str, keys: Iterable[str], *args: Any) -> None:
        keys = tuple(keys)
        self.commands.append(("EVALSHA", _SHA[name], len(keys), *keys, *args))
        self.names.append(name)

    def with_source(self, indices: list[int]) -> "_Batch":
        """The scripts at `indices` as EVAL with their text, in place of EVALSHA with their SHA."""
        again = _Batch()
        for i in indices:
            _evalsha, _sha, *rest = self.commands[i]
            again.commands.append(("EVAL", lua.ALL[self.names[i]], *rest))
            again.names.append(self.names[i])
        return again

    def call(self, *command: Any) -> None:
        self.commands.append(command)
        self.names.append(str(command[0]).lower())
