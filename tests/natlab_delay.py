"""A link delay for the NAT lab's routers: holds every queued packet for a fixed time, then lets it go.

    python tests/natlab_delay.py --delay-ms 25 [--queue 0]

This kernel has no netem qdisc, so the delay is made in user space: the router's iptables send each
packet crossing its WAN link to NFQUEUE (tests/natlab.py adds those rules only once this daemon says
"ready"), and the daemon gives each one its ACCEPT verdict `--delay-ms` after it arrived. The delay is
the same for every packet, so a first-in first-out queue keeps them in order and sorted by due time.
Prints "ready" once bound; exits on SIGTERM. Needs root and PyPI's NetfilterQueue (on libnetfilter-queue).
"""
from __future__ import annotations

import argparse
import collections
import select
import signal
import sys
import time

from netfilterqueue import NetfilterQueue

# Packets a burst may hold at once: 25 ms at a few thousand packets a second, with room to spare. The
# kernel drops what does not fit rather than blocking the link, as a full router buffer would.
MAX_QUEUED = 8192


def run(queue_num: int, delay: float) -> None:
    held: collections.deque = collections.deque()  # (due, packet), in arrival order, so in due order

    def hold(packet) -> None:
        # The verdict is given later, outside this callback, which NetfilterQueue allows since 1.0.
        held.append((time.monotonic() + delay, packet))

    nfq = NetfilterQueue()
    nfq.bind(queue_num, hold, max_len=MAX_QUEUED)
    fd = nfq.get_fd()
    print("ready", flush=True)
    try:
        while True:
            now = time.monotonic()
            while held and held[0][0] <= now:
                held.popleft()[1].accept()
            wait = max(0.0, held[0][0] - now) if held else None
            readable, _, _ = select.select([fd], [], [], wait)
            if readable:
                nfq.run(block=False)  # reads what is there and calls hold() for each packet
    finally:
        for _, packet in held:
            packet.accept()
        nfq.unbind()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--queue", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(args.queue, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
