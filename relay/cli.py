"""`relay`: run the circuit relay until SIGTERM or Ctrl-C (`relay --help` lists every option)."""
from __future__ import annotations

from typing import Sequence

from relay.node import Relay
from relay.settings import RelaySettings
from shared.runner import run_node


def main(argv: Sequence[str] | None = None) -> None:
    run_node("relay", RelaySettings.parse, Relay, argv)


if __name__ == "__main__":
    main()
