"""Time from a relayed connection to a direct one, across the NAT lab, over repeated runs.

    sudo .venv/bin/python bench/bench_holepunch.py [--runs 20]

Each run starts a fresh pair of workers (new identities, new ports, so no NAT state is shared between
runs) behind the two port-restricted routers of tests/natlab.py, waits for the dialing worker's
`holepunch: connected` line and reads its `time_to_direct`: from the relayed connection existing to a
direct one existing. The library's defaults take ~11 s (a 2 s polling tick, then a unilateral dial to
private addresses); the DCUtR exchange itself is ~0.25 s. `--delay-ms` adds a one-way delay on each
router (default 0: the protocol's own time; bench/bench_nat_matrix.py sweeps every NAT with 25 ms).
Needs root (see tests/natlab.py for the rest).
"""
from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import signal
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.natlab import NatLab, missing_prerequisite  # noqa: E402
from shared.identity import Identity  # noqa: E402


def one_run(lab: NatLab, relay_addr: str, run: int) -> tuple[float | None, str]:
    names = [lab.start_worker(side, relay_addr, name=f"w{run}{side}", tcp_port=4100 + run * 2 + (side == "b"))
             for side in ("a", "b")]
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            for name in names:  # the worker with the lower peer ID dials; either may be it
                for event in lab.events(name):
                    if event.get("event") == "connected" and event.get("initiated_by") == "us":
                        return event.get("time_to_direct"), event["path"]
            time.sleep(0.1)
        return None, "timeout"
    finally:
        for name in names:
            lab.stop(name)


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["time"]).timestamp()


def join_run(lab: NatLab, relay_addr: str, run: int) -> tuple[float | None, float | None, str]:
    """Worker a runs and holds its relay slot; then worker b starts. Returns (seconds from b's process start,
    seconds from b's first registration, the path): until a worker logs a hole-punched connection between
    them. Only the watch stream's join (or b's new addresses) can bring it that soon: the discovery rounds
    are 30 s apart here."""
    port = 4100 + run * 2
    env = {"DISCOVER_INTERVAL": "30"}
    first = lab.start_worker("a", relay_addr, name=f"j{run}a", tcp_port=port, env=env)
    names = [first]
    try:
        if lab.wait_for(first, lambda e: e.get("message") == "registered" and any(
                "p2p-circuit" in a for a in e.get("addrs", [])), 30) is None:
            return None, None, "a never registered"
        started = time.time()
        names.append(lab.start_worker("b", relay_addr, name=f"j{run}b", tcp_port=port + 1, env=env))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            registered = next((e for e in lab.events(names[1]) if e.get("message") == "registered"), None)
            for name in names:
                for event in lab.events(name):
                    if event.get("event") == "connected" and registered is not None:
                        done = _when(event)
                        return done - started, done - _when(registered), event["path"]
            time.sleep(0.05)
        return None, None, "timeout"
    finally:
        for name in names:
            lab.stop(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one way, per router")
    parser.add_argument("--join", action="store_true",
                        help="measure from a new worker's start (and its registration) to a hole-punched "
                             "connection with a worker already running")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # so the lab is torn down on kill
    problem = missing_prerequisite()
    if problem:
        sys.exit(f"cannot run: {problem}")
    relay = Identity.from_seed(os.urandom(32))
    times: list[float] = []
    paths: dict[str, int] = {}
    with NatLab(delay_ms=args.delay_ms) as lab:
        relay_addr = lab.start_services(relay.encoded(), str(relay.peer_id))
        if args.join:
            joins(lab, relay_addr, args.runs)
            return
        for run in range(args.runs):
            seconds, path = one_run(lab, relay_addr, run)
            paths[path] = paths.get(path, 0) + 1
            if path == "hole-punched" and seconds is not None:
                times.append(seconds)
            print(f"run {run + 1:2d}: {path:13s} {'' if seconds is None else f'{seconds * 1000:7.0f} ms'}", flush=True)
    print(f"\npaths: {paths}")
    if times:
        times.sort()
        q = statistics.quantiles(times, n=20) if len(times) > 1 else [times[0]] * 19
        print(f"relayed -> direct over {len(times)} hole punches: min {times[0] * 1000:.0f} ms, "
              f"p50 {statistics.median(times) * 1000:.0f} ms, p90 {q[17] * 1000:.0f} ms, "
              f"max {times[-1] * 1000:.0f} ms, mean {statistics.mean(times) * 1000:.0f} ms; "
              f"under 1 s: {sum(t < 1 for t in times)}/{len(times)}")


def joins(lab: NatLab, relay_addr: str, runs: int) -> None:
    from_start, from_registration, paths = [], [], {}
    for run in range(runs):
        since_start, since_registration, path = join_run(lab, relay_addr, run)
        paths[path] = paths.get(path, 0) + 1
        if path == "hole-punched":
            from_start.append(since_start)
            from_registration.append(since_registration)
        print(f"run {run + 1:2d}: {path:13s}" + ("" if since_start is None else
              f" {since_start * 1000:6.0f} ms from start, {since_registration * 1000:6.0f} ms from registering"),
              flush=True)
    print(f"\npaths: {paths}")
    for label, values in (("its registration (the join)", from_registration), ("its process start", from_start)):
        if values:
            print(f"hole-punched, from {label}: p50 {statistics.median(values) * 1000:.0f} ms, "
                  f"min {min(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms ({len(values)} runs)")


if __name__ == "__main__":
    main()
