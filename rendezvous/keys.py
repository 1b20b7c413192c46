"""The Redis key schema: every key the service touches is spelled here and nowhere else.

Keys that one Lua script touches together share a Redis Cluster hash tag (`{...}`), so each script runs on
one slot: a namespace's three keys share `{ns:<namespace>}`, a peer's rate counter, nonces and namespace
index share `{peer:<peer id>}`, an address's rate counter has `{ip:<address>}`.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class NamespaceKeys:
    expiries: str  # ZSET member=Ed25519 key (32 bytes), score=expiry (Unix ms, Redis clock)
    sequence: str  # ZSET member=Ed25519 key, score=registration sequence (Redis clock in us, strictly rising)
    records: str  # HASH member -> 13-digit expiry + the peer object ready to send (registration.py)

    def all(self) -> tuple[str, str, str]:
        return self.expiries, self.sequence, self.records


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
        return NamespaceKeys(f"{tag}:exp", f"{tag}:seq", f"{tag}:rec")

    def peer(self, peer_id: str) -> PeerKeys:
        tag = f"{self.prefix}:{{peer:{peer_id}}}"
        return PeerKeys(f"{tag}:rate", f"{tag}:ns", f"{tag}:nonce:")

    def ip_rate(self, address: str) -> str:
        return f"{self.prefix}:{{ip:{address}}}:rate"

    def namespaces(self) -> str:
        """ZSET namespace -> latest expiry in it: which namespaces have live peers (for metrics)."""
        return f"{self.prefix}:namespaces"
