"""`worker`: run one worker until SIGTERM or Ctrl-C."""
from __future__ import annotations

import sys
from typing import Callable

import trio

from rendezvous import tracing
from worker import logs
from worker.identity import Identity, IdentityError, load_identity
from worker.options import OptionError
from worker.secrets import SecretError, fill_from_secrets


def run_role(role: str, parse: Callable, make_node: Callable[[object, Identity], object],
             argv: list[str] | None) -> None:
    """Parse the settings, set up JSON logs, load the identity and run the node until a signal stops it;
    a bad option or identity ends the process with a message that names it."""
    try:
        fill_from_secrets()
        settings = parse(argv)
    except (OptionError, SecretError) as exc:
        sys.exit(f"{role}: configuration error: {exc}")
    logs.configure(role, settings.log_level)
    tracing.configure(role)
    try:
        identity = load_identity(settings.identity_key, settings.identity_file)
    except (IdentityError, OSError) as exc:
        sys.exit(f"{role}: identity: {exc}")
    trio.run(lambda: make_node(settings, identity).run(handle_signals=True))


def main(argv: list[str] | None = None) -> None:
    from worker.node import Worker
    from worker.settings import WorkerSettings

    run_role("worker", WorkerSettings.parse, Worker, argv)


if __name__ == "__main__":
    main()
