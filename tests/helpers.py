"""Signing helpers shared by the tests."""
from __future__ import annotations

import base64
import json
import os
import time

import nacl.signing

from shared.envelope import peer_id_from_public_key, seal
from shared.registration import DOMAIN, REGISTER_PAYLOAD_TYPE


def new_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def peer_id(key: nacl.signing.SigningKey) -> str:
    return peer_id_from_public_key(bytes(key.verify_key))


def signed_payload(key, payload: dict, payload_type: bytes = REGISTER_PAYLOAD_TYPE, domain: bytes = DOMAIN) -> bytes:
    """An envelope around exactly `payload`, for tests that need a field wrong on purpose."""
    return seal(key, domain, payload_type, json.dumps(payload).encode())


def registration_payload(key, **overrides) -> dict:
    payload = {"peer": peer_id(key), "ns": "default", "addrs": ["/ip4/203.0.113.7/tcp/4001"], "ttl": 60,
               "ts": int(time.time() * 1000), "nonce": base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")}
    payload.update(overrides)
    return payload
