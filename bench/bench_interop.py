"""The README's interop table: every cell of tests/interop.py run N times in one NAT lab (25 ms one way on
each router, both port-restricted). One table per transport; rows are dialers, columns listeners; each
entry gives, per relay (ours, go-libp2p's), the pass rate and the median time from the relayed connection
to the direct one.

    sudo .venv/bin/python bench/bench_interop.py --runs 10 [--impls py,go] [--transports tcp] [--relays ours]
        [--evidence DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop import IMPLS, RELAYS, SUPPORTS, TRANSPORTS, Cell, InteropLab, Result, build, cells  # noqa: E402
from tests.natlab import missing_prerequisite  # noqa: E402


def entry(results: list[Result]) -> str:
    passed = [r for r in results if r.passed]
    text = f"{len(passed)}/{len(results)}"
    if passed:
        text += f", {statistics.median(r.time_to_direct_ms for r in passed) / 1000:.2f} s"
    return text


def table(transport: str, impls: list[str], relays: list[str], results: dict[Cell, list[Result]]) -> str:
    lines = [f"**{transport.upper()}** (dialer ↓, listener →; per relay: passed/runs, median time to direct)", "",
             "| dialer \\ listener | " + " | ".join(impls) + " |", "|---" * (len(impls) + 1) + "|"]
    for dialer in impls:
        row = []
        for listener in impls:
            parts = [f"{relay}: {entry(results[c])}" for relay in relays
                     if (c := Cell(dialer, listener, transport, relay)) in results]
            row.append("<br>".join(parts) if parts else "n/a")
        lines.append(f"| {dialer} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--relays", default=",".join(RELAYS))
    parser.add_argument("--evidence", type=Path, help="keep each failed run's logs and packet captures (tcpdump "
                        "on both routers' WAN links) in this directory")
    args = parser.parse_args()
    if (why := missing_prerequisite()) is not None:
        sys.exit(f"NAT lab unavailable: {why}")
    impls, available = args.impls.split(","), []
    for impl in impls:
        built = build(impl)
        print(f"build {impl}: {built.skip or 'ok'} ({built.seconds:.1f} s)", file=sys.stderr)
        if built.command is not None:
            available.append(impl)
    transports, relays = args.transports.split(","), [r for r in args.relays.split(",")
                                                      if r == "ours" or r in available]
    todo = [c for c in cells(available) if c.transport in transports and c.relay in relays]
    results: dict[Cell, list[Result]] = defaultdict(list)
    began = time.monotonic()
    with InteropLab(capture_dir=args.evidence) as lab:
        for run in range(args.runs):
            for cell in todo:
                result = lab.run(cell)
                results[cell].append(result)
                if args.evidence and not result.passed:
                    name = f"run{run + 1}-{cell.name.replace('/', '_').replace('>', '')}.log"
                    (args.evidence / name).write_text(result.logs)
                print(f"run {run + 1} {cell.name}: {result.path} {result.time_to_direct_ms} ms"
                      + (f" ({result.error})" if result.error else ""), file=sys.stderr, flush=True)
    print(f"{len(todo)} cells x {args.runs} runs in {time.monotonic() - began:.0f} s; delay 25 ms one way per "
          f"router; not built: {', '.join(i for i in impls if i not in available) or 'none'}\n")
    for transport in transports:
        shown = [i for i in available if transport in SUPPORTS[i]]
        if shown:
            print(table(transport, shown, relays, results) + "\n")
    rtts = sorted(r.rtt_ms for rs in results.values() for r in rs if r.passed and r.rtt_ms is not None)
    if rtts:
        print(f"ping RTT over the direct connections: min {rtts[0]:.1f} ms, median {statistics.median(rtts):.1f} ms, "
              f"max {rtts[-1]:.1f} ms ({len(rtts)} runs)\n")
    failures = {c: [r.error for r in rs if not r.passed] for c, rs in results.items()}
    for cell, errors in failures.items():
        if errors:
            print(f"- {cell.name}: {len(errors)} failed: {sorted(set(map(str, errors)))}")


if __name__ == "__main__":
    main()
