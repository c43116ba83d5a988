"""Logging set-up: klog-compatible text (default) or JSON lines, and `-v` levels.

Text lines look like klog's:
`I1122 09:29:40.218833       1 nodes.py:149] "Failed to scrape node" err="…"`.
Levels: -v 0-3 → INFO; 4-5 → DEBUG for our loggers; ≥ 6 also logs each request
(Hypercorn access log and httpx); library chatter stays at WARNING below that.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys

import orjson

_LEVEL_LETTER = {"DEBUG": "I", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}


class KlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created)
        letter = _LEVEL_LETTER.get(record.levelname, "I")
        head = (
            f"{letter}{ts:%m%d %H:%M:%S.%f} {os.getpid():>7} "
            f"{record.filename}:{record.lineno}]"
        )
        text = f"{head} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": record.created,
            "caller": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
            "v": 0 if record.levelno >= logging.INFO else 4,
        }
        if record.levelno >= logging.ERROR:
            entry["err"] = record.getMessage()
        if record.exc_info:
            entry["stacktrace"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup(verbosity: int, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("metrics_server").setLevel(logging.DEBUG if verbosity >= 4 else logging.INFO)
    chatty = logging.INFO if verbosity >= 6 else logging.WARNING
    for name in ("hypercorn.access", "hypercorn.error", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(chatty)
    if verbosity < 10:
        # httpcore logs bodies and headers (tokens!) at DEBUG: never below 10, and even
        # then only at INFO, which carries no header values.
        logging.getLogger("httpcore").setLevel(max(chatty, logging.INFO))
