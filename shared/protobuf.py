"""The little of protobuf and varints that libp2p's messages need: uvarints, and messages made of varint
(wire type 0) and length-delimited (wire type 2) fields. Decoding never trusts its input: anything
malformed is a ValueError."""
from __future__ import annotations


def uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def parse_message(buf: bytes) -> dict[int, list]:
    """Field number -> values, for messages made of varints (wire type 0) and bytes (wire type 2)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_uvarint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_uvarint(buf, pos)
        elif wire_type == 2:
            length, pos = read_uvarint(buf, pos)
            if pos + length > len(buf):
                raise ValueError(f"field {number} runs past the end of the message")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ValueError(f"field {number} has unsupported wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def bytes_field(number: int, value: bytes) -> bytes:
    return uvarint(number << 3 | 2) + uvarint(len(value)) + value


def varint_field(number: int, value: int) -> bytes:
    return uvarint(number << 3) + uvarint(value)
