"""The libp2p rendezvous protocol's wire format (libp2p/specs rendezvous/README.md), and py-libp2p's legacy
variant, which uses the same protocol ID and message numbers but puts `PeerInfo{id=1, addrs=2}` where the
spec puts the signed peer record.

    Message{type=1, register=2, registerResponse=3, unregister=4, discover=5, discoverResponse=6}
    Register{ns=1, signedPeerRecord=2 | legacy PeerInfo, ttl=3}     RegisterResponse{status=1, statusText=2, ttl=3}
    Unregister{ns=1}      Discover{ns=1, limit=2, cookie=3}
    DiscoverResponse{registrations=1 (Register), cookie=2, status=3, statusText=4}

Frames on the stream are uvarint-length-prefixed. Decoding never trusts the peer: any malformation is a
WireError carrying the spec status to answer with.
"""
from __future__ import annotations

import dataclasses
import enum

from shared.protobuf import bytes_field, parse_message, varint_field

PROTOCOL_ID = "/rendezvous/1.0.0"
IDENTIFY_PROTOCOL_ID = "/ipfs/id/1.0.0"
MAX_IDENTIFY_BYTES = 64 * 1024  # identify carries listen addresses and a signed peer record: a few KiB
LEGACY_AGENT_PREFIX = "py-libp2p/"  # py-libp2p's identify agent (libp2p/utils/version.py: "py-libp2p/<version>")
MAX_FRAME_BYTES = 16 * 1024  # a register with a signed peer record of 16 addresses is under 2 KiB


class MessageType(enum.IntEnum):
    REGISTER = 0
    REGISTER_RESPONSE = 1
    UNREGISTER = 2
    DISCOVER = 3
    DISCOVER_RESPONSE = 4


class Status(enum.IntEnum):
    OK = 0
    E_INVALID_NAMESPACE = 100
    E_INVALID_SIGNED_PEER_RECORD = 101
    E_INVALID_TTL = 102
    E_INVALID_COOKIE = 103
    E_NOT_AUTHORIZED = 200
    E_INTERNAL_ERROR = 300
    E_UNAVAILABLE = 400


class WireError(Exception):
    def __init__(self, status: Status, text: str, reply_type: MessageType | None):
        super().__init__(text)
        self.status, self.text, self.reply_type = status, text, reply_type


@dataclasses.dataclass(frozen=True)
class LegacyPeer:
    peer_id: bytes
    addrs: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Register:
    namespace: str
    ttl: int  # 0: not given
    signed_peer_record: bytes | None = None  # the spec's form
    legacy_peer: LegacyPeer | None = None  # py-libp2p's form


@dataclasses.dataclass(frozen=True)
class Unregister:
    namespace: str


@dataclasses.dataclass(frozen=True)
class Discover:
    namespace: str  # "": every namespace
    limit: int  # 0: the default
    cookie: bytes


Request = Register | Unregister | Discover

_REPLY_TO = {MessageType.REGISTER: MessageType.REGISTER_RESPONSE, MessageType.DISCOVER: MessageType.DISCOVER_RESPONSE}


def _one(fields: dict[int, list], number: int, kind: type, default):
    values = fields.get(number) or []
    if not values:
        return default
    if not isinstance(values[-1], kind):
        raise ValueError(f"field {number} has the wrong wire type")
    return values[-1]  # protobuf: the last occurrence of a scalar wins


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None


def decode_request(frame: bytes) -> Request:
    try:
        fields = parse_message(frame)
        kind = _one(fields, 1, int, MessageType.REGISTER)  # absent: the default, as protobuf reads it
    except ValueError as exc:
        raise WireError(Status.E_INTERNAL_ERROR, f"not a rendezvous message: {exc}", None) from None
    if kind not in (MessageType.REGISTER, MessageType.UNREGISTER, MessageType.DISCOVER):
        raise WireError(Status.E_INTERNAL_ERROR, f"message type {kind} is not a request", None)
    reply = _REPLY_TO.get(MessageType(kind))
    try:
        body = parse_message(_one(fields, {0: 2, 2: 4, 3: 5}[kind], bytes, b""))
        namespace = _text(_one(body, 1, bytes, b""), "ns")
        if kind == MessageType.REGISTER:
            return _decode_register(body, namespace)
        if kind == MessageType.UNREGISTER:
            return Unregister(namespace)
        return Discover(namespace, _one(body, 2, int, 0), _one(body, 3, bytes, b""))
    except WireError:
        raise
    except ValueError as exc:
        raise WireError(Status.E_INTERNAL_ERROR if reply is None else _malformed_status(kind),
                        f"malformed {MessageType(kind).name.lower()}: {exc}", reply) from None


def _malformed_status(kind: int) -> Status:
    return Status.E_INVALID_SIGNED_PEER_RECORD if kind == MessageType.REGISTER else Status.E_INTERNAL_ERROR


def _decode_register(body: dict[int, list], namespace: str) -> Register:
    ttl = _one(body, 3, int, 0)
    record = _one(body, 2, bytes, None)
    if record is None:
        raise WireError(Status.E_INVALID_SIGNED_PEER_RECORD, "the registration carries no signed peer record",
                        MessageType.REGISTER_RESPONSE)
    inner = parse_message(record)
    # An envelope always has a payload (3) and a signature (5); py-libp2p's PeerInfo has only id (1) and addrs (2).
    if 3 in inner or 5 in inner:
        return Register(namespace, ttl, signed_peer_record=record)
    peer_id = _one(inner, 1, bytes, b"")
    addrs = tuple(a for a in inner.get(2, []) if isinstance(a, bytes))
    return Register(namespace, ttl, legacy_peer=LegacyPeer(peer_id, addrs))


def register_response(status: Status, text: str = "", ttl: int = 0) -> bytes:
    inner = varint_field(1, status) + (bytes_field(2, text.encode()) if text else b"") + (varint_field(3, ttl) if ttl else b"")
    return varint_field(1, MessageType.REGISTER_RESPONSE) + bytes_field(3, inner)


def registration(namespace: str, record: bytes, ttl: int) -> bytes:
    """One entry of a discover response: `record` is a signed peer record, or a legacy PeerInfo."""
    return bytes_field(1, namespace.encode()) + bytes_field(2, record) + varint_field(3, ttl)


def legacy_peer_info(peer_id: bytes, addrs: list[bytes]) -> bytes:
    return bytes_field(1, peer_id) + b"".join(bytes_field(2, a) for a in addrs)


def discover_response(status: Status, registrations: list[bytes] = (), cookie: bytes = b"", text: str = "") -> bytes:
    inner = (b"".join(bytes_field(1, r) for r in registrations) + (bytes_field(2, cookie) if cookie else b"")
             + varint_field(3, status) + (bytes_field(4, text.encode()) if text else b""))
    return varint_field(1, MessageType.DISCOVER_RESPONSE) + bytes_field(6, inner)


def error_reply(error: WireError) -> bytes | None:
    if error.reply_type == MessageType.REGISTER_RESPONSE:
        return register_response(error.status, error.text)
    if error.reply_type == MessageType.DISCOVER_RESPONSE:
        return discover_response(error.status, text=error.text)
    return None


def identify_agent_version(message: bytes) -> str:
    """The agent version (field 6) of an identify message (libp2p/specs identify/README.md), "" when absent
    or malformed: the door only reads it to pick a discover answer's form, never to trust the peer."""
    try:
        value = _one(parse_message(message), 6, bytes, b"")
        return value.decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def is_legacy_agent(agent_version: str) -> bool:
    """py-libp2p's only rendezvous client (0.8.1) speaks the legacy form; go, rust and js speak the spec's."""
    return agent_version.startswith(LEGACY_AGENT_PREFIX)
