"""The stored record: what one registration looks like inside Redis, and the peer object sent out.

A stored record is, in this order:
- the registration's expiry (Unix ms, Redis's clock) as EXPIRY_DIGITS digits, written by the Lua
  (rendezvous/lua.py, which takes the width from here);
- the source that registered it (rules.source: an address or a /64, never holding a space), then a space:
  it is what the namespace's fair share and the source's quota are kept by, so no hash of its own maps
  members to sources (a hash entry costs Redis about 100 bytes a registration);
- the peer object ready to send, less its constant head `{"Schema":"peer","ID":"` (added back on the way
  out, in the same formatting step) and less its closing `,"TTL":…}`: the TTL left is known only when the
  record is read.
This module alone encodes and decodes it; the store, both doors and the demo only call it.

A registration's member in Redis (its key in the namespace's sets and hash) is the first MEMBER_BYTES of
its Ed25519 public key: 16 bytes, not 32, is 16 bytes less in each of the five places a member is kept,
and taking a live peer's place would need a key matching 128 bits of another's, a 2^128 search.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable

EXPIRY_DIGITS = 13  # Unix ms has 13 digits until the year 2286
MEMBER_BYTES = 16
SOURCE_END = b" "  # ends the source; no source (rules.source) holds a space
_HEAD = b'{"Schema":"peer","ID":"'


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registration that passed every rule, ready to store."""
    peer_id: str
    public_key: bytes  # the 32-byte Ed25519 key: its first MEMBER_BYTES are the member the store keys it by
    namespace: str
    addrs: tuple[str, ...]
    ttl: int
    nonce: str
    signed_peer_record: str | None  # base64, exactly as the peer sent it


def member(public_key: bytes) -> bytes:
    """What the store keys a peer by in a namespace (and a source's quota)."""
    return public_key[:MEMBER_BYTES]


def encode(reg: Registration) -> bytes:
    """The peer object less its closing `,"TTL":…}`: what a registration takes, for its size limit."""
    return _HEAD + stored_body(reg)


def stored_body(reg: Registration) -> bytes:
    """What the store keeps after the expiry and the source: the peer object less its head and closing."""
    parts = [reg.peer_id, '","Addrs":', json.dumps(reg.addrs, separators=(",", ":"))]
    if reg.signed_peer_record is not None:
        parts += [',"SignedPeerRecord":"', reg.signed_peer_record, '"']
    return "".join(parts).encode()


def expiry_ms(record: bytes) -> int:
    return int(record[:EXPIRY_DIGITS])


def source(record: bytes) -> str:
    return record[EXPIRY_DIGITS:record.index(SOURCE_END, EXPIRY_DIGITS)].decode()


def remaining_seconds(record: bytes, now_ms: int) -> int:
    """What is left of a stored record's TTL, rounded up to whole seconds."""
    return (int(record[:EXPIRY_DIGITS]) - now_ms + 999) // 1000


def peer_json(record: bytes, now_ms: int) -> bytes:
    """The peer object as GET /peers sends it: ID, Addrs, SignedPeerRecord if sent, and the TTL left."""
    return peers_json((record,), now_ms)


def peers_json(records: Iterable[bytes], now_ms: int, separator: bytes = b",") -> bytes:
    """Peer objects (peer_json) joined by `separator`: a page's, formatted in one pass (remaining_seconds
    written out in it: a call per peer is a tenth of the page's formatting)."""
    return separator.join([b'%s%s,"TTL":%d}' % (_HEAD, record[record.index(SOURCE_END, EXPIRY_DIGITS) + 1:],
                                                 (int(record[:EXPIRY_DIGITS]) - now_ms + 999) // 1000)
                           for record in records])


def peer_fields(record: bytes) -> dict:
    """The stored peer object as a dict: ID, Addrs and, if the peer sent one, SignedPeerRecord."""
    return json.loads(_HEAD + record[record.index(SOURCE_END, EXPIRY_DIGITS) + 1:] + b"}")
