"""Discovery cookies: an HMAC-signed position in a namespace's registration sequence.

Any replica holding the shared key can continue a page another replica started; a cookie cannot be forged
or moved to another namespace.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from shared.errors import ApiError, ErrorCode

START = "0"
_MAC_BYTES = 16


class CookieCodec:
    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, namespace: str, cursor: bytes) -> bytes:
        return hmac.new(self._key, namespace.encode() + b"\0" + cursor, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, namespace: str, cursor: str) -> str:
        raw = cursor.encode()
        return base64.urlsafe_b64encode(raw + self._mac(namespace, raw)).rstrip(b"=").decode()

    def decode(self, namespace: str, cookie: str | None) -> str:
        """The cursor a cookie stands for (START for none); ApiError if it was not made by us for `namespace`."""
        if not cookie:
            return START
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
        except (binascii.Error, ValueError):
            raise ApiError(ErrorCode.INVALID_COOKIE, "cookie is not base64url") from None
        cursor, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(namespace, cursor)):
            raise ApiError(ErrorCode.INVALID_COOKIE,
                           "cookie was not issued by this service for this namespace; start again without one")
        return cursor.decode()
