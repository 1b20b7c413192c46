"""`relay`: run the circuit relay until SIGTERM or Ctrl-C."""
from __future__ import annotations

from relay.node import Relay
from relay.settings import RelaySettings
from worker.cli import run_role


def main(argv: list[str] | None = None) -> None:
    run_role("relay", RelaySettings.parse, Relay, argv)


if __name__ == "__main__":
    main()
