"""uvarint-length-prefixed frames on a libp2p stream, as the rendezvous protocol and our echo protocol
frame their messages. The length is checked against the cap before any of the body is read."""
from __future__ import annotations

from libp2p.network.stream.exceptions import StreamEOF

from shared.protobuf import uvarint


class FrameError(Exception):
    """The peer sent something that is not a frame within the cap."""


def encode_frame(payload: bytes) -> bytes:
    return uvarint(len(payload)) + payload


class FrameReader:
    """Reads frames off a stream, which may hand over bytes in any chunking."""

    def __init__(self, stream, max_frame: int):
        self.stream = stream
        self.max_frame = max_frame
        self.buffer = bytearray()

    async def _fill(self) -> None:
        chunk = await self.stream.read(self.max_frame + 10)
        if not chunk:
            raise StreamEOF("stream closed")
        self.buffer += chunk

    async def read_frame(self) -> bytes:
        length, shift, offset = 0, 0, 0
        while True:
            while offset >= len(self.buffer):
                await self._fill()
            byte = self.buffer[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 28:
                raise FrameError("frame length prefix is too long")
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the {self.max_frame}-byte limit")
        while len(self.buffer) < offset + length:
            await self._fill()
        frame = bytes(self.buffer[offset:offset + length])
        del self.buffer[:offset + length]
        return frame


async def close_quietly(stream) -> None:
    """Close a stream whose peer may already be gone; there is nothing to do about a failure here."""
    try:
        await stream.close()
    except Exception:
        pass
