"""Our chat protocol, as the browser demo speaks it: uvarint-length-prefixed UTF-8 messages both ways on
one stream. A worker answers each message, so a single browser has someone to talk to."""
from __future__ import annotations

import logging

from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF

from shared.frames import FrameError, FrameReader, close_quietly, encode_frame

PROTOCOL = TProtocol("/holepunch-services/chat/1.0.0")
MAX_MESSAGE = 4096

log = logging.getLogger("worker.chat")


def handler(me: str):
    """The stream handler of a worker whose peer ID is `me`: it answers every message it is sent."""
    async def serve(stream: INetStream) -> None:
        await converse(stream, me)

    return serve


async def converse(stream: INetStream, me: str, greeting: str | None = None) -> None:
    """Say `greeting` first (when we opened the stream), then answer every message until the stream ends."""
    name = f"{me[:12]}…{me[-6:]}"
    peer = str(stream.muxed_conn.peer_id)
    reader = FrameReader(stream, MAX_MESSAGE)
    try:
        if greeting:
            await stream.write(encode_frame(greeting.encode()))
        while True:
            text = (await reader.read_frame()).decode("utf-8", errors="replace")
            log.info("chat: message", extra={"peer": peer, "chars": len(text)})
            await stream.write(encode_frame(f"worker {name} heard: {text}".encode()))
    except (StreamEOF, FrameError):
        pass  # the peer left, or sent something that is not a message: this stream is over
    except Exception as exc:
        log.info("chat: stream ended", extra={"peer": peer, "error": repr(exc)})
    finally:
        await close_quietly(stream)
