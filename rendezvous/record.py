"""The stored record: what one registration looks like inside Redis, and the peer object sent out.

A stored record is the registration's expiry (Unix ms, Redis's clock) as EXPIRY_DIGITS digits, written by
the Lua (rendezvous/lua.py, which takes the width from here), then the peer object ready to send, less
its closing `,"TTL":…}`: the TTL left is known only when the record is read. This module alone encodes and
decodes it; the store, both doors and the demo only call it.
"""
from __future__ import annotations

import dataclasses
import json

EXPIRY_DIGITS = 13  # Unix ms has 13 digits until the year 2286


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registration that passed every rule, ready to store."""
    peer_id: str
    public_key: bytes  # the 32-byte Ed25519 key: the member the store keys the peer by
    namespace: str
    addrs: tuple[str, ...]
    ttl: int
    nonce: str
    signed_peer_record: str | None  # base64, exactly as the peer sent it


def encode(reg: Registration) -> bytes:
    """The stored record less its expiry, which the Lua prefixes with Redis's clock."""
    parts = ['{"Schema":"peer","ID":"', reg.peer_id, '","Addrs":', json.dumps(reg.addrs, separators=(",", ":"))]
    if reg.signed_peer_record is not None:
        parts += [',"SignedPeerRecord":"', reg.signed_peer_record, '"']
    return "".join(parts).encode()


def expiry_ms(record: bytes) -> int:
    return int(record[:EXPIRY_DIGITS])


def remaining_seconds(record: bytes, now_ms: int) -> int:
    """What is left of a stored record's TTL, rounded up to whole seconds."""
    return (expiry_ms(record) - now_ms + 999) // 1000


def peer_json(record: bytes, now_ms: int) -> bytes:
    """The peer object as GET /peers sends it: ID, Addrs, SignedPeerRecord if sent, and the TTL left."""
    return b'%s,"TTL":%d}' % (record[EXPIRY_DIGITS:], remaining_seconds(record, now_ms))


def peer_fields(record: bytes) -> dict:
    """The stored peer object as a dict: ID, Addrs and, if the peer sent one, SignedPeerRecord."""
    return json.loads(record[EXPIRY_DIGITS:] + b"}")
