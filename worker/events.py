"""The worker's one event seam, in the manner of go-libp2p's holepunch tracer: each step of reaching a peer
or a relay is one typed event, and `Tracer.emit` alone turns it into the `holepunch:` log line, the
metrics, an event on the current span, and the per-peer path record served on /status. The connection
logic never touches logs, metrics or records itself.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import time

from shared import tracing
from worker import metrics

log = logging.getLogger("worker.connect")

FAILED_RETRY_FIRST = 2.0
FAILED_RETRY_CEILING = 60.0
PATHS = ("direct", "relayed", "hole-punched")


@dataclasses.dataclass
class PeerPath:
    """What we know of our connection to one peer; served as JSON on /status. Written by Tracer only."""
    peer_id: str
    path: str = "connecting"  # direct | relayed | hole-punched | failed | connecting
    initiated_by: str = "us"  # us | them (the peer dialed first; we adopted its connection)
    connect_seconds: float | None = None  # from the start of our attempt to the path being settled
    time_to_direct_seconds: float | None = None  # hole-punched only: relayed connection -> direct one
    rtt_ms: float | None = None
    over: str | None = None  # the kind of connection the last echo actually ran over
    transport: str | None = None  # of the connection proven when the path was settled: quic, tcp, ws, relayed
    attempts: int = 0
    error: str | None = None
    updated: float = dataclasses.field(default_factory=time.time)
    retry_at: float = 0.0  # monotonic; a failed peer is tried again after it

    @property
    def connected(self) -> bool:
        return self.path in PATHS

    def as_json(self) -> dict:
        fields = dataclasses.asdict(self)
        fields.pop("retry_at")
        return fields


# --- the events -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ConnectStarted:
    peer: str


@dataclasses.dataclass(frozen=True)
class DirectDialFailed:
    peer: str
    addrs: tuple[str, ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class RelayDialFailed:
    peer: str
    relay: str
    error: str


@dataclasses.dataclass(frozen=True)
class Relayed:
    peer: str
    relay: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class HolePunchStarted:
    peer: str


@dataclasses.dataclass(frozen=True)
class HolePunched:
    peer: str
    seconds: float  # relayed connection -> direct one
    initiated_by: str  # us: our DCUtR made it; them: the peer's did


@dataclasses.dataclass(frozen=True)
class StayedRelayed:
    peer: str


@dataclasses.dataclass(frozen=True)
class Connected:
    peer: str
    path: str
    initiated_by: str
    seconds: float
    rtt_ms: float
    over: str
    transport: str  # quic, tcp or ws; relayed when over a relay


@dataclasses.dataclass(frozen=True)
class ConnectFailed:
    peer: str
    error: str


@dataclasses.dataclass(frozen=True)
class EchoAnswered:
    peer: str
    rtt_ms: float
    over: str
    upgraded: bool  # the peer's DCUtR turned our relayed connection direct since we last looked


@dataclasses.dataclass(frozen=True)
class Lost:
    peer: str
    error: str


@dataclasses.dataclass(frozen=True)
class Departed:
    peer: str  # left the namespace, and no connection is left


@dataclasses.dataclass(frozen=True)
class Readdressed:
    peer: str  # registered new addresses while we could not reach it


@dataclasses.dataclass(frozen=True)
class Reserved:
    relay: str
    circuit: str


@dataclasses.dataclass(frozen=True)
class ReservationFailed:
    relay: str
    error: str
    retry_in: float


@dataclasses.dataclass(frozen=True)
class RelayLost:
    relay: str


Event = (ConnectStarted | DirectDialFailed | RelayDialFailed | Relayed | HolePunchStarted | HolePunched
         | StayedRelayed | Connected | ConnectFailed | EchoAnswered | Lost | Departed | Readdressed | Reserved
         | ReservationFailed | RelayLost)


# --- the one place events become records, log lines, metrics and span events --------------------------------

class Tracer:
    def __init__(self) -> None:
        self.peers: dict[str, PeerPath] = {}

    def record(self, peer: str) -> PeerPath:
        return self.peers.setdefault(peer, PeerPath(peer))

    def emit(self, event: Event) -> None:
        fields = dataclasses.asdict(event)
        tracing.add_event(type(event).__name__, fields)
        getattr(self, f"_{type(event).__name__}")(event, fields)

    def _count_paths(self) -> None:
        for path in PATHS:
            metrics.CONNECTED_PEERS.labels(path).set(sum(1 for r in self.peers.values() if r.path == path))

    def _line(self, level: int, message: str, name: str, fields: dict) -> None:
        log.log(level, f"holepunch: {message}", extra={"event": name, **fields})

    # each handler below owns one event's effects

    def _ConnectStarted(self, e: ConnectStarted, fields: dict) -> None:
        self.record(e.peer).attempts += 1

    def _DirectDialFailed(self, e: DirectDialFailed, fields: dict) -> None:
        self._line(logging.INFO, f"no direct path to {e.peer}; trying the relay", "direct_failed",
                   {**fields, "addrs": list(e.addrs)})

    def _RelayDialFailed(self, e: RelayDialFailed, fields: dict) -> None:
        self._line(logging.WARNING, f"relay dial to {e.peer} via {e.relay} failed", "relay_failed", fields)

    def _Relayed(self, e: Relayed, fields: dict) -> None:
        self._line(logging.INFO, f"relayed connection to {e.peer} via {e.relay}", "relayed", fields)

    def _HolePunchStarted(self, e: HolePunchStarted, fields: dict) -> None:
        metrics.HOLEPUNCH_ATTEMPTS.inc()

    def _HolePunched(self, e: HolePunched, fields: dict) -> None:
        self.record(e.peer).time_to_direct_seconds = e.seconds
        if e.initiated_by == "us":
            metrics.HOLEPUNCH_SUCCESSES.inc()
            metrics.TIME_TO_DIRECT.observe(e.seconds)
        self._line(logging.INFO, f"{e.peer} upgraded from relayed to direct in {e.seconds} s", "hole_punched",
                   fields)

    def _StayedRelayed(self, e: StayedRelayed, fields: dict) -> None:
        self._line(logging.INFO, f"no direct connection to {e.peer}; staying relayed", "stay_relayed", fields)

    def _Connected(self, e: Connected, fields: dict) -> None:
        record = self.record(e.peer)
        record.path, record.initiated_by, record.connect_seconds = e.path, e.initiated_by, e.seconds
        record.rtt_ms, record.over, record.error, record.updated = e.rtt_ms, e.over, None, time.time()
        record.transport = e.transport
        if e.path != "hole-punched":
            record.time_to_direct_seconds = None
        metrics.CONNECTIONS.labels(e.path).inc()
        metrics.CONNECT_SECONDS.labels(e.path).observe(e.seconds)
        metrics.ECHO_RTT.labels(e.over).observe(e.rtt_ms / 1000)
        self._count_paths()
        self._line(logging.INFO, f"connected to {e.peer} path={e.path} over {e.transport} rtt={e.rtt_ms} ms",
                   "connected",
                   {**fields, "time_to_direct": record.time_to_direct_seconds})

    def _ConnectFailed(self, e: ConnectFailed, fields: dict) -> None:
        record = self.record(e.peer)
        delay = min(FAILED_RETRY_CEILING, FAILED_RETRY_FIRST * 2 ** min(record.attempts - 1, 10))
        delay = random.uniform(delay / 2, delay)
        record.path, record.error, record.updated = "failed", e.error, time.time()
        record.retry_at = time.monotonic() + delay
        metrics.CONNECTIONS.labels("failed").inc()
        self._count_paths()
        self._line(logging.WARNING, f"cannot reach {e.peer}: {e.error}; retrying in {delay:.1f} s", "failed",
                   {**fields, "retry_in": round(delay, 2)})

    def _EchoAnswered(self, e: EchoAnswered, fields: dict) -> None:
        record = self.record(e.peer)
        if e.upgraded:
            record.path = "hole-punched"
        record.rtt_ms, record.over, record.updated = e.rtt_ms, e.over, time.time()
        metrics.ECHO_RTT.labels(e.over).observe(e.rtt_ms / 1000)
        self._count_paths()
        self._line(logging.DEBUG, f"echo with {e.peer} over {e.over} in {e.rtt_ms} ms", "echo",
                   {**fields, "path": record.path})

    def _Lost(self, e: Lost, fields: dict) -> None:
        record = self.record(e.peer)
        record.path, record.error, record.retry_at, record.updated = "failed", f"lost: {e.error}", 0.0, time.time()
        self._count_paths()
        self._line(logging.WARNING, f"lost the connection to {e.peer}; reconnecting", "lost", fields)

    def _Departed(self, e: Departed, fields: dict) -> None:
        if self.peers.pop(e.peer, None) is not None:
            self._count_paths()
            self._line(logging.INFO, f"{e.peer} left the namespace", "departed", fields)

    def _Readdressed(self, e: Readdressed, fields: dict) -> None:
        self.record(e.peer).retry_at = 0.0

    def _Reserved(self, e: Reserved, fields: dict) -> None:
        self._line(logging.INFO, f"reserved a slot at relay {e.relay}", "reserved", fields)

    def _ReservationFailed(self, e: ReservationFailed, fields: dict) -> None:
        self._line(logging.WARNING, f"no reservation at relay {e.relay}: {e.error}; retrying in {e.retry_in:.1f} s",
                   "reservation_failed", fields)

    def _RelayLost(self, e: RelayLost, fields: dict) -> None:
        self._line(logging.WARNING, f"lost the connection to relay {e.relay}; reserving again", "relay_lost", fields)
