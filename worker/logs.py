"""JSON log lines for the libp2p roles: the rendezvous's format, plus the library's own loggers.

py-libp2p's `libp2p` logger does not propagate to the root logger, so its warnings would go nowhere (or
as plain text); here they join our JSON stream, at WARNING unless LIBP2P_LOG_LEVEL says otherwise.
"""
from __future__ import annotations

import logging
import os

from rendezvous import logs as rendezvous_logs


# Messages py-libp2p logs as errors in normal operation (a relayed stream ending is "Error reading from hop
# stream"; a dial that finds nobody is "Failed to open TCP stream"); they are kept, at DEBUG, so a real
# error stands out. The worker reports failed dials itself, in its `holepunch:` lines.
_ROUTINE = ("Error reading from hop stream", "Failed to fetch stored addresses for peer",
            "Failed to open TCP stream", "Failed to connect to ws://")  # a direct dial that did not answer


class _DemoteRoutine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.getMessage().startswith(_ROUTINE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure(role: str, level: str) -> None:
    rendezvous_logs.configure(role, level)
    library = logging.getLogger("libp2p")
    library.handlers[:] = []
    library.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DemoteRoutine())
    library.setLevel(os.environ.get("LIBP2P_LOG_LEVEL", "WARNING").upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
