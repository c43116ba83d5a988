"""Raw HTTP/1.1 over TLS for requests no well-behaved client sends: dot segments left in the
path, invalid bytes, oversized heads, bodies that never come, connections left idle."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import trio


@dataclass(slots=True)
class RawAnswer:
    status: int | None
    """None when the server closed or reset the connection without answering."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


async def open_tls(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1", https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def request(
    target: str | bytes,
    method: str = "GET",
    *,
    token: str | None = None,
    headers: str = "",
    body: bytes = b"",
) -> bytes:
    """One request that asks the server to close the connection after answering."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    target_bytes = target.encode("latin-1") if isinstance(target, str) else target
    head = f"Host: 127.0.0.1\r\n{auth}Connection: close\r\n{headers}\r\n"
    return method.encode() + b" " + target_bytes + b" HTTP/1.1\r\n" + head.encode() + body


async def exchange(port: int, ctx: ssl.SSLContext, data: bytes, limit: int = 4 << 20) -> RawAnswer:
    """Send `data`, read the answer until the server closes (at most `limit` bytes)."""
    received = b""
    error = ""
    stream = await open_tls(port, ctx)
    try:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError as exc:
            error = f"send: {exc}"  # the server may answer and close before reading it all
        while len(received) < limit:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            received += chunk
    except trio.BrokenResourceError as exc:
        error = error or f"receive: {exc}"
    finally:
        await trio.aclose_forcefully(stream)
    return parse(received, error)


def parse(received: bytes, error: str = "") -> RawAnswer:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return RawAnswer(status=None, error=error or f"no answer ({len(received)} bytes)")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    if status == 100:  # 100 Continue, then the real answer
        return parse(body, error)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        body = body[: int(length)]
    return RawAnswer(status=status, headers=headers, body=body, error=error)
