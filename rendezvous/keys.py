"""The Redis key schema: every key the service touches is spelled here and nowhere else.

Keys that one Lua script touches together share a Redis Cluster hash tag (`{...}`), so each script runs on
one slot: a namespace's keys share `{ns:<namespace>}`, a peer's rate counter, nonces and namespace index
share `{peer:<peer id>}`, a source's rate counter and held registrations share `{ip:<source>}` (a source is
an IPv4 address or an IPv6 /64: rendezvous/rules.py).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NamespaceKeys:
    expiries: str  # ZSET member=Ed25519 key (32 bytes), score=expiry (Unix ms, Redis clock)
    sequence: str  # ZSET member=Ed25519 key, score=registration sequence (Redis clock in us, strictly rising)
    records: str  # HASH member -> the stored record (rendezvous/record.py)
    sources: str  # ZSET source -> how many live registrations it holds here (for fair shares when full)
    source_of: str  # HASH member -> the source that registered it
    by_source_prefix: str  # + source: ZSET member -> sequence, a source's registrations oldest first
    events: str  # STREAM of join/renew/leave/expire while watched, e=kind r=stored record (rendezvous/watch.py)

    def all(self) -> tuple[str, str, str, str, str, str]:
        """The keys every namespace script declares (the per-source sets share their slot)."""
        return self.expiries, self.sequence, self.records, self.sources, self.source_of, self.events


@dataclasses.dataclass(frozen=True)
class PeerKeys:
    rate: str  # STRING fixed-window request counter
    namespaces: str  # ZSET namespace -> expiry: the peer's registrations, for its cap and deletion
    nonce_prefix: str

    def nonce(self, nonce: str) -> str:
        return self.nonce_prefix + nonce


class KeySchema:
    def __init__(self, prefix: str = "hp"):
        self.prefix = prefix

    def namespace(self, namespace: str) -> NamespaceKeys:
        tag = f"{self.prefix}:{{ns:{namespace}}}"
        return NamespaceKeys(f"{tag}:exp", f"{tag}:seq", f"{tag}:rec", f"{tag}:src", f"{tag}:who", f"{tag}:by:",
                             f"{tag}:events")

    def peer(self, peer_id: str) -> PeerKeys:
        tag = f"{self.prefix}:{{peer:{peer_id}}}"
        return PeerKeys(f"{tag}:rate", f"{tag}:ns", f"{tag}:nonce:")

    def ip_rate(self, source: str) -> str:
        return f"{self.prefix}:{{ip:{source}}}:rate"

    def held_by(self, source: str) -> str:
        """ZSET namespace + NUL + peer ID -> expiry: the live registrations a source holds (its quota)."""
        return f"{self.prefix}:{{ip:{source}}}:held"

    def watchers(self, source: str) -> str:
        """ZSET watcher ID -> lease expiry: the watch streams a source holds open, on every replica together."""
        return f"{self.prefix}:{{ip:{source}}}:watchers"

    def namespaces(self) -> str:
        """ZSET namespace -> latest expiry in it: which namespaces have live peers (for metrics)."""
        return f"{self.prefix}:namespaces"
