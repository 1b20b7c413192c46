"""`worker`: run one worker until SIGTERM or Ctrl-C."""
from __future__ import annotations

import sys

import trio

from worker import logs
from worker.identity import IdentityError, load_identity
from worker.node import Worker
from worker.options import OptionError
from worker.settings import WorkerSettings


def main(argv: list[str] | None = None) -> None:
    try:
        settings = WorkerSettings.parse(argv)
    except OptionError as exc:
        sys.exit(f"worker: configuration error: {exc}")
    logs.configure("worker", settings.log_level)
    try:
        identity = load_identity(settings.identity_key, settings.identity_file)
    except (IdentityError, OSError) as exc:
        sys.exit(f"worker: identity: {exc}")
    trio.run(lambda: Worker(settings, identity).run(handle_signals=True))


if __name__ == "__main__":
    main()
