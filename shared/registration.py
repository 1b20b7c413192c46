"""What a peer signs to register at the rendezvous or to unregister: the format, both ways.

Both are JSON objects carried as the payload of a libp2p signed envelope (shared/envelope.py) under
`DOMAIN`, told apart by the envelope's payload type, so a signed unregistration can never pass for a
registration or the other way round. Peers sign here (`sign_registration`); the rendezvous opens here
(`open_signed`) and then applies its rules (rendezvous/rules.py). The README documents every field.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import time

from shared.envelope import Envelope, open_envelope, peer_id_from_public_key, seal
from shared.errors import ApiError, ErrorCode

DOMAIN = b"holepunch-services:rendezvous"
REGISTER_PAYLOAD_TYPE = b"/holepunch-services/register/1"
UNREGISTER_PAYLOAD_TYPE = b"/holepunch-services/unregister/1"

# the libp2p rendezvous spec's bounds
SPEC_MAX_TTL_SECONDS = 72 * 3600
MAX_NAMESPACE_BYTES = 255

# `{` and `}` are left out so a namespace can sit inside a Redis Cluster hash tag (rendezvous/keys.py).
NAMESPACE_RE = re.compile(r"[A-Za-z0-9._~:/@+=-]+")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_JSON_DEPTH = 8  # a payload is an object of scalars and one list: anything deeper is not ours


def namespace_problem(namespace: object) -> str | None:
    """Why `namespace` is not acceptable, or None: the one namespace rule of every role."""
    if not isinstance(namespace, str) or not namespace:
        return "a namespace must be a non-empty string"
    if len(namespace.encode()) > MAX_NAMESPACE_BYTES:
        return f"a namespace may be at most {MAX_NAMESPACE_BYTES} bytes"
    if not NAMESPACE_RE.fullmatch(namespace):
        return "a namespace may hold only letters, digits and . _ ~ : / @ + = -"
    return None


@dataclasses.dataclass(frozen=True)
class SignedRequest:
    envelope: Envelope  # verified: its key signed the payload
    payload: dict  # names the signing peer; `ts` is an integer and `nonce` well formed
    timestamp_ms: int
    nonce: str

    @property
    def peer_id(self) -> str:
        return self.envelope.peer_id


def open_signed(body: bytes, payload_type: bytes) -> SignedRequest:
    """Verify the envelope and the fields every signed request shares (peer, ts, nonce); ApiError if not."""
    envelope = open_envelope(body, DOMAIN)
    if envelope.payload_type != payload_type:
        raise ApiError(ErrorCode.WRONG_PAYLOAD_TYPE,
                       f"payload type is {envelope.payload_type[:64]!r}; this call takes {payload_type.decode()!r}")
    if _nesting(envelope.payload) > MAX_JSON_DEPTH:
        raise ApiError(ErrorCode.BAD_PAYLOAD, f"payload JSON is nested deeper than {MAX_JSON_DEPTH} levels")
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
    nonce = payload.get("nonce")
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise ApiError(ErrorCode.BAD_PAYLOAD, "payload field 'nonce' must be 16-64 base64url characters")
    return SignedRequest(envelope, payload, timestamp, nonce)


def _nesting(payload: bytes) -> int:
    """How deep JSON brackets go, counted on the bytes (strings may hold brackets: an upper bound, cheap,
    and it keeps json.loads clear of deep recursion)."""
    depth = deepest = 0
    for byte in payload:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# --- the signing side: workers, relays, the tests and the benchmark (any libp2p envelope API does the same) ---

def new_nonce() -> str:
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()


def _sign(signing_key, payload_type: bytes, fields: dict) -> bytes:
    payload = {"peer": peer_id_from_public_key(bytes(signing_key.verify_key)), **fields,
               "ts": int(time.time() * 1000), "nonce": new_nonce()}
    return seal(signing_key, DOMAIN, payload_type, json.dumps(payload, separators=(",", ":")).encode())


def sign_registration(signing_key, namespace: str, addrs: list[str], ttl: int | None = None,
                      signed_peer_record: bytes | None = None) -> bytes:
    """A marshalled envelope registering the key's peer; `signing_key` is a nacl.signing.SigningKey."""
    fields: dict = {"ns": namespace, "addrs": list(addrs)}
    if ttl is not None:
        fields["ttl"] = ttl
    if signed_peer_record is not None:
        fields["record"] = base64.b64encode(signed_peer_record).decode()
    return _sign(signing_key, REGISTER_PAYLOAD_TYPE, fields)


def sign_unregistration(signing_key, namespace: str | None = None) -> bytes:
    return _sign(signing_key, UNREGISTER_PAYLOAD_TYPE, {} if namespace is None else {"ns": namespace})
