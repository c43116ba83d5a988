"""KubeletConnection and the kubelet body reader against scripted TLS servers on 127.0.0.1.

Each server is a few lines of trio that answers with exactly the bytes a test needs (gzip with
and without chunking, a kept-alive connection the kubelet closes, a stale connection closed
just as the request arrives, a gzip bomb, a handshake that never finishes), so the behaviours
the simulator's well-formed kubelet never shows are pinned down.
"""

from __future__ import annotations

import gzip
import ssl
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import trio
import trustme

from metrics_server.cli import KubeletOptions
from metrics_server.kube.credentials import ClusterAccess
from metrics_server.scraper.kubelet import MAX_BODY_BYTES, KubeletTransport, ScrapeError

BODY = b"".join(
    b'container_cpu_usage_seconds_total{container="c%d",namespace="ns",pod="p%d"} 1.5 %d\n'
    % (i, i, 1700000000000)
    for i in range(400)
)
"""~40 KB of Prometheus-looking text: gzip makes it several kilobytes, in more than one chunk."""

Handler = Callable[["Conn"], Awaitable[None]]


@dataclass
class Conn:
    """One accepted connection, as the scripted kubelet sees it."""

    stream: trio.SSLStream[trio.SocketStream]
    buffer: bytes = b""

    async def request(self) -> bytes | None:
        """The next request head, or None when the client closed."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


@dataclass
class Kubelet:
    port: int
    accepted: int = 0
    first_closed: trio.Event = field(default_factory=trio.Event)
    """Set once the server has closed its end of the first connection."""


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(body: bytes, *headers: str, size: int = 4096) -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    out = [f"HTTP/1.1 200 OK\r\n{lines}Transfer-Encoding: chunked\r\n\r\n".encode()]
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += [b"%x\r\n" % len(piece), piece, b"\r\n"]
    return b"".join([*out, b"0\r\n\r\n"])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def kubelet(ca: trustme.CA, handler: Handler) -> AsyncIterator[Kubelet]:
    """A TLS server on 127.0.0.1 that runs `handler` for each accepted connection."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    state = Kubelet(port=listeners[0].socket.getsockname()[1])

    async def serve(raw: trio.SocketStream) -> None:
        state.accepted += 1
        stream = trio.SSLStream(raw, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
            conn = Conn(stream)
            await handler(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            state.first_closed.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        yield state
        nursery.cancel_scope.cancel()


def transport(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> KubeletTransport:
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    access = ClusterAccess(
        host="https://127.0.0.1:1", ca_file=None, verify=True, cert_file=None, key_file=None,
        tls_server_name=None, _config=None, _token=None, _token_read_at=0.0,
    )
    options = KubeletOptions(certificate_authority=str(ca_file), request_timeout=5 * 10**9)
    return KubeletTransport(options, access)


@pytest.fixture
def kt(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> KubeletTransport:
    return transport(ca, tmp_path_factory)


def url(k: Kubelet) -> str:
    return f"https://127.0.0.1:{k.port}/metrics/resource"


async def scrape(kt: KubeletTransport, client: httpx.AsyncClient, k: Kubelet) -> bytes:
    with trio.fail_after(10):
        return (await kt.scrape(client, "n1", url(k), None)).body


def serve_each(*answers: bytes) -> Handler:
    """Answer successive requests on one connection with `answers`, then close."""

    async def handler(conn: Conn) -> None:
        for data in answers:
            if await conn.request() is None:
                return
            await conn.send(data)

    return handler


async def test_keep_alive_gzip_and_chunked_on_one_connection(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    packed = gzip.compress(BODY)
    handler = serve_each(
        answer(BODY),
        answer(packed, "Content-Encoding: gzip"),
        chunked(packed, "Content-Encoding: gzip", size=1000),
        chunked(BODY),
    )
    async with kubelet(ca, handler) as k, kt.client() as client:
        bodies = [await scrape(kt, client, k) for _ in range(4)]
    assert bodies == [BODY] * 4
    assert k.accepted == 1


async def test_requests_ask_for_gzip_and_carry_the_headers(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        head = await conn.request()
        assert head is not None
        seen.append(head)
        await conn.send(answer(BODY))

    async with kubelet(ca, handler) as k, kt.client() as client:
        await scrape(kt, client, k)
    lines = seen[0].lower().split(b"\r\n")
    assert lines[0] == b"get /metrics/resource http/1.1"
    assert b"accept-encoding: gzip" in lines
    assert f"host: 127.0.0.1:{k.port}".encode() in lines


async def test_kubelet_closing_an_idle_connection_costs_no_scrape(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    async with kubelet(ca, serve_each(answer(BODY))) as k, kt.client() as client:
        assert await scrape(kt, client, k) == BODY
        with trio.fail_after(5):
            await k.first_closed.wait()  # closed by the kubelet while idle
        assert await scrape(kt, client, k) == BODY
    assert k.accepted == 2


async def test_stale_connection_is_retried_once_on_a_new_one(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    async def handler(conn: Conn) -> None:
        if await conn.request() is None:
            return
        await conn.send(answer(BODY))
        if conn is not first[0]:
            return
        # The first connection: take the second request and close without an answer, as a
        # kubelet does when its idle timer fires just as the request arrives.
        await conn.request()

    first: list[Conn | None] = [None]

    async def tracking(conn: Conn) -> None:
        if first[0] is None:
            first[0] = conn
        await handler(conn)

    async with kubelet(ca, tracking) as k, kt.client() as client:
        assert await scrape(kt, client, k) == BODY
        assert await scrape(kt, client, k) == BODY
    assert k.accepted == 2


async def test_a_fresh_connection_closed_without_answer_is_not_retried(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()  # and close

    async with kubelet(ca, handler) as k, kt.client() as client:
        with pytest.raises(ScrapeError) as info:
            await scrape(kt, client, k)
    assert info.value.reason == "protocol"
    assert k.accepted == 1


async def test_connection_close_answer_opens_a_new_connection(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    handler = serve_each(answer(BODY, "Connection: close"))
    async with kubelet(ca, handler) as k, kt.client() as client:
        assert await scrape(kt, client, k) == BODY
        assert await scrape(kt, client, k) == BODY
    assert k.accepted == 2


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (answer(gzip.compress(BODY)[:-40], "Content-Encoding: gzip"), "protocol", "gzip body ends"),
        (answer(b"\x1f\x8b\x08\x00garbage" * 20, "Content-Encoding: gzip"), "protocol",
         "corrupt gzip"),
        (answer(BODY, "Content-Encoding: br"), "protocol", "'br'"),
        (answer(BODY)[:-100], "protocol", "broke mid-answer"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000 + b"\r\n\r\n", "protocol", "not valid HTTP"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "protocol", "not valid HTTP"),
        (answer(gzip.compress(b"denied by policy\n"), "Content-Encoding: gzip",
                status="403 Forbidden"), "http_403", "denied by policy"),
    ],
    ids=["truncated-gzip", "corrupt-gzip", "unknown-encoding", "short-body", "huge-head",
         "not-http", "gzipped-error-text"],
)
async def test_bad_answers_name_what_was_wrong(
    ca: trustme.CA, kt: KubeletTransport, data: bytes, reason: str, words: str
) -> None:
    async with kubelet(ca, serve_each(data)) as k, kt.client() as client:
        with pytest.raises(ScrapeError) as info:
            await scrape(kt, client, k)
    assert info.value.reason == reason
    assert "node n1" in str(info.value)
    assert words in str(info.value)


async def test_gzip_bomb_stops_at_the_cap_without_inflating_it(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(512)) + packer.flush()  # 512 MiB
    assert len(bomb) < 1 << 20
    handler = serve_each(chunked(bomb, "Content-Encoding: gzip"))
    async with kubelet(ca, handler) as k, kt.client() as client:
        tracemalloc.start()
        try:
            with pytest.raises(ScrapeError) as info:
                await scrape(kt, client, k)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert info.value.reason == "body_too_large"
    # What was inflated is bounded by the cap (kept pieces + one piece), not by the bomb.
    assert peak < 2 * MAX_BODY_BYTES + (4 << 20)


async def test_handshake_cancelled_by_the_deadline_closes_the_socket(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A kubelet that accepts TCP and never answers the handshake: the scrape times out and
    our socket is closed at once (the server reads EOF), not left to the GC."""
    eof = trio.Event()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def silent(raw: trio.SocketStream) -> None:
        async with raw:  # serve_listeners leaves closing the stream to its handler
            while await raw.receive_some(65536):
                pass  # the ClientHello, unanswered
            eof.set()

    access = ClusterAccess(
        host="https://127.0.0.1:1", ca_file=None, verify=False, cert_file=None, key_file=None,
        tls_server_name=None, _config=None, _token=None, _token_read_at=0.0,
    )
    kt = KubeletTransport(KubeletOptions(insecure_tls=True, request_timeout=10**9 // 2), access)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, silent, listeners)
        async with kt.client() as client:
            with trio.fail_after(5), pytest.raises(ScrapeError) as info:
                await kt.scrape(client, "n1", f"https://127.0.0.1:{port}/metrics/resource", None)
            with trio.fail_after(5):
                await eof.wait()
        nursery.cancel_scope.cancel()
    assert info.value.reason == "timeout"


async def test_body_abandoned_half_way_is_not_reused(
    ca: trustme.CA, kt: KubeletTransport
) -> None:
    """An answer over the announced-size cap is refused before its body is read; the
    connection then holds unread bytes and must not carry the next request."""
    huge = f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode() + b"#" * 1000
    served = 0

    async def handler(conn: Conn) -> None:
        nonlocal served
        served += 1  # the first connection announces too much; later ones answer properly
        await serve_each(huge if served == 1 else answer(BODY))(conn)

    async with kubelet(ca, handler) as k, kt.client() as client:
        with pytest.raises(ScrapeError) as info:
            await scrape(kt, client, k)
        assert info.value.reason == "body_too_large"
        assert await scrape(kt, client, k) == BODY
    assert k.accepted == 2
