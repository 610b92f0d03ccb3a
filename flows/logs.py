"""Logging of every command: `--log-level` / STOCKPIPE_LOG_LEVEL and STOCKPIPE_LOG_FORMAT.

`text` (default) is one line per record for a terminal; `json` is one JSON
object per line (`ts`, `level`, `logger`, `message`, and `exc` with the
traceback), for a log shipper. Both are read from the environment, so the
worker processes a command starts log the same way; `stockpipe --log-level
DEBUG …` sets the variable for them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging() -> None:
    """Configure the root logger from STOCKPIPE_LOG_LEVEL and STOCKPIPE_LOG_FORMAT.

    A bad value is named on stderr and the default is used: logging is set up
    before the settings are read, and must not be what stops a command.
    """
    level = os.environ.get("STOCKPIPE_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("STOCKPIPE_LOG_FORMAT", "text").lower()
    if level not in LEVELS:
        print(f"stockpipe: STOCKPIPE_LOG_LEVEL={level!r} is not one of {LEVELS}; using INFO",
              file=sys.stderr)  # fmt: skip
        level = "INFO"
    if fmt not in FORMATS:
        print(f"stockpipe: STOCKPIPE_LOG_FORMAT={fmt!r} is not text or json; using text",
              file=sys.stderr)  # fmt: skip
        fmt = "text"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
