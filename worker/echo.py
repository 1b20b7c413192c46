"""Our application protocol: echo frames back, so a connection is proven by a round trip and timed.

A frame is a uvarint length and that many bytes (at most MAX_FRAME); the server writes each frame back
unchanged until the stream ends. One long-lived stream carries many frames (a new stream per message
costs 10-17 ms in py-libp2p; a frame on an open stream about 2 ms).
"""
from __future__ import annotations

import logging
import os
import time

from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF

PROTOCOL = TProtocol("/holepunch-services/echo/1.0.0")
MAX_FRAME = 4096

log = logging.getLogger("worker.echo")


class FrameError(Exception):
    """The peer sent something that is not a frame of ours."""


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"a frame may carry at most {MAX_FRAME} bytes, not {len(payload)}")
    length, prefix = len(payload), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(prefix) + payload


class FrameReader:
    """Reads frames off a stream, which may hand over bytes in any chunking."""

    def __init__(self, stream: INetStream):
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> None:
        chunk = await self.stream.read(MAX_FRAME + 8)
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
            if shift > 21:
                raise FrameError("frame length prefix is too long")
        if length > MAX_FRAME:
            raise FrameError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
        while len(self.buffer) < offset + length:
            await self._fill()
        frame = bytes(self.buffer[offset:offset + length])
        del self.buffer[:offset + length]
        return frame


async def serve(stream: INetStream) -> None:
    """Stream handler: echo every frame; a malformed one ends this stream, never the process."""
    peer = stream.muxed_conn.peer_id
    reader = FrameReader(stream)
    try:
        while True:
            await stream.write(encode_frame(await reader.read_frame()))
    except StreamEOF:
        pass
    except FrameError as exc:
        log.warning("echo: dropping a stream that sent a malformed frame", extra={"peer": str(peer), "error": str(exc)})
    except Exception as exc:  # a reset or a vanished peer: this stream is over, nothing else is
        log.info("echo: stream ended", extra={"peer": str(peer), "error": repr(exc)})
    finally:
        await _close_quietly(stream)


class EchoClient:
    """One open echo stream to a peer; `round_trip` sends a frame and returns the seconds it took."""

    def __init__(self, stream: INetStream):
        self.stream = stream
        self.reader = FrameReader(stream)

    async def round_trip(self, payload: bytes | None = None) -> float:
        payload = payload if payload is not None else os.urandom(16)
        started = time.perf_counter()
        await self.stream.write(encode_frame(payload))
        answer = await self.reader.read_frame()
        elapsed = time.perf_counter() - started
        if answer != payload:
            raise FrameError("the echo came back different from what was sent")
        return elapsed

    async def close(self) -> None:
        await _close_quietly(self.stream)


async def _close_quietly(stream: INetStream) -> None:
    try:
        await stream.close()
    except Exception:
        pass
