"""Every rule a registration, a deregistration or a discovery must follow, written once for both doors
(HTTP and libp2p). Each raises ApiError with a stable code and changes nothing; the store enforces only
what needs Redis (rate limits, replays, caps).
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time

from rendezvous import record
from rendezvous.record import Registration
from rendezvous.settings import Limits
from shared.envelope import check_peer_record
from shared.errors import ApiError, ErrorCode
from shared.registration import SignedRequest, namespace_problem

_ADDR_RE = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no spaces
MAX_LIMIT_DIGITS = 6  # a page size is small: refuse long digit strings before int() spends time on them


def source(client_ip: str) -> str:
    """What rate limits and quotas count by: an IPv4 address, or the /64 of an IPv6 address (one subscriber
    gets a whole /64, so counting single IPv6 addresses would give an attacker 2**64 of them)."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)


def check_size(reg: Registration, limits: Limits) -> Registration:
    """A stored registration is bounded in bytes, so quotas counted in registrations bound memory too."""
    size = len(record.encode(reg))
    if size > limits.max_registration_bytes:
        raise ApiError(ErrorCode.REGISTRATION_TOO_LARGE, f"the registration takes {size} bytes stored; at most "
                       f"{limits.max_registration_bytes} are allowed (fewer or shorter addresses, or a smaller record)")
    return reg


def check_namespace(namespace: object) -> str:
    problem = namespace_problem(namespace)
    if problem:
        raise ApiError(ErrorCode.INVALID_NAMESPACE, f"{problem} (got {str(namespace)[:80]!r})")
    return namespace  # type: ignore[return-value]


def check_timestamp(timestamp_ms: int, limits: Limits) -> None:
    # integer arithmetic: a `ts` of 10**400 is merely stale, never an overflow
    skew_ms = timestamp_ms - int(time.time() * 1000)
    if abs(skew_ms) > limits.timestamp_window * 1000:
        shown = f"{skew_ms / 1000:+.0f} s" if abs(skew_ms) < 10 ** 15 else "far"
        raise ApiError(ErrorCode.STALE_TIMESTAMP, f"timestamp is {shown} from the server's clock; the window is "
                                                  f"+-{limits.timestamp_window} s")


def check_ttl(ttl: object, limits: Limits) -> int:
    """The TTL to grant; each door supplies the default itself (HTTP: field absent; libp2p: 0)."""
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not limits.ttl_min <= ttl <= limits.ttl_max:
        raise ApiError(ErrorCode.INVALID_TTL,
                       f"ttl must be an integer from {limits.ttl_min} to {limits.ttl_max} seconds, got {str(ttl)[:40]}")
    return ttl


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


def check_record(record: object, public_key: bytes) -> str:
    """A base64 signed peer record of the registering key, returned exactly as sent."""
    if not isinstance(record, str):
        raise ApiError(ErrorCode.BAD_PEER_RECORD, "payload field 'record' must be a base64 string")
    try:
        raw = base64.b64decode(record, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorCode.BAD_PEER_RECORD, "payload field 'record' is not valid base64") from None
    check_peer_record(raw, public_key)
    return record


def check_page_limit(raw: str | None, limits: Limits) -> int:
    """A page size from a query parameter: absent means the default, anything outside 1..max is refused."""
    if raw is None:
        return limits.discover_limit_default
    # isascii: str.isdigit() accepts '²', which int() refuses
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_LIMIT_DIGITS) \
            or not 1 <= int(raw) <= limits.discover_limit_max:
        raise ApiError(ErrorCode.INVALID_LIMIT, f"limit must be an integer from 1 to {limits.discover_limit_max}")
    return int(raw)


def clamp_page_limit(requested: int, limits: Limits) -> int:
    """The libp2p protocol's page size: 0 means the default, and more than the maximum gets the maximum."""
    return min(requested or limits.discover_limit_default, limits.discover_limit_max)


def registration(request: SignedRequest, limits: Limits, default_namespace: str) -> Registration:
    """The registration a signed request asks for, once it passes every rule."""
    check_timestamp(request.timestamp_ms, limits)
    payload = request.payload
    namespace = check_namespace(payload.get("ns", default_namespace))
    ttl = check_ttl(payload.get("ttl", limits.ttl_default), limits)
    addrs = check_addrs(payload.get("addrs"), limits)
    signed_peer_record = payload.get("record")
    if signed_peer_record is not None:
        signed_peer_record = check_record(signed_peer_record, request.envelope.public_key)
    return check_size(Registration(request.peer_id, request.envelope.public_key, namespace, addrs, ttl,
                                   request.nonce, signed_peer_record), limits)


def unregistration_namespace(request: SignedRequest, limits: Limits) -> str | None:
    """The namespace a signed deregistration names (None: every namespace), once it passes every rule."""
    check_timestamp(request.timestamp_ms, limits)
    namespace = request.payload.get("ns")
    return None if namespace is None else check_namespace(namespace)
