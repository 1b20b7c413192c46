"""Every way a request can be refused, each with a stable code, its HTTP status and a human message.

Handlers raise `ApiError`; one middleware turns it into the JSON body and headers (see app.py).
"""
from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    # value = (stable code sent to clients, HTTP status)
    BAD_REQUEST = ("bad_request", 400)  # not valid HTTP/1.1 (aiohttp's parser refused it)
    REQUEST_TIMEOUT = ("request_timeout", 408)  # the body did not arrive within BODY_READ_TIMEOUT_SECONDS
    BODY_TOO_LARGE = ("body_too_large", 413)
    BAD_ENVELOPE = ("bad_envelope", 400)
    UNSUPPORTED_KEY_TYPE = ("unsupported_key_type", 400)
    BAD_SIGNATURE = ("bad_signature", 400)
    WRONG_PAYLOAD_TYPE = ("wrong_payload_type", 400)
    BAD_PAYLOAD = ("bad_payload", 400)
    PEER_ID_MISMATCH = ("peer_id_mismatch", 400)
    INVALID_PEER_ID = ("invalid_peer_id", 400)
    STALE_TIMESTAMP = ("stale_timestamp", 400)
    REPLAYED_NONCE = ("replayed_nonce", 409)
    INVALID_NAMESPACE = ("invalid_namespace", 400)
    INVALID_TTL = ("invalid_ttl", 400)
    INVALID_ADDRS = ("invalid_addrs", 400)
    BAD_PEER_RECORD = ("bad_peer_record", 400)
    INVALID_LIMIT = ("invalid_limit", 400)
    INVALID_COOKIE = ("invalid_cookie", 400)
    PEER_REGISTRATION_LIMIT = ("peer_registration_limit", 409)
    REGISTRATION_TOO_LARGE = ("registration_too_large", 400)
    NAMESPACE_FULL = ("namespace_full", 507)
    STORE_FULL = ("store_full", 507)
    SOURCE_QUOTA = ("source_quota", 429)
    WATCHERS_FULL = ("watchers_full", 429)  # too many open watch streams, from this source or on this replica
    RATE_LIMITED = ("rate_limited", 429)
    UNAUTHORIZED = ("unauthorized", 401)
    NOT_FOUND = ("not_found", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405)
    STORE_UNAVAILABLE = ("store_unavailable", 503)
    INTERNAL = ("internal", 500)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


class ApiError(Exception):
    """A refusal with protocol meaning; nothing was stored when one is raised."""

    def __init__(self, kind: ErrorCode, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": self.kind.code, "message": self.message}
