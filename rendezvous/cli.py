"""`rendezvous`: run the service with settings from flags and the environment (`rendezvous --help`).

On SIGTERM (Cloud Run sends it, then waits 10 s) or SIGINT the replica drains: it stops accepting
connections, lets the requests in flight finish (at most DRAIN_SECONDS, bodies still arriving included),
then shuts down. A part of the service that dies (the libp2p door) stops it the same way, with status 1.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Sequence

from aiohttp import web

from rendezvous.http.app import FAILURE, IN_FLIGHT, create_app
from rendezvous.http.routes import REGISTRY
from rendezvous.settings import Settings
from shared.runner import start

log = logging.getLogger("rendezvous")

DRAIN_SECONDS = 8.0  # within Cloud Run's 10 s grace, leaving time for the shutdown itself
SHUTDOWN_SECONDS = 1.0  # what aiohttp then gives handlers still running
ARRIVAL_SECONDS = 0.25


def main(argv: Sequence[str] | None = None) -> None:
    settings = start("rendezvous", Settings.parse, argv)
    app = create_app(settings)
    loop = _event_loop()
    try:
        loop.run_until_complete(serve(app, settings))
    except Exception as exc:  # a part that cannot start (the libp2p door, say) stops the process loudly
        log.critical("the rendezvous cannot start: %s", exc)
        sys.exit(1)
    finally:
        loop.close()
    if app[FAILURE]:
        sys.exit(1)


async def serve(app: web.Application, settings: Settings) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()  # the store, and the libp2p door when configured: either may refuse to start
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("rendezvous listening", extra={"host": settings.host, "port": settings.port})
        in_flight = app[IN_FLIGHT]
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, in_flight.stopping.set)
        await in_flight.stopping.wait()
        await site.stop()  # no new connections; the balancer sends them to another replica
        await app[REGISTRY].watches.close()  # watch streams end now, cleanly: their clients resume elsewhere
        log.info("stopping: draining the requests in flight", extra={"in_flight": in_flight.count})
        await asyncio.sleep(ARRIVAL_SECONDS)  # requests already on the wire reach their handlers (and count)
        if not await in_flight.drained(DRAIN_SECONDS):
            log.warning("stopping with requests still in flight", extra={"in_flight": in_flight.count})
    finally:
        await runner.cleanup()


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # ~20% more requests per second on these machines (see the README's figures)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
