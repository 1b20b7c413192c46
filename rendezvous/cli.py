"""`rendezvous`: run the service with settings from the environment."""
from __future__ import annotations

import asyncio
import logging
import os
import sys

from aiohttp import web

from rendezvous import logs, tracing
from rendezvous.app import create_app
from rendezvous.settings import ConfigError, Settings

log = logging.getLogger("rendezvous")


def main() -> None:
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__.strip() + "\nConfiguration is read from environment variables; see the README.")
        return
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"rendezvous: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure("rendezvous", settings.log_level)
    tracing.configure("rendezvous")
    log.info("rendezvous listening", extra={"host": settings.host, "port": settings.port})
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None,
                access_log=None, handle_signals=True, loop=_event_loop())


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # ~20% more requests per second on these machines (see the README's figures)
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
