"""What a peer signs to register or unregister, and the rules its fields must follow.

Both are JSON objects carried as the payload of a signed envelope (envelope.py) under `DOMAIN`, told apart
by the envelope's payload type, so a signed unregistration can never pass for a registration or the
other way round. The README documents every field with a worked example.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import time

from rendezvous.envelope import Envelope, check_peer_record, open_envelope
from rendezvous.errors import ApiError, ErrorCode
from rendezvous.settings import MAX_NAMESPACE_BYTES, Limits

DOMAIN = b"holepunch-services:rendezvous"
REGISTER_PAYLOAD_TYPE = b"/holepunch-services/register/1"
UNREGISTER_PAYLOAD_TYPE = b"/holepunch-services/unregister/1"

# `{` and `}` are left out so a namespace can sit inside a Redis Cluster hash tag (keys.py).
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9._~:/@+=-]+")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_ADDR_RE = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no spaces


def namespace_problem(namespace: object) -> str | None:
    """Why `namespace` is not acceptable, or None."""
    if not isinstance(namespace, str) or not namespace:
        return "a namespace must be a non-empty string"
    if len(namespace.encode()) > MAX_NAMESPACE_BYTES:
        return f"a namespace may be at most {MAX_NAMESPACE_BYTES} bytes"
    if not _NAMESPACE_RE.fullmatch(namespace):
        return "a namespace may hold only letters, digits and . _ ~ : / @ + = -"
    return None


def check_namespace(namespace: object) -> str:
    problem = namespace_problem(namespace)
    if problem:
        raise ApiError(ErrorCode.INVALID_NAMESPACE, f"{problem} (got {str(namespace)[:80]!r})")
    return namespace  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Registration:
    peer_id: str
    public_key: bytes  # the 32-byte Ed25519 key: the member the store keys the peer by
    namespace: str
    addrs: tuple[str, ...]
    ttl: int
    nonce: str
    signed_peer_record: str | None  # base64, exactly as the peer sent it

    def stored_fragment(self) -> bytes:
        """The peer object as it goes out, less its closing part (the TTL, known only when read)."""
        parts = ['{"Schema":"peer","ID":"', self.peer_id, '","Addrs":', json.dumps(self.addrs,
                                                                              separators=(",", ":"))]
        if self.signed_peer_record is not None:
            parts += [',"SignedPeerRecord":"', self.signed_peer_record, '"']
        return "".join(parts).encode()


@dataclasses.dataclass(frozen=True)
class Unregistration:
    peer_id: str
    namespace: str | None  # None: every namespace the peer is in
    nonce: str


def open_request(body: bytes, payload_type: bytes, limits: Limits) -> tuple[Envelope, dict]:
    """Verify the envelope and the fields every signed request shares (peer, ts, nonce)."""
    envelope = open_envelope(body, DOMAIN)
    if envelope.payload_type != payload_type:
        raise ApiError(ErrorCode.WRONG_PAYLOAD_TYPE,
                       f"payload type is {envelope.payload_type[:64]!r}; this call takes {payload_type.decode()!r}")
    try:
        payload = json.loads(envelope.payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(ErrorCode.BAD_PAYLOAD, f"payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(ErrorCode.BAD_PAYLOAD, "payload must be a JSON object")
    if payload.get("peer") != envelope.peer_id:
        raise ApiError(ErrorCode.PEER_ID_MISMATCH,
                       f"payload peer {str(payload.get('peer'))[:60]!r} is not the signing key's peer "
                       f"ID {envelope.peer_id}")
    timestamp = payload.get("ts")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ApiError(ErrorCode.BAD_PAYLOAD, "payload field 'ts' must be an integer (Unix time in milliseconds)")
    skew = timestamp / 1000 - time.time()
    if abs(skew) > limits.timestamp_window:
        raise ApiError(ErrorCode.STALE_TIMESTAMP,
                       f"timestamp is {skew:+.0f} s from the server's clock; the window is "
                       f"+-{limits.timestamp_window} s")
    nonce = payload.get("nonce")
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise ApiError(ErrorCode.BAD_PAYLOAD, "payload field 'nonce' must be 16-64 base64url characters")
    return envelope, payload


def parse_registration(body: bytes, limits: Limits, default_namespace: str) -> Registration:
    envelope, payload = open_request(body, REGISTER_PAYLOAD_TYPE, limits)
    namespace = check_namespace(payload.get("ns", default_namespace))
    ttl = payload.get("ttl", limits.ttl_default)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not limits.ttl_min <= ttl <= limits.ttl_max:
        raise ApiError(ErrorCode.INVALID_TTL,
                       f"ttl must be an integer from {limits.ttl_min} to {limits.ttl_max} seconds, got {ttl!r}")
    addrs = check_addrs(payload.get("addrs"), limits)
    record = payload.get("record")
    if record is not None:
        record = _check_record(record, envelope.public_key)
    return Registration(envelope.peer_id, envelope.public_key, namespace, addrs, ttl, payload["nonce"], record)


def parse_unregistration(body: bytes, limits: Limits) -> Unregistration:
    envelope, payload = open_request(body, UNREGISTER_PAYLOAD_TYPE, limits)
    namespace = payload.get("ns")
    if namespace is not None:
        check_namespace(namespace)
    return Unregistration(envelope.peer_id, namespace, payload["nonce"])


def check_addrs(addrs: object, limits: Limits) -> tuple[str, ...]:
    if not isinstance(addrs, list):
        raise ApiError(ErrorCode.INVALID_ADDRS, "payload field 'addrs' must be a list of multiaddr strings")
    if len(addrs) > limits.max_addrs:
        raise ApiError(ErrorCode.INVALID_ADDRS, f"{len(addrs)} addresses; at most {limits.max_addrs} are allowed")
    for addr in addrs:
        if not isinstance(addr, str) or not _ADDR_RE.fullmatch(addr):
            raise ApiError(ErrorCode.INVALID_ADDRS,
                           f"address {str(addr)[:80]!r} is not a multiaddr string (/proto/value/...)")
        if len(addr) > limits.max_addr_length:
            raise ApiError(ErrorCode.INVALID_ADDRS,
                           f"address of {len(addr)} characters; at most {limits.max_addr_length} are allowed")
    return tuple(addrs)


def _check_record(record: object, public_key: bytes) -> str:
    if not isinstance(record, str):
        raise ApiError(ErrorCode.BAD_PEER_RECORD, "payload field 'record' must be a base64 string")
    try:
        raw = base64.b64decode(record, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorCode.BAD_PEER_RECORD, "payload field 'record' is not valid base64") from None
    check_peer_record(raw, public_key)
    return record


# --- the signing side, for our worker, the tests and the benchmark (any libp2p envelope API does the same) ---

def _signed_request(signing_key, payload_type: bytes, fields: dict) -> bytes:
    from rendezvous.envelope import peer_id_from_public_key, seal

    payload = {"peer": peer_id_from_public_key(bytes(signing_key.verify_key)), **fields,
               "ts": int(time.time() * 1000), "nonce": base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()}
    return seal(signing_key, DOMAIN, payload_type, json.dumps(payload, separators=(",", ":")).encode())


def sign_registration(signing_key, namespace: str, addrs: list[str], ttl: int | None = None,
                      signed_peer_record: bytes | None = None) -> bytes:
    """A marshalled envelope registering the key's peer; `signing_key` is a nacl.signing.SigningKey."""
    fields: dict = {"ns": namespace, "addrs": list(addrs)}
    if ttl is not None:
        fields["ttl"] = ttl
    if signed_peer_record is not None:
        fields["record"] = base64.b64encode(signed_peer_record).decode()
    return _signed_request(signing_key, REGISTER_PAYLOAD_TYPE, fields)


def sign_unregistration(signing_key, namespace: str | None = None) -> bytes:
    return _signed_request(signing_key, UNREGISTER_PAYLOAD_TYPE, {} if namespace is None else {"ns": namespace})
