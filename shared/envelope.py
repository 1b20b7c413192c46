"""libp2p signed envelopes (libp2p RFC 0002) and the Ed25519 identities that sign them.

The wire layout is the one go-, js- and py-libp2p share:
    Envelope  { PublicKey public_key = 1; bytes payload_type = 2; bytes payload = 3; bytes signature = 5; }
    PublicKey { KeyType Type = 1; bytes Data = 2; }           (KeyType Ed25519 = 1)
    signed bytes = uvarint(len(domain)) domain uvarint(len(payload_type)) payload_type uvarint(len(payload)) payload
Only Ed25519 keys are accepted: their peer ID is the identity multihash of the protobuf key, so the ID and
the key can be checked against each other without any lookup.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import nacl.exceptions
import nacl.signing

from shared.errors import ApiError, ErrorCode
from shared.protobuf import bytes_field, parse_message, uvarint, varint_field

KEY_TYPE_NAMES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}
ED25519 = 1
# identity multihash (0x00), length 36, then PublicKey{Type=Ed25519, Data=<32 bytes>}
_ED25519_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])

PEER_RECORD_DOMAIN = b"libp2p-peer-record"
PEER_RECORD_PAYLOAD_TYPE = b"\x03\x01"

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


# --- identities ---------------------------------------------------------------------------------------------

def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, rem = divmod(number, 58)
        out.append(_B58[rem])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        try:
            number = number * 58 + _B58_INDEX[char]
        except KeyError:
            raise ValueError(f"{char!r} is not a base58 character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


@lru_cache(maxsize=65536)
def peer_id_from_public_key(public_key: bytes) -> str:
    return b58encode(_ED25519_PEER_ID_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 key a `12D3KooW...` peer ID embeds; ApiError for anything else."""
    try:
        raw = b58decode(peer_id)
    except ValueError as exc:
        raise ApiError(ErrorCode.INVALID_PEER_ID, f"peer ID {peer_id[:60]!r} is not base58: {exc}") from None
    if len(raw) != 38 or not raw.startswith(_ED25519_PEER_ID_PREFIX):
        raise ApiError(ErrorCode.INVALID_PEER_ID,
                       f"peer ID {peer_id[:60]!r} is not an Ed25519 peer ID (12D3KooW...)")
    return raw[6:]


def marshal_public_key(public_key: bytes) -> bytes:
    return varint_field(1, ED25519) + bytes_field(2, public_key)


# --- envelopes ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Envelope:
    public_key: bytes  # raw 32-byte Ed25519 key
    payload_type: bytes
    payload: bytes

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)


def signed_bytes(domain: bytes, payload_type: bytes, payload: bytes) -> bytes:
    return b"".join((uvarint(len(domain)), domain, uvarint(len(payload_type)), payload_type,
                     uvarint(len(payload)), payload))


def seal(signing_key: nacl.signing.SigningKey, domain: bytes, payload_type: bytes, payload: bytes) -> bytes:
    """Marshal a signed envelope, byte for byte as libp2p's envelope APIs do."""
    signature = signing_key.sign(signed_bytes(domain, payload_type, payload)).signature
    return (bytes_field(1, marshal_public_key(bytes(signing_key.verify_key))) + bytes_field(2, payload_type)
            + bytes_field(3, payload) + bytes_field(5, signature))


def open_envelope(data: bytes, domain: bytes, what: str = "envelope") -> Envelope:
    """Parse and verify a marshalled envelope signed under `domain`; ApiError says what was wrong."""
    try:
        fields = parse_message(data)
        key_fields = parse_message(_single(fields, 1, "public_key"))
        key_type = _single(key_fields, 1, "public_key.Type", default=0)
        key_data = _single(key_fields, 2, "public_key.Data")
        payload_type = _single(fields, 2, "payload_type")
        payload = _single(fields, 3, "payload")
        signature = _single(fields, 5, "signature")
    except (ValueError, TypeError) as exc:
        raise ApiError(ErrorCode.BAD_ENVELOPE, f"{what} is not a libp2p signed envelope: {exc}") from None
    if key_type != ED25519:
        name = KEY_TYPE_NAMES.get(key_type, f"type {key_type}")
        raise ApiError(ErrorCode.UNSUPPORTED_KEY_TYPE,
                       f"{what} is signed with an unsupported key type ({name}); only Ed25519 is accepted")
    if len(key_data) != 32 or len(signature) != 64:
        raise ApiError(ErrorCode.BAD_ENVELOPE, f"{what} has an Ed25519 key or signature of the wrong length")
    try:
        nacl.signing.VerifyKey(key_data).verify(signed_bytes(domain, payload_type, payload), signature)
    except nacl.exceptions.BadSignatureError:
        raise ApiError(ErrorCode.BAD_SIGNATURE,
                       f"{what} signature does not verify under domain {domain.decode()!r}") from None
    return Envelope(key_data, payload_type, payload)


def _single(fields: dict[int, list], number: int, name: str, default=None):
    values = fields.get(number)
    if not values:
        if default is not None:
            return default
        raise ValueError(f"{name} (field {number}) is missing")
    if len(values) > 1:
        raise ValueError(f"{name} (field {number}) appears {len(values)} times")
    value = values[0]
    if default is not None and not isinstance(value, int) or default is None and not isinstance(value, bytes):
        raise ValueError(f"{name} (field {number}) has the wrong wire type")
    return value


# --- peer records (libp2p RFC 0003) ---------------------------------------------------------------------------

def check_peer_record(data: bytes, public_key: bytes) -> None:
    """A standard signed peer record of the peer holding `public_key`; ApiError if it is anything else."""
    what = "signedPeerRecord"
    envelope = open_envelope(data, PEER_RECORD_DOMAIN, what)
    if envelope.payload_type != PEER_RECORD_PAYLOAD_TYPE:
        raise ApiError(ErrorCode.BAD_PEER_RECORD, f"{what} payload type is not a peer record (03 01)")
    if envelope.public_key != public_key:
        raise ApiError(ErrorCode.BAD_PEER_RECORD, f"{what} is signed by another key than the registration")
    try:
        record_peer = _single(parse_message(envelope.payload), 1, "PeerRecord.peer_id")
    except ValueError as exc:
        raise ApiError(ErrorCode.BAD_PEER_RECORD, f"{what} payload is not a PeerRecord: {exc}") from None
    # Libraries accept a record for peer A signed by key B (see the py-libp2p notes): check it ourselves.
    if record_peer != _ED25519_PEER_ID_PREFIX + public_key:
        raise ApiError(ErrorCode.BAD_PEER_RECORD, f"{what} names another peer than its signing key")


def peer_record_addrs(payload: bytes) -> list[bytes]:
    """The binary multiaddrs of a PeerRecord payload {peer_id=1, seq=2, addresses=3 {multiaddr=1}}."""
    try:
        return [parse_message(info).get(1, [b""])[0] for info in parse_message(payload).get(3, [])]
    except (IndexError, TypeError) as exc:
        raise ValueError(f"not a PeerRecord: {exc}") from None
