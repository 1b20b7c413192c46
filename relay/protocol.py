"""The relay's hop protocol: py-libp2p's, counting the bytes it relays."""
from __future__ import annotations

from libp2p.relay.circuit_v2 import CircuitV2Protocol

from relay import metrics


class CountingRelayProtocol(CircuitV2Protocol):
    async def _read_stream_with_retry(self, stream, *args, **kwargs) -> bytes | None:
        # in py-libp2p 0.8.1 this is the read of relayed data, and only that (the control messages use
        # read_delimited_msg), so it sees every relayed byte once
        data = await super()._read_stream_with_retry(stream, *args, **kwargs)
        if data:
            metrics.BYTES_RELAYED.inc(len(data))
        return data
