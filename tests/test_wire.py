"""The rendezvous protocol codec: every malformed input is a WireError with a spec status, never a crash."""
from __future__ import annotations

import os
import random

import pytest

from rendezvous.p2p import wire
from shared.protobuf import bytes_field, varint_field


def test_random_bytes_decode_to_a_request_or_a_wire_error():
    rng = random.Random(7)
    for _ in range(3000):
        frame = os.urandom(rng.randrange(0, 64))
        try:
            request = wire.decode_request(frame)
        except wire.WireError as exc:
            assert exc.status in wire.Status
        else:
            assert isinstance(request, (wire.Register, wire.Unregister, wire.Discover))


def test_a_register_without_a_type_field_is_a_register_as_protobuf_defaults_say():
    # py-libp2p (proto3) leaves out type=0
    message = bytes_field(2, bytes_field(1, b"ns") + bytes_field(2, bytes_field(1, b"\x00\x24") + bytes_field(2, b"a")))
    request = wire.decode_request(message)
    assert isinstance(request, wire.Register) and request.legacy_peer is not None and request.namespace == "ns"


@pytest.mark.parametrize("message, status", [
    (varint_field(1, 0) + bytes_field(2, bytes_field(1, b"ns")), wire.Status.E_INVALID_SIGNED_PEER_RECORD),
    (varint_field(1, 0) + bytes_field(2, bytes_field(1, b"\xff\xfe")), wire.Status.E_INVALID_SIGNED_PEER_RECORD),
    (varint_field(1, 3) + bytes_field(5, b"\x0a\x05ab"), wire.Status.E_INTERNAL_ERROR),
])
def test_malformed_requests_carry_the_status_to_answer_with(message, status):
    with pytest.raises(wire.WireError) as caught:
        wire.decode_request(message)
    assert caught.value.status == status and wire.error_reply(caught.value) is not None


def test_a_response_type_sent_as_a_request_gets_no_answer():
    with pytest.raises(wire.WireError) as caught:
        wire.decode_request(varint_field(1, 1))
    assert wire.error_reply(caught.value) is None
