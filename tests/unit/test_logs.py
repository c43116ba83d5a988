"""Log formats (klog text and JSON), `-v` levels and the request log, without I/O."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import trio

from metrics_server import logs
from metrics_server.logs import (
    JsonFormatter,
    KlogFormatter,
    RequestLog,
    V,
    go_quote,
    log_kv,
    verbosity_of,
)

HEADER = re.compile(r"^([IWEF])(\d{4} \d\d:\d\d:\d\d\.\d{6}) +(\d+) (\S+):(\d+)\] (.*)$", re.S)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG - 10)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Capture]]:
    logger = logging.getLogger("metrics_server.test_logs")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(1)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_go_quote_matches_strconv_quote() -> None:
    assert go_quote("plain") == '"plain"'
    assert go_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert go_quote("tab\there\nnl") == '"tab\\there\\nnl"'
    assert go_quote("\x00\x7f") == '"\\x00\\x7f"'
    assert go_quote("2× ok µs") == '"2× ok µs"'  # printable Unicode stays as is
    assert go_quote("\u00a0\u200b") == '"\\u00a0\\u200b"'


def test_text_structured_line_is_klogs(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    log_kv(logger, logging.ERROR, "Failed to scrape node", node="n1", err=ValueError("x509: no"))
    line = KlogFormatter().format(handler.records[0])
    m = HEADER.match(line)
    assert m is not None, line
    letter, _, pid, caller, _lineno, body = m.groups()
    assert letter == "E"
    assert caller == "test_logs.py"  # the call site, not logs.py
    assert int(pid) > 0
    # The message is quoted; err comes first like klog's ErrorS, then the pairs.
    assert body == '"Failed to scrape node" err="x509: no" node="n1"'


def test_text_values_numbers_bools_and_multiline(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    log_kv(logger, logging.INFO, "m", n=3, f=2.0, g=0.25, ok=True, none=None, text="a\nb")
    body = KlogFormatter().format(handler.records[0]).split("] ", 1)[1]
    assert body == '"m" n=3 f=2 g=0.25 ok=true text=<\n\ta\n\tb\n >'
    log_kv(logger, logging.INFO, "m", text="ends\n")
    assert KlogFormatter().format(handler.records[1]).endswith('"m" text=<\n\tends\n >')


def test_text_plain_and_levels(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    logger.warning("watch %s failed", "pods")
    logger.log(V(6), "outgoing")
    logger.critical("boom")
    lines = [KlogFormatter().format(r) for r in handler.records]
    assert lines[0].startswith("W") and lines[0].endswith("] watch pods failed")
    assert lines[1].startswith("I")
    assert lines[2].startswith("F")


def test_exception_traceback_follows_the_line(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        logger.exception("internal error serving %s", "/x")
    text = KlogFormatter().format(handler.records[0])
    first, rest = text.split("\n", 1)
    assert first.startswith("E") and first.endswith("] internal error serving /x")
    assert "RuntimeError: bad" in rest


def test_json_has_klogs_fields(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    log_kv(logger, V(3), "HTTP", verb="GET", resp=200)
    log_kv(logger, logging.ERROR, "Failed to scrape node", err=OSError("refused"), node="n1")
    logger.info("serving securely on %s", "::")
    info, error, plain = (orjson.loads(JsonFormatter().format(r)) for r in handler.records)
    assert list(info) == ["ts", "caller", "msg", "v", "verb", "resp"]
    assert info["msg"] == "HTTP" and info["v"] == 3 and info["resp"] == 200
    assert info["caller"].startswith("test_logs.py:")
    # Milliseconds since the epoch, as component-base's JSON logger writes them.
    assert info["ts"] == pytest.approx(handler.records[0].created * 1000)
    assert "v" not in error  # zapr puts "v" on info entries only
    assert list(error) == ["ts", "caller", "msg", "err", "node"]
    assert error["err"] == "refused"
    assert plain["msg"] == "serving securely on ::" and plain["v"] == 0


def test_verbosity_levels_round_trip() -> None:
    assert V(0) == logging.INFO and V(4) == logging.DEBUG
    assert logging.INFO > V(1) > V(2) > V(3) > V(4) > V(6) > V(10) > 0
    for n in range(11):
        assert verbosity_of(V(n)) == n
    assert verbosity_of(logging.WARNING) == 0
    assert logging.getLevelName(V(6)) == "V6"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ("", "metrics_server", "httpx", "httpcore", "hypercorn.access")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    try:
        yield
    finally:
        for n, (level, handlers) in saved.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("verbosity", "ours", "httpx", "httpcore"),
    [
        (0, V(0), logging.WARNING, logging.WARNING),
        (3, V(3), logging.WARNING, logging.WARNING),
        (6, V(6), logging.INFO, logging.WARNING),
        (10, V(10), logging.INFO, logging.DEBUG),
    ],
)
def test_setup_levels(verbosity: int, ours: int, httpx: int, httpcore: int) -> None:
    logs.setup(verbosity, "text")
    assert logging.getLogger("metrics_server").level == ours
    assert logging.getLogger("httpx").level == httpx
    assert logging.getLogger("httpcore").level == httpcore
    assert logging.getLogger().level == logging.WARNING


@pytest.mark.usefixtures("restore_logging")
def test_setup_json_tags_library_records_with_their_verbosity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.setup(10, "json")
    logging.getLogger("httpcore.http11").debug("send_request_headers.started")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/ 200")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["msg"], e["v"]) for e in lines] == [
        ("send_request_headers.started", 8),
        ("HTTP Request: GET https://x/ 200", 6),
    ]


async def test_request_log_line(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 403, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/apis/metrics.k8s.io/v1beta1/nodes",
        "raw_path": b"/apis/metrics.k8s.io/v1beta1/nodes",
        "query_string": b"labelSelector=a%3Db",
        "headers": [
            (b"authorization", b"Bearer s3cret-token"),
            (b"user-agent", b"kubectl/v1.35.0"),
        ],
        "client": ("::1", 40000),
    }
    with trio.fail_after(5):
        await RequestLog(app, logger)(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    body = KlogFormatter().format(handler.records[0]).split("] ", 1)[1]
    assert re.fullmatch(
        r'"HTTP" verb="GET" URI="/apis/metrics.k8s.io/v1beta1/nodes\?labelSelector=a%3Db" '
        r'latency="[0-9.]+(ns|µs|ms|s)" userAgent="kubectl/v1.35.0" srcIP="\[::1\]:40000" '
        r"resp=403",
        body,
    ), body
    assert handler.records[0].levelno == V(3)
    assert "s3cret-token" not in body


async def test_request_log_is_silent_below_v3(captured: tuple[logging.Logger, Capture]) -> None:
    logger, handler = captured
    logger.setLevel(V(2))
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    with trio.fail_after(5):
        await RequestLog(app, logger)({"type": "http", "path": "/x"}, receive, send)
    assert calls == ["/x"] and handler.records == []
