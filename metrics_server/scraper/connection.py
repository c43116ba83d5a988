"""One kept-alive HTTPS connection to one kubelet, as an httpx transport.

Each node's scrape task owns one `httpx.AsyncClient`, and the client owns one of these in
place of httpx's default pool (httpcore). A kubelet is asked one GET at a time over one
connection, so the pool's bookkeeping (request queues, per-connection locks, several layers
of async generators around every body) is pure cost on the hot path: measured by
`tests/bench/bench_client.py`, httpcore took ~1.1 ms of CPU per scrape over a bare GET on the
same TLS stream, more than decoding the body. HTTP/1.1 itself is h11's (a dependency of
httpcore and hypercorn already): parsing, chunked bodies, keep-alive rules.

Failures leave as httpx exceptions of the kinds httpcore raises (ConnectError with the
OpenSSL or resolver error as its cause, ConnectTimeout, ReadError, ReadTimeout,
RemoteProtocolError), so `kubelet._map_error` reads them the same way.
"""

from __future__ import annotations

import select
import ssl

import h11
import httpx
import trio

__all__ = ["KubeletConnection"]

READ_SIZE = 65536
MAX_HEAD = 64 * 1024
"""Bytes of status line and headers we accept; a kubelet sends a few hundred."""


class KubeletConnection(httpx.AsyncBaseTransport):
    """At most one TLS connection, reused while the kubelet keeps it open."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._peer: tuple[str, int, str] | None = None
        """(host, port, TLS server name) the open connection goes to."""
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._busy = False
        self._cycles = 0
        """Requests completed on the open connection."""
        self.connections = 0
        """Connections opened so far (tests read it)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._busy:
            raise RuntimeError("KubeletConnection serves one request at a time")
        if request.url.scheme != "https":
            raise httpx.UnsupportedProtocol(f"kubelet URL must be https: {request.url}")
        host = request.url.host
        port = request.url.port or 443
        server_name = str(request.extensions.get("sni_hostname") or host)
        timeouts = request.extensions.get("timeout", {})
        self._busy = True
        try:
            reused = self._usable((host, port, server_name))
            if not reused:
                await self._open(host, port, server_name, timeouts.get("connect"))
            try:
                head = await self._send_and_read_head(request, timeouts.get("read"))
            except _Stale:
                # The kubelet closed the kept-alive connection just as we sent: a GET may be
                # sent again, once, on a new connection (Go's transport does the same).
                await self._close()
                await self._open(host, port, server_name, timeouts.get("connect"))
                head = await self._send_and_read_head(request, timeouts.get("read"))
        except BaseException:
            self._busy = False
            await self._close()
            raise
        return httpx.Response(
            status_code=head.status_code,
            headers=head.headers,
            stream=_Body(self, timeouts.get("read")),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        await self._close()

    def _usable(self, peer: tuple[str, int, str]) -> bool:
        if self._stream is None:
            return False
        if self._peer != peer or self._h11.our_state is not h11.IDLE:
            return False
        # An idle connection with something to read has been closed by the kubelet (EOF or
        # a close_notify): poll(2), as select(2) cannot take descriptors past 1,023.
        poller = select.poll()
        poller.register(self._stream.transport_stream.socket.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def _open(
        self, host: str, port: int, server_name: str, limit: float | None
    ) -> None:
        """Connect and handshake within `limit` seconds."""
        await self._close()
        sock: trio.SocketStream | None = None
        try:
            with trio.fail_after(limit if limit is not None else float("inf")):
                try:
                    sock = await trio.open_tcp_stream(host, port)
                except OSError as exc:
                    raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
                stream = trio.SSLStream(
                    sock, self._ssl, server_hostname=server_name, https_compatible=True
                )
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise httpx.ConnectError(str(exc.__cause__ or exc)) from exc
        except BaseException as exc:
            # Timed out, cancelled or failed half-way: the socket must not wait for the GC.
            if sock is not None:
                await trio.aclose_forcefully(sock)
            if isinstance(exc, trio.TooSlowError):
                raise httpx.ConnectTimeout("TCP connect or TLS handshake timed out") from exc
            raise
        self._stream = stream
        self._peer = (host, port, server_name)
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.connections += 1

    async def _send_and_read_head(
        self, request: httpx.Request, idle: float | None
    ) -> h11.Response:
        conn = self._h11
        event = h11.Request(
            method=request.method, target=request.url.raw_path, headers=request.headers.raw
        )
        data = conn.send(event) + conn.send(h11.EndOfMessage())
        reused = self._cycles > 0
        received = False
        with _deadline(idle) as scope:
            try:
                await self._stream_or_fail().send_all(data)
                while True:
                    got = conn.next_event()
                    if got is h11.NEED_DATA:
                        scope.deadline = _deadline_at(idle)
                        chunk = await self._stream_or_fail().receive_some(READ_SIZE)
                        received = received or bool(chunk)
                        conn.receive_data(bytes(chunk))
                    elif isinstance(got, h11.Response):
                        return got
                    elif isinstance(got, h11.ConnectionClosed):
                        raise h11.RemoteProtocolError("peer closed the connection unanswered")
                    # else InformationalResponse (1xx): read on for the final answer.
            except h11.RemoteProtocolError as exc:
                if reused and not received:
                    raise _Stale from exc
                raise httpx.RemoteProtocolError(str(exc)) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if reused and not received:
                    raise _Stale from exc
                raise httpx.ReadError(_broken(exc)) from exc
        raise httpx.ReadTimeout("no answer from the kubelet within the read timeout")

    async def read_body_chunk(self, idle: float | None) -> bytes | None:
        """The next piece of the body, or None at its end (the connection is then kept
        for the next request, or closed when HTTP/1.1 says it cannot be reused)."""
        conn = self._h11
        with _deadline(idle) as scope:
            try:
                while True:
                    got = conn.next_event()
                    if got is h11.NEED_DATA:
                        scope.deadline = _deadline_at(idle)
                        chunk = await self._stream_or_fail().receive_some(READ_SIZE)
                        conn.receive_data(bytes(chunk))
                    elif isinstance(got, h11.Data):
                        return bytes(got.data)
                    elif isinstance(got, h11.EndOfMessage):
                        await self._finish()
                        return None
                    elif isinstance(got, h11.ConnectionClosed):
                        raise h11.RemoteProtocolError("peer closed the connection mid-body")
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from exc
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise httpx.ReadError(_broken(exc)) from exc
        raise httpx.ReadTimeout("the kubelet stopped sending its answer (read timeout)")

    def _stream_or_fail(self) -> trio.SSLStream[trio.SocketStream]:
        if self._stream is None:
            raise trio.ClosedResourceError("connection closed")
        return self._stream

    async def _finish(self) -> None:
        self._busy = False
        conn = self._h11
        if (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        ):
            conn.start_next_cycle()
            self._cycles += 1
        else:
            await self._close()

    async def abandon(self) -> None:
        """The response was closed or failed before its end: the rest is still on the wire."""
        self._busy = False
        await self._close()

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        self._peer = None
        self._cycles = 0
        if stream is not None:
            # No close_notify: the kubelet does not need it, and a broken peer could hold it.
            await trio.aclose_forcefully(stream.transport_stream)


class _Stale(Exception):
    """A reused connection was closed by the kubelet before any byte of the answer."""


class _Body(httpx.AsyncByteStream):
    """The response body, read on demand. A class-based iterator rather than an async
    generator: nothing is left for the garbage collector to finalise when a scrape is
    cancelled half-way."""

    def __init__(self, owner: KubeletConnection, timeout: float | None) -> None:
        self._owner = owner
        self._timeout = timeout
        self._done = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._owner.read_body_chunk(self._timeout)
        except BaseException:
            self._done = True
            await self._owner.abandon()
            raise
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._owner.abandon()


def _broken(exc: BaseException) -> str:
    return str(exc.__cause__ or exc) or "connection broken"


def _deadline_at(idle: float | None) -> float:
    return trio.current_time() + idle if idle is not None else float("inf")


def _deadline(idle: float | None) -> trio.CancelScope:
    """A scope that expires after `idle` seconds without data (each read moves it)."""
    return trio.CancelScope(deadline=_deadline_at(idle))
