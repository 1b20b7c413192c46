"""`rendezvous`: run the service with settings from flags and the environment (`rendezvous --help`)."""
from __future__ import annotations

import asyncio
import logging
import sys
from typing import Sequence

from aiohttp import web

from rendezvous.http.app import FAILURE, create_app
from rendezvous.settings import Settings
from shared.runner import start

log = logging.getLogger("rendezvous")


def main(argv: Sequence[str] | None = None) -> None:
    settings = start("rendezvous", Settings.parse, argv)
    app = create_app(settings)
    log.info("rendezvous listening", extra={"host": settings.host, "port": settings.port})
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None,
                    handle_signals=True, loop=_event_loop())
    except Exception as exc:  # a part that cannot start (the libp2p door, say) stops the process loudly
        log.critical("the rendezvous cannot start: %s", exc)
        sys.exit(1)
    if app[FAILURE]:
        sys.exit(1)


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # ~20% more requests per second on these machines (see the README's figures)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
