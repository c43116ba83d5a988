"""serve(): ephemeral ports, IPv6, the generated certificate, graceful shutdown."""

from __future__ import annotations

import socket
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metrics_server.serving import ServingConfig, ServingError, serve


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
