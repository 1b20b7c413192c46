"""JSON log lines on stdout for every role, in the shape Cloud Logging parses (`severity`, `message`,
`time`, and inside a span `logging.googleapis.com/trace` and `logging.googleapis.com/spanId`, which link
the line to its trace). Fields passed with `extra=` become structured fields.

py-libp2p's `libp2p` logger does not propagate to the root logger, so its warnings would go nowhere (or as
plain text); here they join the JSON stream at LIBP2P_LOG_LEVEL, and what the library logs as an error
in normal operation is demoted to DEBUG so a real error stands out.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import sys
import time
from typing import Any

from shared import tracing
from shared.settings import Observability

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Messages py-libp2p 0.8.1 logs at WARNING or ERROR in normal operation: a relayed stream ending is "Error
# reading from hop stream"; a dial that finds nobody is "Failed to open TCP stream"; a relayed connection
# closing after its circuit limit makes the hop and yamux loggers complain, often with an empty message.
# The worker reports failed dials itself, in its `holepunch:` lines.
_ROUTINE = ("Error reading from hop stream", "Failed to fetch stored addresses for peer",
            "Failed to open TCP stream", "Failed to connect to ws://")
# ...and what it says when it writes to a stream the other side already closed (a circuit that ended)
_ROUTINE_REASONS = ("closed for writing",)


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str, project: str | None = None):
        super().__init__()
        self.role = role
        self.project = project  # Cloud Run sets no project variable; with it, the trace field is the full name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "logger": record.name,
            "role": self.role,
        }
        ids = tracing.current_ids()
        if ids is not None:
            trace_id, span_id, sampled = ids
            entry["logging.googleapis.com/trace"] = (f"projects/{self.project}/traces/{trace_id}" if self.project
                                                     else trace_id)
            entry["logging.googleapis.com/spanId"] = span_id
            entry["logging.googleapis.com/trace_sampled"] = sampled
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RepeatedWarnings:
    """Warnings that repeat with every request while Redis is away (thousands a second), logged at most once
    per `interval` seconds per kind, each line saying how many were held back since the last one. The
    metrics still count every failure."""

    def __init__(self, logger: logging.Logger, interval: float = 1.0):
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval) < self.interval:
            self._held[kind] += 1
            return
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message, args = message + " (%d more like it held back)", (*args, held)
        self.logger.warning(message, *args, stacklevel=2)  # the line names the caller, not this helper


class _DemoteRoutine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno > logging.DEBUG and record.name.startswith("libp2p") and (
                message.startswith(_ROUTINE) or not message.strip() or any(r in message for r in _ROUTINE_REASONS)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure(role: str, settings: Observability) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(role, settings.google_cloud_project))
    handler.addFilter(_DemoteRoutine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # metrics count requests; Cloud Run logs them
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    library = logging.getLogger("libp2p")
    library.handlers[:] = []
    library.propagate = True
    library.setLevel(settings.libp2p_log_level)
