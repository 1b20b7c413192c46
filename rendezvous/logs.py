"""JSON log lines on stdout, in the shape Cloud Logging parses (`severity`, `message`, `time`, and inside a
span `logging.googleapis.com/trace` and `logging.googleapis.com/spanId`, which link the line to its trace)."""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys

from rendezvous import tracing

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role
        # Cloud Run sets no project variable; set GOOGLE_CLOUD_PROJECT so the trace field is the full name
        self.project = os.environ.get("GOOGLE_CLOUD_PROJECT")

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
        # fields passed with `extra=` become structured fields
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(role: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # metrics count requests; Cloud Run logs them
