"""The Redis key schema: every key the service touches is spelled here and nowhere else.

Keys that one Lua script touches together share a Redis Cluster hash tag (`{...}`), so each script runs on
one slot: a namespace's keys share `{ns:<namespace>}`, a peer's rate counter, nonces and its bucket of the
peers' namespace index share `{p:<bucket>}`, a source's rate counter and held registrations share `{ip:<source>}` (a source is
an IPv4 address or an IPv6 /64: rendezvous/rules.py). On a single node, where no slot binds a script, one
script does a whole registration across the three (lua.py REGISTER).
"""
from __future__ import annotations

import dataclasses
import zlib

# The peers' namespace index (each peer's registrations, for its cap and its deregistration everywhere) is
# kept in INDEX_BUCKETS sorted sets, a peer's entries in the one its ID hashes to, rather than in a key per
# peer: a key costs Redis about 200 bytes of its own, an entry in a small (listpack-encoded) set about 40.
# Up to about 800,000 peers on one node a bucket holds fewer than zset-max-listpack-entries (128) entries; the
# admission reads the peer's bucket whole, which costs Redis microseconds at that size.
INDEX_BUCKETS = 8192


@dataclasses.dataclass(frozen=True)
class NamespaceKeys:
    expiries: str  # ZSET member -> expiry (Unix ms, Redis clock); a member is record.member(public key)
    sequence: str  # ZSET member -> registration sequence (Redis clock in us, strictly rising)
    records: str  # HASH member -> the stored record (rendezvous/record.py), which names its source too
    sources: str  # ZSET source -> how many live registrations it holds here (for fair shares when full)
    by_source_prefix: str  # + source: ZSET member -> sequence, a source's registrations oldest first
    events: str  # STREAM of join/renew/leave/expire while watched, e=kind r=stored record (rendezvous/watch.py)

    def all(self) -> tuple[str, str, str, str, str]:
        """The keys every namespace script declares (the per-source sets share their slot)."""
        return self.expiries, self.sequence, self.records, self.sources, self.events


@dataclasses.dataclass(frozen=True)
class PeerKeys:
    rate: str  # STRING fixed-window request counter
    index: str  # ZSET member + namespace -> expiry: the registrations of the peers of this bucket (INDEX_BUCKETS)
    nonce_prefix: str

    def nonce(self, nonce: str) -> str:
        return self.nonce_prefix + nonce


class KeySchema:
    def __init__(self, prefix: str = "hp"):
        self.prefix = prefix

    def namespace(self, namespace: str) -> NamespaceKeys:
        tag = f"{self.prefix}:{{ns:{namespace}}}"
        return NamespaceKeys(f"{tag}:exp", f"{tag}:seq", f"{tag}:rec", f"{tag}:src", f"{tag}:by:", f"{tag}:events")

    def peer(self, peer_id: str) -> PeerKeys:
        tag = f"{self.prefix}:{{p:{zlib.crc32(peer_id.encode()) % INDEX_BUCKETS}}}"
        return PeerKeys(f"{tag}:{peer_id}:rate", f"{tag}:ns", f"{tag}:{peer_id}:nonce:")

    def ip_rate(self, source: str) -> str:
        return f"{self.prefix}:{{ip:{source}}}:rate"

    def held_by(self, source: str) -> str:
        """ZSET namespace + NUL + member -> expiry: the live registrations a source holds (its quota)."""
        return f"{self.prefix}:{{ip:{source}}}:held"

    def watchers(self, source: str) -> str:
        """ZSET watcher ID -> lease expiry: the watch streams a source holds open, on every replica together."""
        return f"{self.prefix}:{{ip:{source}}}:watchers"

    def namespaces(self) -> str:
        """ZSET namespace -> latest expiry in it: which namespaces have live peers (for metrics)."""
        return f"{self.prefix}:namespaces"
