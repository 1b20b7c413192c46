"""`rendezvous`: run the service with settings from flags and the environment (`rendezvous --help`).

On SIGTERM (Cloud Run sends it, then waits 10 s) or SIGINT the replica drains: it stops accepting
connections, lets the requests in flight finish (at most DRAIN_SECONDS, bodies still arriving included),
then shuts down. A part of the service that dies (the libp2p door) stops it the same way, with status 1.

With PROCESSES > 1 this process is a supervisor of that many workers, each serving the HTTP port on its
own socket with SO_REUSEPORT: the kernel spreads new connections over the workers' sockets by a hash of
the connection's addresses. (One listening socket shared by all would not spread them: asyncio and uvloop
accept up to 100 connections per wake-up, so the first worker to wake takes a burst of keep-alive
connections, a load generator's or Cloud Run's front end's, and keeps them.) The supervisor binds the port
first without listening, which takes no connections but resolves PORT=0 once for all and reserves the port.
Its SIGTERM or SIGINT goes to every worker, and each drains as above; a worker that stops on its own
(one that cannot start included) stops the others and the supervisor with status 1, rather than the
replica serving on with fewer. A worker whose supervisor is gone (SIGKILL) drains and stops too. The libp2p
door runs in worker 0 only: it is one peer identity on one port, and carries little traffic.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Sequence

from aiohttp import web

from rendezvous import metrics
from rendezvous.http.app import FAILURE, IN_FLIGHT, create_app
from rendezvous.http.routes import REGISTRY
from rendezvous.settings import Settings
from shared import logs, tracing
from shared.runner import start

log = logging.getLogger("rendezvous")

DRAIN_SECONDS = 8.0  # within Cloud Run's 10 s grace, leaving time for the shutdown itself
SHUTDOWN_SECONDS = 1.0  # what aiohttp then gives handlers still running
ARRIVAL_SECONDS = 0.25
# how long the supervisor waits for its workers' drains (each at most ~ARRIVAL + DRAIN + SHUTDOWN seconds)
# before it kills what is left
WORKERS_STOP_SECONDS = DRAIN_SECONDS + 4.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GC_THRESHOLDS = (100_000, 50, 100)  # see _tune_gc
METRICS_DIR_PREFIX = "rendezvous-metrics-"  # then the supervisor's PID (see _metrics_dir)


def main(argv: Sequence[str] | None = None) -> None:
    settings = start("rendezvous", Settings.parse, argv)
    sys.exit(supervise(settings) if settings.processes > 1 else run(settings))


def run(settings: Settings, *, reuse_port: bool = False,
        supervisor: multiprocessing.connection.Connection | None = None, listening=None) -> int:
    """Serve in this process until a signal (or the supervisor's end); returns the exit status."""
    app = create_app(settings)
    loop = _event_loop()
    try:
        loop.run_until_complete(serve(app, settings, reuse_port=reuse_port, supervisor=supervisor,
                                      listening=listening))
    except Exception as exc:  # a part that cannot start (the libp2p door, say) stops the process loudly
        log.critical("the rendezvous cannot start: %s", exc)
        return 1
    finally:
        loop.close()
    return 1 if app[FAILURE] else 0


async def serve(app: web.Application, settings: Settings, *, reuse_port: bool = False,
                supervisor: multiprocessing.connection.Connection | None = None, listening=None) -> None:
    """`listening` (a multiprocessing Event) is set once the HTTP site listens, the libp2p door too."""
    in_flight, loop = app[IN_FLIGHT], asyncio.get_running_loop()
    # before the start: a signal that comes while the store or the door start stops the replica as soon as
    # it listens, cleanly, instead of killing it by the signal's default action
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, in_flight.stopping.set)
    if supervisor is not None:
        def supervisor_gone() -> None:  # the pipe's far end closed: the supervisor died (SIGKILL, say)
            loop.remove_reader(supervisor.fileno())
            log.critical("the supervisor is gone: stopping")
            in_flight.stopping.set()
        loop.add_reader(supervisor.fileno(), supervisor_gone)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()  # the store, and the libp2p door when configured: either may refuse to start
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port)
        await site.start()
        _tune_gc()
        log.info("rendezvous listening", extra={"host": settings.host, "port": settings.port, "pid": os.getpid()})
        if listening is not None:
            listening.set()
        await in_flight.stopping.wait()
        await site.stop()  # no new connections; the balancer sends them to another replica
        await app[REGISTRY].watches.close()  # watch streams end now, cleanly: their clients resume elsewhere
        log.info("stopping: draining the requests in flight", extra={"in_flight": in_flight.count})
        await asyncio.sleep(ARRIVAL_SECONDS)  # requests already on the wire reach their handlers (and count)
        if not await in_flight.drained(DRAIN_SECONDS):
            log.warning("stopping with requests still in flight", extra={"in_flight": in_flight.count})
    finally:
        await runner.cleanup()


def _tune_gc() -> None:
    # Python's cyclic collector walks every object of a generation it collects. A replica holding 10,000
    # watch streams keeps millions of objects alive, and with the default thresholds (700, 10, 10) the walks
    # came often enough under load to take 63% of its registrations a second (bench/bench_watchers.py: 37%
    # of the figure with no watchers, against 93% with these). The service's garbage is mostly freed by
    # reference counting; collections stay, only rarer. What the start built is frozen out of every walk.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # ~20% more requests per second on these machines (see the README's figures)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --- several worker processes ----------------------------------------------------------------------------------

def supervise(settings: Settings) -> int:
    """Run settings.processes workers on one port until a signal, or until one of them stops; returns the
    exit status: 0 when every worker drained and stopped cleanly after a signal, else 1."""
    try:
        reservation = _reserve_port(settings)
    except OSError as exc:
        log.critical("the rendezvous cannot start: %s:%s: %s", settings.host, settings.port, exc)
        return 1
    settings = dataclasses.replace(settings, port=reservation.getsockname()[1])
    # spawned, not forked: each worker is a fresh interpreter, sharing no thread, lock or event loop with this
    # process (whose tracing may have started exporter threads)
    context = multiprocessing.get_context("spawn")
    woken, wake = socket.socketpair()
    woken.setblocking(False)
    wake.setblocking(False)
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in STOP_SIGNALS}
    signal.set_wakeup_fd(wake.fileno())  # a signal wakes the wait below
    workers: list[multiprocessing.process.BaseProcess] = []
    ends: list[multiprocessing.connection.Connection] = []  # our ends of the pipes: closed when we die
    events: list = []  # each worker's `listening`
    try:
        with _metrics_dir() as metrics_dir:
            # read by prometheus_client in each worker when it loads, before any metric exists
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
            for index in range(settings.processes):
                theirs, ours = context.Pipe(duplex=False)
                listening = context.Event()
                events.append(listening)  # held until the end: a child unpickles it after start() returns
                worker = context.Process(target=_worker, args=(settings, index, theirs, listening),
                                         name=f"rendezvous-{index}")
                worker.start()
                theirs.close()
                ends.append(ours)
                workers.append(worker)
                if index == 0 and settings.libp2p_tcp_port is not None:
                    # The door runs in worker 0 alone. Until it listens no other worker may answer (a /healthz
                    # from one would say the replica is up while its door is not): the others start after.
                    while not listening.wait(0.1) and worker.is_alive():
                        pass
            log.info("rendezvous workers started", extra={"processes": settings.processes, "port": settings.port,
                                                          "pids": [w.pid for w in workers]})
            return _watch(workers, woken)
    finally:
        for worker in workers:  # only after an error of our own: _watch returns once every worker ended
            if worker.is_alive():
                worker.kill()
            worker.join()
        for end in ends:
            end.close()
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        woken.close()
        wake.close()
        reservation.close()


def _watch(workers: list[multiprocessing.process.BaseProcess], woken: socket.socket) -> int:
    running = {worker.sentinel: worker for worker in workers}
    failed, deadline = False, None

    def stop_all() -> float:
        for worker in running.values():
            os.kill(worker.pid, signal.SIGTERM)
        return time.monotonic() + WORKERS_STOP_SECONDS

    while running:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait([*running, woken], timeout)
        if woken in ready:
            while True:  # empty it: one byte per signal
                try:
                    if not woken.recv(64):
                        break
                except BlockingIOError:
                    break
            if deadline is None:
                log.info("stopping: every worker drains", extra={"processes": len(running)})
                deadline = stop_all()
        for sentinel in [s for s in ready if s in running]:
            worker = running.pop(sentinel)
            worker.join()
            if deadline is None:
                log.critical("a worker stopped on its own: stopping the others",
                             extra={"worker_pid": worker.pid, "exit_code": worker.exitcode})
                failed, deadline = True, stop_all()
            elif worker.exitcode not in (0, -signal.SIGTERM):
                # (-SIGTERM: the signal came while it was still loading its modules, before it could have a
                # handler, a socket or a request: it stopped as asked, with nothing to drain)
                log.error("a worker did not stop cleanly", extra={"worker_pid": worker.pid,
                                                                  "exit_code": worker.exitcode})
                failed = True
        if deadline is not None and running and time.monotonic() >= deadline:
            log.error("workers still running after the drain: killed", extra={"pids": [w.pid for w in running.values()]})
            for worker in running.values():
                worker.kill()
                worker.join()
            running.clear()
            failed = True
    return 1 if failed else 0


def _metrics_dir() -> tempfile.TemporaryDirectory:
    """The workers' metrics directory, named after this supervisor. A supervisor killed by SIGKILL could not
    remove its own: the directories of supervisors no longer running are removed here first."""
    for stale in pathlib.Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = stale.name[len(METRICS_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _reserve_port(settings: Settings) -> socket.socket:
    """A socket bound to the HTTP address with SO_REUSEPORT, not listening: it takes no connections, and the
    workers' listening sockets join it on the same port (PORT=0: the one the OS picked here)."""
    family, kind, proto, _, address = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(settings: Settings, index: int, supervisor: multiprocessing.connection.Connection, listening) -> None:
    """One worker process (spawned: it starts from a fresh interpreter, with the supervisor's settings)."""
    logs.configure("rendezvous", settings.observability)
    tracing.configure("rendezvous", settings.observability)
    metrics.count_across_processes()
    if index > 0:
        settings = dataclasses.replace(settings, libp2p_tcp_port=None)  # the libp2p door: worker 0's alone
    sys.exit(run(settings, reuse_port=True, supervisor=supervisor, listening=listening))


if __name__ == "__main__":
    main()
