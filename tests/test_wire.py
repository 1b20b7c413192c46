"""The rendezvous protocol codec: every malformed input is a WireError with a spec status, never a crash."""
from __future__ import annotations

import os
import random

import pytest

from rendezvous.p2p import wire
from shared.protobuf import bytes_field, varint_field


# what a malformed message of each kind is answered with: a register gets a RegisterResponse saying its
# record is invalid, a discover a DiscoverResponse with E_INTERNAL_ERROR, anything else no answer at all
ANSWER_TO_MALFORMED = {
    wire.MessageType.REGISTER: (wire.Status.E_INVALID_SIGNED_PEER_RECORD, wire.MessageType.REGISTER_RESPONSE),
    wire.MessageType.DISCOVER: (wire.Status.E_INTERNAL_ERROR, wire.MessageType.DISCOVER_RESPONSE),
    wire.MessageType.UNREGISTER: (wire.Status.E_INTERNAL_ERROR, None),
}
STATUS_WITH_ANSWER = {reply: status for status, reply in ANSWER_TO_MALFORMED.values()}
DECODED_AS = {wire.MessageType.REGISTER: wire.Register, wire.MessageType.DISCOVER: wire.Discover,
              wire.MessageType.UNREGISTER: wire.Unregister}
BODY_FIELD = {wire.MessageType.REGISTER: 2, wire.MessageType.UNREGISTER: 4, wire.MessageType.DISCOVER: 5}


def fuzz_seed() -> int:
    """WIRE_FUZZ_SEED replays a run; each failure message names the seed it ran with."""
    return int(os.environ.get("WIRE_FUZZ_SEED") or random.SystemRandom().randrange(2 ** 32))


def test_random_bytes_decode_to_a_request_or_a_wire_error():
    seed = fuzz_seed()
    rng = random.Random(seed)
    for _ in range(3000):
        frame = rng.randbytes(rng.randrange(0, 64))
        replay = f"WIRE_FUZZ_SEED={seed}, frame {frame!r}"
        try:
            request = wire.decode_request(frame)
        except wire.WireError as exc:
            # the status goes with the answer: nothing but a malformed register is told its record is bad
            assert exc.status == STATUS_WITH_ANSWER[exc.reply_type], replay
        else:
            assert isinstance(request, (wire.Register, wire.Unregister, wire.Discover)), replay


@pytest.mark.parametrize("kind, prefix", [
    (wire.MessageType.REGISTER, b""),
    (wire.MessageType.REGISTER, bytes_field(1, b"ns") + varint_field(3, 60) + b"\x12"),  # random record bytes
    (wire.MessageType.DISCOVER, b""),
    (wire.MessageType.UNREGISTER, b""),
], ids=["register", "register-record", "discover", "unregister"])
def test_random_bodies_of_each_request_decode_to_it_or_to_its_exact_answer(kind, prefix):
    seed = fuzz_seed()
    rng = random.Random(seed)
    for _ in range(2000):
        tail = rng.randbytes(rng.randrange(0, 48))
        body = prefix + (bytes([len(tail)]) if prefix else b"") + tail  # the record field's length, then it
        replay = f"WIRE_FUZZ_SEED={seed}, body {body!r}"
        frame = varint_field(1, kind) + bytes_field(BODY_FIELD[kind], body)
        try:
            request = wire.decode_request(frame)
        except wire.WireError as exc:
            assert (exc.status, exc.reply_type) == ANSWER_TO_MALFORMED[kind], replay
        else:
            assert isinstance(request, DECODED_AS[kind]), replay


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


@pytest.mark.parametrize("message, agent, legacy", [
    (bytes_field(5, b"ipfs/0.1.0") + bytes_field(6, b"py-libp2p/0.8.1"), "py-libp2p/0.8.1", True),
    (bytes_field(6, b"github.com/libp2p/go-libp2p"), "github.com/libp2p/go-libp2p", False),
    (bytes_field(6, b"rust-libp2p/0.53.0"), "rust-libp2p/0.53.0", False),
    (bytes_field(5, b"ipfs/0.1.0"), "", False),  # no agent
    (bytes_field(6, b"\xff\xfe"), "", False),  # not UTF-8
    (b"\x32\x7f", "", False),  # field 6 running past the end
])
def test_identify_agent_version_picks_the_legacy_form_only_for_py_libp2p(message, agent, legacy):
    assert wire.identify_agent_version(message) == agent
    assert wire.is_legacy_agent(agent) is legacy
