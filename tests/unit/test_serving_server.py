"""serve(): ephemeral ports, IPv6, the generated certificate, graceful shutdown, and the
bounds on connections (timeouts, header sizes, the connection cap)."""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metrics_server.serving import ServingConfig, ServingError, serve
from metrics_server.serving.server import hypercorn_config
from tests.faults import _raw as raw


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    tls = scope["extensions"]["tls"]
    body = f"{tls['tls_version']:#x}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param("::1", marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6")),
    ],
)
async def test_serves_with_generated_cert(tmp_path: Path, host: str) -> None:
    with trio.fail_after(20):
        stop = trio.Event()
        cfg = ServingConfig(bind_address=host, secure_port=0, cert_dir=str(tmp_path / "certs"))
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
            assert port > 0
            ctx = ssl.create_default_context(cafile=str(tmp_path / "certs" / "apiserver.crt"))
            ctx.check_hostname = host == "127.0.0.1"  # the generated SANs have no ::1
            url_host = f"[{host}]" if ":" in host else host
            async with httpx.AsyncClient(verify=ctx) as c:
                r = await c.get(f"https://{url_host}:{port}/")
            assert r.status_code == 200 and r.text == "0x304"
            stop.set()


async def test_port_in_use_is_a_serving_error(tmp_path: Path) -> None:
    with trio.fail_after(20), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = ServingConfig(bind_address="127.0.0.1", secure_port=port, cert_dir=str(tmp_path))
        with pytest.raises(ServingError, match=str(port)):
            await serve(app, cfg, shutdown_trigger=trio.sleep_forever)


def test_hypercorn_config_bounds_every_connection() -> None:
    hc = hypercorn_config(ServingConfig())
    assert hc.keep_alive_timeout == 60.0
    assert hc.read_timeout == 60
    # Below keep-alive it would close idle keep-alive connections early.
    assert hc.read_timeout >= hc.keep_alive_timeout
    assert hc.ssl_handshake_timeout == 10.0
    assert hc.h11_max_incomplete_size == 64 * 1024
    assert hc.h2_max_header_list_size == 64 * 1024
    assert hc.h2_max_concurrent_streams == 100
    assert hc.graceful_timeout == 5.0
    assert hc.alpn_protocols == ["h2", "http/1.1"]
    assert hc.include_server_header is False
    assert ServingConfig().max_connections == 1024
    custom = hypercorn_config(ServingConfig(keep_alive_timeout=2.5, read_timeout=7))
    assert (custom.keep_alive_timeout, custom.read_timeout) == (2.5, 7)


@pytest.mark.parametrize(
    "field",
    [
        {"keep_alive_timeout": 0},
        {"read_timeout": 0},
        {"handshake_timeout": -1},
        {"max_connections": 0},
    ],
)
def test_unbounded_limits_are_serving_errors(field: dict[str, Any]) -> None:
    with pytest.raises(ServingError):
        ServingConfig(**field)


async def body_reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers once it has the whole body; not at all if the client goes away first."""
    if scope["type"] == "http":
        while (message := await receive())["type"] == "http.request":
            if not message.get("more_body"):
                break
        else:
            return  # http.disconnect
    await app(scope, receive, send)


async def open_tls(port: int, certs: Path) -> trio.SSLStream[trio.SocketStream]:
    return await raw.open_tls(port, ssl.create_default_context(cafile=str(certs / "apiserver.crt")))


async def read_until_closed(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    received = b""
    try:
        while chunk := await stream.receive_some(65536):
            received += chunk
    except trio.BrokenResourceError:
        pass
    return received


async def test_a_stalled_body_is_closed_after_the_read_timeout(tmp_path: Path) -> None:
    """Keep-alive does not run while a request is in flight; the read timeout does."""
    certs = tmp_path / "certs"
    cfg = ServingConfig(
        bind_address="127.0.0.1",
        secure_port=0,
        cert_dir=str(certs),
        keep_alive_timeout=30,
        read_timeout=1,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            port = await nursery.start(
                partial(serve, body_reading_app, cfg, shutdown_trigger=stop.wait)
            )
            stream = await open_tls(port, certs)
            try:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
                )
                began = trio.current_time()
                answer = await read_until_closed(stream)
                took = trio.current_time() - began
            finally:
                await trio.aclose_forcefully(stream)
            assert answer == b""  # closed, never answered: the body never completed
            assert 0.8 < took < 5, took
            stop.set()


async def test_connections_beyond_the_cap_are_refused_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs = tmp_path / "certs"
    cfg = ServingConfig(
        bind_address="127.0.0.1", secure_port=0, cert_dir=str(certs), max_connections=2
    )
    caplog.set_level(logging.INFO, logger="metrics_server.serving.peercert")
    resumed = trio.Event()

    class OnResume(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.INFO:
                resumed.set()

    on_resume = OnResume()
    logging.getLogger("metrics_server.serving.peercert").addHandler(on_resume)

    def logged(level: int) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "metrics_server.serving.peercert" and r.levelno == level
        ]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            port = await nursery.start(partial(serve, app, cfg, shutdown_trigger=stop.wait))
            held = [await open_tls(port, certs), await open_tls(port, certs)]
            try:
                for _ in range(3):
                    began = trio.current_time()
                    with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                        held.append(await open_tls(port, certs))
                    assert trio.current_time() - began < 1  # not queued, not timed out
                assert len(logged(logging.WARNING)) == 1, logged(logging.WARNING)
                # An admitted connection is still served at the cap.
                await held[0].send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert (await read_until_closed(held[0])).startswith(b"HTTP/1.1 200")
                await resumed.wait()  # the server has noticed that close
                assert logged(logging.INFO) == [
                    "accepting connections again (1 open); 3 refused at the limit of 2"
                ]
                held.append(await open_tls(port, certs))
            finally:
                logging.getLogger("metrics_server.serving.peercert").removeHandler(on_resume)
                for stream in held:
                    await trio.aclose_forcefully(stream)
            assert len(logged(logging.WARNING)) == 1
            stop.set()
