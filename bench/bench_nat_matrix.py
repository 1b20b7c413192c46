"""Every cell of the NAT-lab matrix, N times each with fresh workers: how often the path theory allows is
reached, on the first attempt, and how long relayed to direct takes against the protocol's floor.

    sudo .venv/bin/python bench/bench_nat_matrix.py [--runs 5] [--delay-ms 25] [--cells port-restricted,...]
                                                    [--transport tcp|quic]

The cells and what theory expects of each are tests/natlab.py's CELLS. A run sets the cell's routers afresh,
starts two workers with new identities and ports (so who dials, the lower peer ID, is random), and reads
each worker's first `holepunch: connected` line. Columns:

- ok: runs whose path is one the cell expects (direct or hole-punched where a direct path is possible:
  relayed there is a failure; relayed and echoing where none is);
- 1st: ok runs whose dialer connected on its first attempt (no `failed` line before);
- paths: how the runs ended (d direct, h hole-punched, r relayed, - none in time);
- relayed -> direct: the dialer's time_to_direct, min/p50/p90 in ms and in direct round trips;
- floor: 2 relayed round trips (CONNECT and SYNC over the relay) + half a direct one (the wait before
  dialing) + HANDSHAKE_RTTS direct ones for the transport, from round trips pinged across the lab before
  the runs. TCP: SYN, multistream-select, Noise XX, multistream-select for the muxer. QUIC: the handshake
  as the DCUtR initiator, its server, sees it: the client's Initial, the server's reply, the client's
  Finished (1.5).
--transport: tcp, the workers listen on TCP (and WebSocket) only; quic, on QUIC only, TCP off (they reach
the relay over QUIC too), so every punch is a QUIC one.
Needs root (see tests/natlab.py for the rest).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.natlab import (CELLS, DEFAULT_DELAY_MS, HOSTS, PUBLIC_IP, SITES, Cell, NatLab,  # noqa: E402
                          connected_events, missing_prerequisite, set_routers, start_pair, stop_pair)
from shared.identity import Identity  # noqa: E402

HANDSHAKE_RTTS = {"tcp": 5.0, "quic": 1.5}
RUN_TIMEOUT = 40.0
WORKER_ENV = {"HOLEPUNCH_TIMEOUT": "6"}


def facing_ip(host: str, other: str) -> str:
    """The address `other` pings to reach `host` over the direct path: its own on a shared LAN or a public
    network, else its router's WAN address (answered by the router, through both routers' delays)."""
    site = HOSTS[host][0]
    if HOSTS[other][0] == site or not SITES[site].nat:
        return HOSTS[host][1]
    return SITES[site].wan_ip


def round_trips(lab: NatLab, cell: Cell) -> tuple[float, float]:
    """(direct, relayed) round trips in ms between the cell's two hosts."""
    one, two = cell.hosts
    set_routers(lab, cell)
    direct = lab.ping(one, facing_ip(two, one))
    relayed = lab.ping(one, PUBLIC_IP) + lab.ping(two, PUBLIC_IP)
    return direct, relayed


def one_run(lab: NatLab, cell: Cell, run: str, transport: str) -> tuple[str, bool, float | None, str]:
    """(path or '-', first attempt, time_to_direct in s, why the first attempt failed) of one fresh pair."""
    pair = start_pair(lab, cell, run, env=WORKER_ENV, quic=transport == "quic", tcp=transport == "tcp")
    try:
        seen = connected_events(lab, pair, RUN_TIMEOUT)
        dialer = next((e for e in seen if e and e.get("initiated_by") == "us"), None) or next(
            (e for e in seen if e), None)
        if dialer is None:
            return "-", False, None, ""
        log = lab.events(pair.names[seen.index(dialer)])
        before = log[: log.index(dialer)]
        failed = [e for e in before if e.get("event") == "failed" and e.get("peer") == dialer["peer"]]
        return dialer["path"], not failed, dialer.get("time_to_direct"), failed[0].get("error", "") if failed else ""
    finally:
        stop_pair(lab, pair)


def ok(cell: Cell, path: str) -> bool:
    return path in cell.expect


def quantiles(values: list[float]) -> tuple[float, float, float]:
    values = sorted(values)
    p90 = statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]
    return values[0], statistics.median(values), p90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS, help="one way, per router")
    parser.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    parser.add_argument("--transport", choices=sorted(HANDSHAKE_RTTS), default="tcp",
                        help="what the workers listen on: tcp (and WebSocket), or quic with TCP off")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so the lab is torn down on kill
    problem = missing_prerequisite()
    if problem:
        sys.exit(f"cannot run: {problem}")
    cells = [c for c in CELLS if not args.cells or c.name in args.cells.split(",")]
    relay = Identity.from_seed(os.urandom(32))
    rows = []
    with NatLab(delay_ms=args.delay_ms) as lab:
        lab.start_services(relay.encoded(), str(relay.peer_id))
        for cell in cells:
            direct_rtt, relayed_rtt = round_trips(lab, cell)
            outcomes = [one_run(lab, cell, f"{cell.name.replace('/', '-')}-{args.transport}-{run}", args.transport)
                        for run in range(args.runs)]
            for run, (path, first, ttd, why) in enumerate(outcomes):
                print(f"{cell.name:26s} run {run + 1:2d}: {path:13s} first={first} "
                      f"{'' if ttd is None else f'{ttd * 1000:.0f} ms'}{f' (first attempt: {why})' if why else ''}",
                      flush=True)
            rows.append((cell, direct_rtt, relayed_rtt, outcomes))
    handshake = HANDSHAKE_RTTS[args.transport]
    print(f"\n{args.runs} runs a cell over {args.transport}, {args.delay_ms:g} ms one way per router; floor = "
          f"2 relayed RTT + {0.5 + handshake:g} direct RTT\n")
    header = ("| cell | expected | ok | 1st | paths | direct RTT | relayed RTT | relayed -> direct min / p50 / p90 "
              "| in direct RTTs | floor | p50 / floor |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for cell, direct_rtt, relayed_rtt, outcomes in rows:
        good = [o for o in outcomes if ok(cell, o[0])]
        first = [o for o in good if o[1]]
        paths = "".join({"direct": "d", "hole-punched": "h", "relayed": "r"}.get(o[0], "-") for o in outcomes)
        floor = 2 * relayed_rtt + (0.5 + handshake) * direct_rtt
        times = [o[2] * 1000 for o in outcomes if o[0] == "hole-punched" and o[2] is not None]
        if times:
            lo, p50, p90 = quantiles(times)
            in_ms = f"{lo:.0f} / {p50:.0f} / {p90:.0f} ms"
            in_rtts = f"{lo / direct_rtt:.1f} / {p50 / direct_rtt:.1f} / {p90 / direct_rtt:.1f}" if direct_rtt else "-"
            ratio = f"{p50 / floor:.2f}"
        else:
            in_ms = in_rtts = ratio = "-"
        punchable = "relayed" not in cell.expect
        print(f"| {cell.name} | {'/'.join(sorted(cell.expect))} | {len(good)}/{len(outcomes)} | "
              f"{len(first)}/{len(good) or 1} | {paths} | {direct_rtt:.1f} ms | {relayed_rtt:.1f} ms | {in_ms} | "
              f"{in_rtts} | {f'{floor:.0f} ms' if punchable else '-'} | {ratio} |")


if __name__ == "__main__":
    main()
