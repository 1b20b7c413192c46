"""`worker`: run one worker until SIGTERM or Ctrl-C (`worker --help` lists every option)."""
from __future__ import annotations

from typing import Sequence

from shared.runner import run_node
from worker.node import Worker
from worker.settings import WorkerSettings


def main(argv: Sequence[str] | None = None) -> None:
    run_node("worker", WorkerSettings.parse, Worker, argv)


if __name__ == "__main__":
    main()
