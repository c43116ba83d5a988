"""One fake kubelet: a TLS listener serving `GET /metrics/resource` with injectable faults.

HTTP is hand-written rather than h11: a kubelet only ever answers small GETs, and at 5,000
kubelets per process the per-connection state should be a buffer and nothing else. The body
comes from `World.kubelet_body`, which renders it once per refresh tick.

Clients authenticate with the metrics server's bearer token by default; `set_client_auth`
makes a kubelet take a client certificate signed by the simulator's client CA instead of, or
as well as, the token (a kubelet's x509 and webhook authentication). Counters on each
kubelet (connections accepted, requests by credential) let tests see how they are called.
"""

from __future__ import annotations

import ssl
from typing import Literal

import trio

from metrics_server.simulator._certs import PKI
from metrics_server.simulator._net import RestartableListener
from metrics_server.simulator._world import World
from metrics_server.simulator.faults import (
    Fault,
    Garbage,
    Hang,
    HttpStatus,
    Huge,
    NoIPSAN,
    Refuse,
    Slow,
    Trickle,
    Truncated,
    WrongCA,
)

__all__ = ["ClientAuth", "FakeKubelet"]

ClientAuth = Literal["token", "cert", "token-or-cert"]
"""Which credentials a kubelet accepts: the bearer token, a verified client certificate, or
either."""

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
CLOSE_TIMEOUT = 1.0
SEND_TIMEOUT = 60.0
MAX_HEAD = 64 << 10
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 500: "Internal Server Error", 503: "Service Unavailable",
}
_PROM = "text/plain; version=0.0.4; charset=utf-8"
_GARBAGE = b"\x00\x01{{{ this is not prometheus text }}}\xff\xfe\n" * 64


class _BadRequest(Exception):
    pass


def _cert_kind(fault: Fault | None) -> str:
    if isinstance(fault, WrongCA):
        return "wrong-ca"
    if isinstance(fault, NoIPSAN):
        return "no-ip-san"
    return "normal"


def _head(code: int, content_type: str, length: int, close: bool = False) -> bytes:
    reason = _REASONS.get(code, "Status")
    conn = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{conn}\r\n"
    ).encode()


GO_BODY_BUFFER = 4096
"""Go's net/http sets Content-Length only when the whole body fits its 4 KiB buffer;
past that, the answer is chunked, one chunk per buffer."""


def _gzip_answer(body: bytes) -> bytes:
    """A 200 with a gzipped body framed as a kubelet (Go, promhttp) frames it."""
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: {_PROM}\r\n"
    if len(body) <= GO_BODY_BUFFER:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
    parts = [f"{head}Transfer-Encoding: chunked\r\n\r\n".encode()]
    for i in range(0, len(body), GO_BODY_BUFFER):
        piece = body[i : i + GO_BODY_BUFFER]
        parts += [f"{len(piece):x}\r\n".encode(), piece, b"\r\n"]
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


async def _read_head(
    stream: trio.SSLStream[trio.SocketStream], buf: bytearray
) -> tuple[str, str, dict[bytes, bytes], bool] | None:
    """Read one request head; returns (method, path, headers, keep_alive) or None at EOF."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise _BadRequest("request head too large")
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method, target, version = parts
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadRequest("malformed header")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0") or b"0")
    while len(buf) < length:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    del buf[:length]
    connection = headers.get(b"connection", b"").lower()
    keep_alive = connection != b"close" and (version == b"HTTP/1.1" or connection == b"keep-alive")
    path = target.split(b"?", 1)[0].decode("latin-1")
    return method.decode("latin-1"), path, headers, keep_alive


class FakeKubelet:
    """A node's kubelet endpoint; cheap while idle (one listener task, one SSL context)."""

    __slots__ = (
        "_auth", "_ctx", "_kind", "_pki", "_world", "cert_requests", "client_auth",
        "connections", "fault", "listener", "name", "token_requests",
    )

    def __init__(
        self, name: str, world: World, pki: PKI, *, token: str, nursery: trio.Nursery,
        fault: Fault | None = None, port: int = 0, client_auth: ClientAuth = "token",
    ) -> None:
        self.name = name
        self._world = world
        self._pki = pki
        self._auth = f"Bearer {token}".encode()
        self.fault = fault
        self.client_auth: ClientAuth = client_auth
        self.connections = 0
        """TCP connections accepted, whether or not the handshake then succeeded."""
        self.token_requests = 0
        """Requests for /metrics/resource carrying the right bearer token."""
        self.cert_requests = 0
        """Requests for /metrics/resource on a connection with a verified client certificate
        (only counted while client certificates are asked for)."""
        self._kind = _cert_kind(fault)
        self._ctx: ssl.SSLContext = self._context()
        self.listener = RestartableListener(nursery, self._connection, port=port)

    def _context(self) -> ssl.SSLContext:
        return self._pki.kubelet_context(
            self.name, self._kind, verify_clients=self.client_auth != "token"
        )

    @property
    def port(self) -> int:
        return self.listener.port

    def start(self) -> None:
        if not isinstance(self.fault, Refuse):
            self.listener.start()
        elif self.listener.port == 0:
            # A node created refusing still needs a port to advertise: bind once, then close.
            self.listener.start()
            self.listener.stop()

    def stop(self) -> None:
        self.listener.stop()

    def set_fault(self, fault: Fault | None) -> None:
        kind = _cert_kind(fault)
        restart = kind != self._kind or isinstance(fault, Refuse) or isinstance(self.fault, Refuse)
        if kind != self._kind:
            self._kind = kind
            self._ctx = self._context()
        self.fault = fault
        if restart:
            self.listener.stop()
            if not isinstance(fault, Refuse):
                self.listener.start()

    def set_client_auth(self, client_auth: ClientAuth) -> None:
        """Change which credentials are accepted. Whether a certificate is asked for is part
        of the handshake, so open connections are dropped (the listener restarts)."""
        if client_auth == self.client_auth:
            return
        self.client_auth = client_auth
        self._ctx = self._context()
        if self.listener.running:
            self.listener.stop()
            self.listener.start()

    async def _connection(self, raw: trio.SocketStream) -> None:
        self.connections += 1
        stream: trio.abc.Stream = raw
        try:
            fault = self.fault
            if isinstance(fault, Hang) and fault.before_handshake:
                await trio.sleep_forever()
            tls = trio.SSLStream(raw, self._ctx, server_side=True)
            stream = tls
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
            # With CERT_OPTIONAL a certificate that was presented has been verified by now
            # (a bad one fails the handshake); none presented gives an empty answer.
            has_cert = self.client_auth != "token" and bool(tls.getpeercert())
            await self._serve_requests(tls, has_cert)
            with trio.move_on_after(CLOSE_TIMEOUT):
                await tls.aclose()  # sends close_notify (Go's server does too)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                _BadRequest, ValueError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_requests(
        self, tls: trio.SSLStream[trio.SocketStream], has_cert: bool
    ) -> None:
        buf = bytearray()
        while True:
            request = None  # stays None when the idle timeout ends the wait
            with trio.move_on_after(IDLE_TIMEOUT):
                request = await _read_head(tls, buf)
            if request is None:
                return
            method, path, headers, keep_alive = request
            if not await self._respond(tls, method, path, headers, has_cert) or not keep_alive:
                return

    async def _respond(
        self, tls: trio.SSLStream[trio.SocketStream], method: str, path: str,
        headers: dict[bytes, bytes], has_cert: bool,
    ) -> bool:
        """Answer one request; False when the connection must be closed afterwards."""
        fault = self.fault
        if isinstance(fault, Hang):
            await trio.sleep_forever()
        if isinstance(fault, Slow):
            await trio.sleep(fault.seconds)
        if isinstance(fault, HttpStatus):
            body = f"simulated kubelet error {fault.code}\n".encode()
            return await self._send(tls, _head(fault.code, "text/plain", len(body)) + body)
        if path != "/metrics/resource":
            body = b"404 page not found\n"
            return await self._send(tls, _head(404, "text/plain; charset=utf-8", len(body)) + body)
        if method != "GET":
            return await self._send(tls, _head(405, "text/plain", 0))
        if not self._authenticated(headers, has_cert):
            body = b"Unauthorized\n"
            return await self._send(tls, _head(401, "text/plain; charset=utf-8", len(body)) + body)
        if isinstance(fault, Garbage):
            return await self._send(tls, _head(200, _PROM, len(_GARBAGE)) + _GARBAGE)
        if isinstance(fault, Huge):
            await self._send(tls, _head(200, _PROM, fault.size))
            line = b"# padding " + b"x" * 53 + b"\n"
            chunk = line * (65536 // len(line))
            remaining = fault.size
            while remaining > 0:
                piece = chunk[:remaining]
                await self._send(tls, piece)
                remaining -= len(piece)
            return True
        if self.name not in self._world.nodes:
            return await self._send(tls, _head(404, "text/plain", 0))
        body = self._world.kubelet_body(self.name)
        if isinstance(fault, Truncated):
            await self._send(tls, _head(200, _PROM, len(body)) + body[: len(body) // 2])
            return False
        if isinstance(fault, Trickle):
            data = _head(200, _PROM, len(body)) + body
            for i in range(0, len(data), max(fault.chunk, 1)):
                await self._send(tls, data[i : i + fault.chunk])
                await trio.sleep(fault.interval)
            return True
        if b"gzip" in headers.get(b"accept-encoding", b"").lower():
            return await self._send(tls, _gzip_answer(self._world.kubelet_body_gzip(self.name)))
        return await self._send(tls, _head(200, _PROM, len(body)) + body)

    def _authenticated(self, headers: dict[bytes, bytes], has_cert: bool) -> bool:
        has_token = headers.get(b"authorization") == self._auth
        self.token_requests += has_token
        self.cert_requests += has_cert
        if self.client_auth == "token":
            return has_token
        if self.client_auth == "cert":
            return has_cert
        return has_token or has_cert

    @staticmethod
    async def _send(tls: trio.SSLStream[trio.SocketStream], data: bytes) -> bool:
        with trio.fail_after(SEND_TIMEOUT):
            await tls.send_all(data)
        return True
