"""The README's worked example is what the code produces and accepts."""
from __future__ import annotations

import base64
import json
import pathlib

import nacl.signing

from shared.envelope import open_envelope, seal
from shared.registration import DOMAIN, REGISTER_PAYLOAD_TYPE

README = pathlib.Path(__file__).parent.parent / "README.md"


def example_envelope() -> bytes:
    text = README.read_text()
    block = text.split("<!-- example-envelope -->", 1)[1].split("```")[1]
    return base64.b64decode(block.strip())


def test_worked_example_verifies_and_matches_its_description():
    data = example_envelope()
    envelope = open_envelope(data, DOMAIN)
    payload = json.loads(envelope.payload)
    assert envelope.peer_id == payload["peer"] == "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    assert envelope.payload_type == REGISTER_PAYLOAD_TYPE and len(envelope.payload) == 212 and len(data) == 351
    key = nacl.signing.SigningKey(bytes(range(32)))
    assert seal(key, DOMAIN, REGISTER_PAYLOAD_TYPE, envelope.payload) == data
