"""Envelopes made by py-libp2p's own envelope API verify here, and ours verify there."""
from __future__ import annotations

import base64
import json

import multiaddr
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as secp256k1_pair
from libp2p.peer.envelope import Envelope, consume_envelope, make_unsigned, unmarshal_envelope
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord

from shared.envelope import b58decode, b58encode, check_peer_record, open_envelope, seal
from shared.errors import ApiError, ErrorCode
from rendezvous.rules import registration as parse_rules
from shared.registration import DOMAIN, REGISTER_PAYLOAD_TYPE, open_signed
from rendezvous.settings import Limits
from tests.helpers import new_key, peer_id, registration_payload


def parse_registration(body: bytes):
    """What the rendezvous makes of a registration body: the envelope opened, then every rule applied."""
    return parse_rules(open_signed(body, REGISTER_PAYLOAD_TYPE), Limits(), "default")


def libp2p_envelope(key_pair, payload: bytes, payload_type: bytes = REGISTER_PAYLOAD_TYPE) -> bytes:
    """Sign with py-libp2p's envelope API, as a py-libp2p peer would."""
    signature = key_pair.private_key.sign(make_unsigned(DOMAIN.decode(), payload_type, payload))
    return Envelope(key_pair.public_key, payload_type, payload, signature).marshal_envelope()


def test_registration_signed_by_py_libp2p_is_accepted():
    pair = ed25519_pair()
    libp2p_id = ID.from_pubkey(pair.public_key).to_base58()
    payload = {"peer": libp2p_id, "ns": "chat", "addrs": ["/ip4/198.51.100.1/tcp/4001"], "ttl": 120,
               "ts": registration_payload(new_key())["ts"], "nonce": "n0nce-n0nce-n0nce-1"}
    reg = parse_registration(libp2p_envelope(pair, json.dumps(payload).encode()))
    assert (reg.peer_id, reg.namespace, reg.addrs, reg.ttl) == (libp2p_id, "chat", ("/ip4/198.51.100.1/tcp/4001",), 120)


def test_our_envelope_is_read_by_py_libp2p():
    key = new_key()
    data = seal(key, DOMAIN, REGISTER_PAYLOAD_TYPE, b"{}")
    envelope = unmarshal_envelope(data)
    assert ID.from_pubkey(envelope.public_key).to_base58() == peer_id(key)
    assert envelope.raw_payload == b"{}" and envelope.payload_type == REGISTER_PAYLOAD_TYPE
    assert envelope.public_key.verify(make_unsigned(DOMAIN.decode(), REGISTER_PAYLOAD_TYPE, b"{}"), envelope.signature)


def test_py_libp2p_peer_record_is_accepted_and_kept_verbatim():
    pair = ed25519_pair()
    record = PeerRecord(ID.from_pubkey(pair.public_key), [multiaddr.Multiaddr("/ip4/198.51.100.1/tcp/4001")])
    raw = seal_record(record, pair.private_key).marshal_envelope()
    payload = {**registration_payload(new_key()), "peer": ID.from_pubkey(pair.public_key).to_base58(),
               "record": base64.b64encode(raw).decode()}
    reg = parse_registration(libp2p_envelope(pair, json.dumps(payload).encode()))
    assert reg.signed_peer_record == base64.b64encode(raw).decode()
    _, parsed = consume_envelope(base64.b64decode(reg.signed_peer_record), "libp2p-peer-record")
    assert [str(a) for a in parsed.addrs] == ["/ip4/198.51.100.1/tcp/4001"]


def test_peer_record_for_another_peer_is_refused():
    signer, other = ed25519_pair(), ed25519_pair()
    record = PeerRecord(ID.from_pubkey(other.public_key), [])
    # signed by `signer` but naming `other`: py-libp2p's consume_envelope would accept it
    unsigned = make_unsigned("libp2p-peer-record", b"\x03\x01", record.marshal_record())
    raw = Envelope(signer.public_key, b"\x03\x01", record.marshal_record(),
                   signer.private_key.sign(unsigned)).marshal_envelope()
    with pytest.raises(ApiError) as err:
        check_peer_record(raw, signer.public_key.to_bytes())
    assert err.value.kind is ErrorCode.BAD_PEER_RECORD and "another peer" in err.value.message


def test_secp256k1_key_gets_unsupported_key_type():
    pair = secp256k1_pair()
    with pytest.raises(ApiError) as err:
        open_envelope(libp2p_envelope(pair, b"{}"), DOMAIN)
    assert err.value.kind is ErrorCode.UNSUPPORTED_KEY_TYPE and "Secp256k1" in err.value.message


@pytest.mark.parametrize("data", [b"", b"\xff\xff\xff", b"\x0a\x05abc", b"\x0b"])
def test_garbage_is_a_bad_envelope(data):
    with pytest.raises(ApiError) as err:
        open_envelope(data, DOMAIN)
    assert err.value.kind is ErrorCode.BAD_ENVELOPE


def test_signature_covers_domain_and_payload():
    key = new_key()
    data = seal(key, DOMAIN, REGISTER_PAYLOAD_TYPE, b"payload")
    with pytest.raises(ApiError) as err:
        open_envelope(data, b"another-domain")
    assert err.value.kind is ErrorCode.BAD_SIGNATURE
    tampered = data.replace(b"payload", b"paylaod")
    with pytest.raises(ApiError) as err:
        open_envelope(tampered, DOMAIN)
    assert err.value.kind is ErrorCode.BAD_SIGNATURE


def test_base58_round_trip_and_peer_id_form():
    assert b58decode(b58encode(b"\0\0hello")) == b"\0\0hello"
    assert peer_id(new_key()).startswith("12D3KooW")
