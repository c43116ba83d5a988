"""Logging: klog-compatible text (default) or klog's JSON lines, `-v` levels, request logs.

Text lines are what klog writes:
`I1122 09:29:40.218833       1 nodes.py:149] "Failed to scrape node" err="…" node="n1"`.
`log_kv(logger, level, msg, **kv)` is klog's InfoS/ErrorS: the message is quoted and the
pairs follow as key="value"; plain `%`-style calls print their message as is, like Infof.
JSON lines carry klog's fields: ts (milliseconds since the epoch), caller, msg, v (not on
errors), err, then the pairs.

`-v=N` means what it means upstream: V(2) failed health checks with their reasons, V(3)
one line per served request, V(4) our debug details, V(6) every outgoing request (method,
URL, status), V(8) connection-level traces of those requests. Bodies and request headers
are never logged at any level: a TokenReview body carries a bearer token.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson

from metrics_server.quantity import format_go_duration

__all__ = [
    "JsonFormatter",
    "KlogFormatter",
    "RequestLog",
    "V",
    "go_quote",
    "log_kv",
    "setup",
    "verbosity_of",
]

HTTPX_VERBOSITY = 6
"""httpx logs one INFO line per request (method, URL, status): client-go's -v=6."""
HTTPCORE_VERBOSITY = 8
"""httpcore's DEBUG traces (connect, TLS, response headers; never request headers)."""


def V(n: int) -> int:
    """The Python level of klog's V(n): V(0) is INFO, V(1-3) just below, V(4) is DEBUG.

    `log.debug` in our code therefore means V(4); V(5-10) sit below DEBUG.
    """
    if n <= 0:
        return logging.INFO
    if n <= 3:
        return logging.INFO - n
    return max(logging.DEBUG - (n - 4), 1)


def verbosity_of(levelno: int) -> int:
    """Inverse of `V` for a record's level (0 for INFO and above)."""
    if levelno >= logging.INFO:
        return 0
    if levelno > logging.DEBUG:
        return min(logging.INFO - levelno, 3)
    return 4 + (logging.DEBUG - levelno)


for _n in (1, 2, 3, 5, 6, 7, 8, 9, 10):
    logging.addLevelName(V(_n), f"V{_n}")


class _Structured:
    """A klog structured message; `str()` renders it as klog's text serialization does."""

    __slots__ = ("kv", "msg")

    def __init__(self, msg: str, kv: Mapping[str, object]) -> None:
        self.msg = msg
        self.kv = kv

    def __str__(self) -> str:
        return go_quote(self.msg) + "".join(_format_kv(k, v) for k, v in self.kv.items())


def log_kv(logger: logging.Logger, level: int, msg: str, /, **kv: object) -> None:
    """Log like klog's InfoS/ErrorS: a constant message and key/value pairs.

    Pass an error as `err=exc`; it comes first, as with ErrorS. A value of None is left out.
    """
    if not logger.isEnabledFor(level):
        return
    pairs = {k: v for k, v in kv.items() if v is not None}
    if "err" in pairs:
        pairs = {"err": pairs.pop("err"), **pairs}
    logger.log(level, _Structured(msg, pairs), stacklevel=2)


_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """Go's strconv.Quote: printable characters as they are, everything else escaped."""
    out = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x80:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _format_kv(key: str, value: object) -> str:
    # klog quotes strings and errors, prints numbers and booleans bare, and shows a
    # multi-line string as a tab-indented block closed by " >".
    if isinstance(value, bool):
        text, quote = ("true" if value else "false"), False
    elif isinstance(value, int | float):
        text, quote = _go_number(value), False
    else:
        text, quote = str(value), True
    if "\n" not in text:
        return f" {key}={go_quote(text) if quote else text}"
    lines = text.split("\n")
    body = "".join(f"\t{line}\n" for line in lines[:-1])
    if lines[-1]:
        body += f"\t{lines[-1]}\n"
    return f" {key}=<\n{body} >"


def _go_number(value: float) -> str:
    # Go prints 2.0 as "2" and 0.25 as "0.25".
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class KlogFormatter(logging.Formatter):
    """klog's text header and body."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created)
        letter = "I"
        if record.levelno >= logging.CRITICAL:
            letter = "F"
        elif record.levelno >= logging.ERROR:
            letter = "E"
        elif record.levelno >= logging.WARNING:
            letter = "W"
        head = f"{letter}{ts:%m%d %H:%M:%S.%f} {os.getpid():>7} {record.filename}:{record.lineno}]"
        text = f"{head} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """klog's JSON format (component-base/logs/json): one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": record.created * 1000.0,
            "caller": f"{record.filename}:{record.lineno}",
        }
        structured = record.msg if isinstance(record.msg, _Structured) else None
        entry["msg"] = structured.msg if structured is not None else record.getMessage()
        if record.levelno < logging.ERROR:
            entry["v"] = getattr(record, "klog_v", verbosity_of(record.levelno))
        if structured is not None:
            for key, value in structured.kv.items():
                entry[key] = _json_value(value)
        if record.exc_info and record.exc_info[1] is not None:
            entry.setdefault("err", str(record.exc_info[1]))
            entry["stacktrace"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class _LibraryVerbosity(logging.Filter):
    """Tags library records with the -v level that enabled them (JSON's "v").

    On the handler, because libraries log through child loggers ("httpcore.http11") whose
    records never pass a filter set on the parent logger.
    """

    def __init__(self, levels: Mapping[str, int]) -> None:
        super().__init__()
        self.levels = dict(levels)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            library = record.name.split(".", 1)[0]
            verbosity = self.levels.get(library)
            if verbosity is not None:
                record.klog_v = verbosity
        return True


LIBRARY_VERBOSITY = {"httpx": HTTPX_VERBOSITY, "httpcore": HTTPCORE_VERBOSITY}


def setup(verbosity: int, fmt: str) -> None:
    """Route every log record to stderr in the chosen format, at the chosen verbosity."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KlogFormatter())
    handler.addFilter(_LibraryVerbosity(LIBRARY_VERBOSITY))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("metrics_server").setLevel(V(verbosity))
    for name, needed in LIBRARY_VERBOSITY.items():
        # httpx logs each request at INFO, httpcore its traces at DEBUG.
        level = logging.INFO if name == "httpx" else logging.DEBUG
        logging.getLogger(name).setLevel(level if verbosity >= needed else logging.WARNING)
    # We log requests ourselves (RequestLog, V(3)); Hypercorn's own access log stays off.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


# -- request log (ASGI) ----------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_LOG_VERBOSITY = 3
"""k8s.io/apiserver's httplog writes its "HTTP" line at V(3)."""


class RequestLog:
    """ASGI middleware: one V(3) "HTTP" line per request, with httplog's keys.

    Outermost, so rejected requests (401, 403) are logged too. Headers other than the
    User-Agent are never looked at, so credentials cannot reach the log.
    """

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.log = logger or logging.getLogger(__name__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        level = V(REQUEST_LOG_VERBOSITY)
        if scope.get("type") != "http" or not self.log.isEnabledFor(level):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter_ns()
        status = 0

        async def record_status(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            log_kv(
                self.log,
                level,
                "HTTP",
                verb=str(scope.get("method", "")),
                URI=_request_uri(scope),
                latency=format_go_duration(time.perf_counter_ns() - started),
                userAgent=_header(scope, b"user-agent"),
                srcIP=_remote_addr(scope),
                resp=status,
            )


def _request_uri(scope: Scope) -> str:
    path = scope.get("raw_path") or str(scope.get("path", "")).encode()
    query = scope.get("query_string") or b""
    uri = bytes(path).decode("latin-1")
    return f"{uri}?{bytes(query).decode('latin-1')}" if query else uri


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _remote_addr(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = str(client[0]), client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
