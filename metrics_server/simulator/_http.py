"""A small HTTP/1.1 server over a trio stream with h11, for the fake kube-apiserver.

Handlers get a parsed `Request` and a `Responder` and drive the response themselves, so a watch
can stream for minutes and the aggregation proxy can stream an upstream body without async
generators (whose cancel scopes do not mix with trio). Bodies are sent with Content-Length when
given at once and chunked when streamed.
"""

from __future__ import annotations

import logging
import ssl
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

__all__ = ["Request", "Responder", "serve_connection"]

log = logging.getLogger(__name__)

MAX_BODY = 8 << 20
IDLE_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
CLOSE_TIMEOUT = 1.0


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]
    """Lower-case names, in arrival order."""
    body: bytes
    peer_cert: dict[str, Any] | None = None

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(slots=True)
class Responder:
    """Sends one response: `start` the head (optionally with the whole body), then `send`."""

    _stream: trio.abc.Stream
    _conn: h11.Connection
    started: bool = False
    _fixed: bool = False
    _closed: bool = field(default=False)

    async def _write(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            with trio.fail_after(SEND_TIMEOUT):
                await self._stream.send_all(data)

    async def start(
        self, status: int, headers: list[tuple[str, str]], body: bytes | None = None
    ) -> None:
        hdrs = [(k.encode(), v.encode()) for k, v in headers]
        if body is not None:
            hdrs.append((b"content-length", str(len(body)).encode()))
            self._fixed = True
        self.started = True
        await self._write(h11.Response(status_code=status, headers=hdrs))
        if body is not None:
            if body:
                await self._write(h11.Data(data=body))
            await self.finish()

    async def send(self, chunk: bytes) -> None:
        if chunk:
            await self._write(h11.Data(data=chunk))

    async def abort(self) -> None:
        """Cut the connection mid-response, as a dying server or a dropped watch does."""
        await trio.aclose_forcefully(self._stream)
        raise trio.ClosedResourceError("response aborted")

    async def finish(self) -> None:
        if not self._closed:
            self._closed = True
            await self._write(h11.EndOfMessage())


Handler = Callable[[Request, Responder], Awaitable[None]]


async def _next_event(
    stream: trio.abc.Stream, conn: h11.Connection
) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(65536)
        conn.receive_data(bytes(data))


async def serve_connection(
    raw: trio.SocketStream, ssl_context: ssl.SSLContext, handler: Handler
) -> None:
    """Serve requests on one TLS connection until either side closes it."""
    stream = trio.SSLStream(raw, ssl_context, server_side=True)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
        await _serve_requests(stream, handler)
        with trio.move_on_after(CLOSE_TIMEOUT):
            await stream.aclose()
    except (
        trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, h11.ProtocolError,
        ssl.SSLError,
    ):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_requests(stream: trio.SSLStream[trio.SocketStream], handler: Handler) -> None:
    peer = stream.getpeercert()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 << 10)
    while True:
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            event = await _next_event(stream, conn)
        if idle.cancelled_caught or not isinstance(event, h11.Request):
            return
        body = bytearray()
        while True:
            part = await _next_event(stream, conn)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_BODY:
                    return
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return
        target = event.target.decode("latin-1")
        split = urlsplit(target)
        request = Request(
            method=event.method.decode("ascii"),
            target=target,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=[
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
            ],
            body=bytes(body),
            peer_cert=peer or None,
        )
        responder = Responder(stream, conn)
        try:
            await handler(request, responder)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            raise
        except Exception:
            # A simulator bug: answer 500 so the test sees it, and say where it came from.
            log.error("handler failed for %s %s\n%s", request.method, target,
                      traceback.format_exc())
            if responder.started:
                return
            await responder.start(500, [("content-type", "text/plain")], b"simulator bug\n")
        if not responder.started:
            await responder.start(500, [("content-type", "text/plain")], b"no response\n")
        await responder.finish()
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()
