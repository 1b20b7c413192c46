"""Where a registration's and a discovery's server CPU goes, by stage (issue 18, item 2). Not a test.

    python bench/profile_rendezvous.py [--duration 10] [--py-spy PATH] [--before COMMIT]

With --before, the service at COMMIT (its files taken with `git archive`, into a temporary directory) is
profiled in the same run, each on a Redis of its own filled by its own store code, and the table gives
both side by side: before and after a change, measured on the same machine minutes apart.

Runs the service as bench_rendezvous.py does (core 0; wrk -c50 and Redis on core 1), samples it with py-spy
(a sampling profiler: it does not slow the Python code the way cProfile does, whose per-call overhead
would inflate the stages made of many small Python calls), and splits the samples into stages by the
innermost frame that belongs to a known stage. Each stage's share times the server CPU per request,
read from /proc over the same window, gives microseconds per request.

py-spy sees Python frames only: time in C (the HTTP parser, PyNaCl's libsodium) is charged to the Python
frame that called it, which is the stage it belongs to; a sample with no frame but the entry point is the
event loop's own C code (uvloop: epoll, socket reads and writes, callbacks).

py-spy is not a project dependency: `pip install --target /tmp/pyspy py-spy` and pass
--py-spy /tmp/pyspy/bin/py-spy (it needs ptrace, which root has here).
"""
from __future__ import annotations

import argparse
import collections
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_rendezvous import (COOKIE_KEY, cpu_seconds, free_port, pinned, sign_bodies,  # noqa: E402
                              wait_http)

# (stage, path prefixes): a sample goes to the stage of its innermost frame whose file matches (py-spy names
# files relative to their sys.path entry: "aiohttp/web_protocol.py"); the order matters only for a file
# matching two rules.
STAGES = [
    ("verify (PyNaCl Ed25519)", ("nacl/",)),
    ("metrics (prometheus_client)", ("prometheus_client/", "rendezvous/metrics.py")),
    ("logs and tracing", ("logging/", "shared/logs.py", "shared/tracing.py", "opentelemetry/")),
    ("Redis round trips (our client)", ("rendezvous/connection.py", "rendezvous/store.py",
                                                                    "rendezvous/lua.py", "redis/")),
    ("envelope and payload parse, rules", ("shared/envelope.py", "shared/registration.py", "shared/protobuf.py",
                                           "rendezvous/rules.py", "multiaddr/", "base58")),
    ("record and JSON", ("rendezvous/record.py", "json/")),
    ("registry (service layer, cookie)", ("rendezvous/registry.py", "rendezvous/cookie.py", "rendezvous/keys.py",
                                         "rendezvous/watch.py")),
    ("response (our handler, aiohttp response and writer)", ("rendezvous/http/routes.py", "aiohttp/web_response.py",
                                                             "aiohttp/http_writer.py")),
    ("middlewares (errors, in-flight, CORS)", ("rendezvous/http/app.py",)),
    ("HTTP parse, routing, request objects (aiohttp)", ("aiohttp/", "multidict/", "yarl/", "_weakrefset.py")),
    ("event loop and sockets (asyncio, uvloop's C code)", ("asyncio/", "uvloop/", "rendezvous/cli.py")),
]


REDIS = STAGES[3][0]


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        path = frame[frame.rfind("(") + 1:]
        for stage, prefixes in STAGES:
            if path.startswith(prefixes):
                return round_trip(stack) if stage == REDIS else stage
    return "other"


# Store.register's lines that await a round trip (matched on the source text, so line numbers may move), in
# the store of either tree profiled.
REGISTER_ROUND_TRIPS = {"_register_at_once(": "one script (count + admit + quota + write)",
                        "_register_by_slots(": "Cluster steps", "count_request(": "rate count",
                        "_pipeline(admit)": "admit (hold + admit scripts)",
                        "_pipeline(write)": "write (register script + 3 calls)",
                        "_release_held(": "release held", "_memory_level(": "memory level"}


def round_trip(stack: list[str]) -> str:
    """A Redis sample, split by the round trip it serves: the outermost store.py frame is the Store method
    the registry called (and, in Store.register, the line that awaits one of its round trips). A sample
    with no store.py frame is a reply being read off the socket, not yet handed to its request."""
    for frame in stack:
        if "(rendezvous/store.py:" in frame:
            name = frame[:frame.rfind(" (")]
            if name.startswith(("Store._pipeline", "Store._execute", "_Batch.")):
                # no caller above it on the stack: a step of the batch plumbing resumed on its own
                return "Redis: batch plumbing (_pipeline, _execute, _Batch)"
            if name.startswith("Store.register"):
                name = "Store.register"
                line = int(frame[frame.rfind(":") + 1:-1])
                text = STORE_SOURCE[0][line - 1]
                name += ": " + next((label for key, label in REGISTER_ROUND_TRIPS.items() if key in text), "other")
            return f"Redis: {name}"
    return "Redis: replies read off the socket"


STORE_SOURCE = [(ROOT / "rendezvous/store.py").read_text().splitlines()]  # of the tree being read
OTHER: collections.Counter = collections.Counter()  # innermost frames of the unmatched samples, for --show-other


def read_samples(path: pathlib.Path) -> collections.Counter:
    """py-spy's raw format: one line per distinct stack, frames from outermost to innermost joined by ';',
    then a space and the sample count."""
    stages: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            frames = stack.split(";")
            stage = stage_of(frames)
            stages[stage] += int(count)
            if stage == "other":
                OTHER[" <- ".join(frames[-3:][::-1])] += int(count)
    return stages


def profile(py_spy: str, pid: int, port: int, duration: int, wrk_args: list[str], out: pathlib.Path) -> dict:
    spy = subprocess.Popen(pinned(1, [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
                                      "--format", "raw", "--output", str(out), "--duration", str(duration + 2)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attached
    before = cpu_seconds(pid)
    run = subprocess.run(pinned(1, ["wrk", "-t1", "-c50", f"-d{duration}s", *wrk_args]), capture_output=True,
                         text=True, check=True).stdout
    cpu = cpu_seconds(pid) - before
    spy.wait(duration + 30)
    requests = int(run.split(" requests in ")[0].split()[-1])
    failed = "Non-2xx" in run
    return {"requests": requests, "cpu_us": 1e6 * cpu / requests, "stages": read_samples(out), "failed": failed}


def profile_tree(tree: pathlib.Path, args, work: pathlib.Path) -> dict[str, dict]:
    """Register and discover on the service of source tree `tree`, on a Redis of its own."""
    redis_port, service_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs = [subprocess.Popen(pinned(1, ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
                                         "no", "--dir", str(work)]), stdout=subprocess.DEVNULL)]
    try:
        env = {**os.environ, "PORT": str(service_port), "HOST": "127.0.0.1", "REDIS_URL": redis_url,
               "COOKIE_HMAC_KEY": COOKIE_KEY, "RATE_LIMIT_IP_PER_MINUTE": "100000000",
               "RATE_LIMIT_PEER_PER_MINUTE": "100000000", "MAX_PEERS_PER_NAMESPACE": "10000000",
               "MAX_REGISTRATIONS_PER_SOURCE": "100000000", "LOG_LEVEL": "WARNING", "PROCESSES": "1"}
        service = subprocess.Popen(pinned(0, [sys.executable, "-m", "rendezvous.cli"]), env=env, cwd=tree,
                                   stdout=subprocess.DEVNULL)
        procs.append(service)
        wait_http(service_port)
        # the tree's own store code writes its records (a layout another tree cannot read)
        subprocess.run([sys.executable, "-c", "import asyncio, sys; sys.path.insert(0, 'bench'); "
                        "from bench_rendezvous import fill; asyncio.run(fill(sys.argv[1], 'bench-1k', 1000))",
                        redis_url], cwd=tree, check=True)
        bodies = work / "bodies.bin"
        sign_bodies(max(20_000, args.duration * 4_000), bodies)
        url = f"http://127.0.0.1:{service_port}"
        STORE_SOURCE[0] = (tree / "rendezvous/store.py").read_text().splitlines()
        return {
            "register (signed)": profile(args.py_spy, service.pid, service_port, args.duration,
                                         ["-s", str(HERE / "post_bodies.lua"), f"{url}/peers", "--", str(bodies)],
                                         work / "register.txt"),
            "discover 100 of 1,000": profile(args.py_spy, service.pid, service_port, args.duration,
                                             [f"{url}/peers?namespace=bench-1k&limit=100"], work / "discover.txt"),
        }
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy")
    parser.add_argument("--before", metavar="COMMIT", help="profile the service at COMMIT too, in the same run")
    parser.add_argument("--show-other", action="store_true", help="list the stacks no stage matched")
    args = parser.parse_args()
    if not os.path.exists(args.py_spy):
        sys.exit("py-spy is missing: pip install --target /tmp/pyspy py-spy")

    work = pathlib.Path(tempfile.mkdtemp(prefix="hp-profile-"))
    try:
        trees = {}
        if args.before:
            before = work / "before"
            before.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            trees[f"before ({args.before[:12]})"] = before
        trees["now" if args.before else ""] = ROOT
        runs = {}
        for label, tree in trees.items():
            for load, result in profile_tree(tree, args, work).items():
                runs[f"{load}, {label}" if label else load] = result
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nserver CPU per request by stage, py-spy at 250 Hz, wrk -t1 -c50 -d{args.duration}s\n")
    names = sorted(runs, key=lambda n: (not n.startswith("register"), n.endswith("now")))
    print("| stage | " + " | ".join(f"{n}: us/req | share" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    seen = set().union(*(r["stages"] for r in runs.values()))
    stages = [s for s, _ in STAGES if s != REDIS] + ["other"]
    stages[3:3] = sorted(s for s in seen if s.startswith("Redis: "))
    for stage in stages:
        cells = []
        for name in names:
            r = runs[name]
            total = sum(r["stages"].values()) or 1
            share = r["stages"][stage] / total
            cells.append(f"{share * r['cpu_us']:,.0f} | {100 * share:.0f}%")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("| **total (server CPU from /proc)** | " + " | ".join(f"**{runs[n]['cpu_us']:,.0f}** | 100%" for n in names)
          + " |")
    print("\nsamples: " + ", ".join(f"{n} {sum(runs[n]['stages'].values()):,} over {runs[n]['requests']:,} requests"
                                   for n in names))
    if args.show_other:
        for stack, count in OTHER.most_common(25):
            print(f"{count:6d}  {stack}")
    if any(r["failed"] for r in runs.values()):
        print("WARNING: some requests failed (non-2xx); the figures above are not valid")


if __name__ == "__main__":
    main()
