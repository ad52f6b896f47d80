"""Log lines of the fleet monitor (both of its processes): plain text or one JSON object each."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonLogFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}``, one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return json.dumps(doc)


def setup_logging(as_json: bool, level: int = logging.INFO) -> None:
    """Send log lines to stderr, as JSON when ``as_json``."""
    handler = logging.StreamHandler(sys.stderr)
    plain = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handler.setFormatter(JsonLogFormatter() if as_json else plain)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
