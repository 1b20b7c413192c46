"""`relay`: run the circuit relay until SIGTERM or Ctrl-C."""
from __future__ import annotations

import sys

import trio

from relay.node import Relay
from relay.settings import RelaySettings
from worker import logs
from worker.identity import IdentityError, load_identity
from worker.options import OptionError


def main(argv: list[str] | None = None) -> None:
    try:
        settings = RelaySettings.parse(argv)
    except OptionError as exc:
        sys.exit(f"relay: configuration error: {exc}")
    logs.configure("relay", settings.log_level)
    try:
        identity = load_identity(settings.identity_key, settings.identity_file)
    except (IdentityError, OSError) as exc:
        sys.exit(f"relay: identity: {exc}")
    trio.run(lambda: Relay(settings, identity).run(handle_signals=True))


if __name__ == "__main__":
    main()
