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

from shared import frames
from shared.frames import FrameError

PROTOCOL = TProtocol("/holepunch-services/echo/1.0.0")
MAX_FRAME = 4096

log = logging.getLogger("worker.echo")


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"a frame may carry at most {MAX_FRAME} bytes, not {len(payload)}")
    return frames.encode_frame(payload)


async def serve(stream: INetStream) -> None:
    """Stream handler: echo every frame; a malformed one ends this stream, never the process."""
    peer = stream.muxed_conn.peer_id
    reader = frames.FrameReader(stream, MAX_FRAME)
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
        await frames.close_quietly(stream)


class EchoClient:
    """One open echo stream to a peer; `round_trip` sends a frame and returns the seconds it took."""

    def __init__(self, stream: INetStream):
        self.stream = stream
        self.reader = frames.FrameReader(stream, MAX_FRAME)

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
        await frames.close_quietly(self.stream)
