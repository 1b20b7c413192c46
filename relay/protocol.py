"""The relay's hop protocol: py-libp2p's, counting the bytes it relays and taking a closed stream calmly."""
from __future__ import annotations

from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.relay.circuit_v2 import CircuitV2Protocol
from libp2p.relay.circuit_v2.protocol import MAX_READ_LEN
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable, MuxedStreamClosed, MuxedStreamEOF, MuxedStreamReset

from relay import metrics

# How a relayed stream ends when either side closes it. py-libp2p 0.8.1 treats only mplex's EOF and reset
# as a closed stream; over yamux (our only muxer) a peer closing its relayed connection, as every hole
# punch ends, was logged at ERROR three times with retries, then again by the relay loop: ~20 ERROR lines,
# many with an empty message, per relayed connection.
_CLOSED = (StreamEOF, StreamReset, StreamClosed, MuxedStreamEOF, MuxedStreamReset, MuxedStreamClosed,
           MuxedConnUnavailable)


class CountingRelayProtocol(CircuitV2Protocol):
    async def _read_stream_with_retry(self, stream, max_retries: int = 3) -> bytes | None:
        # In 0.8.1 this is the read of relayed data, and only that (the control messages use
        # read_delimited_msg), so it sees every relayed byte once. None ends the relay loop quietly. Other
        # errors still go to the library's own handling (and its ERROR line), where they are real.
        try:
            data = await stream.read(MAX_READ_LEN)
        except _CLOSED:
            return None
        if data:
            metrics.BYTES_RELAYED.inc(len(data))
        return data or None
