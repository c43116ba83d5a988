"""The Hypercorn seam: the ASGI TLS extension built from a real handshake in memory."""

from __future__ import annotations

import ssl
from typing import Any

import trio
import trio.testing
import trustme

from metrics_server.serving.peercert import TLSScopeApp, tls_extension


async def handshake(with_client_cert: bool) -> tuple[trio.SSLStream[Any], trio.SSLStream[Any]]:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ca = trustme.CA()
    client_ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    if with_client_cert:
        client_ca.issue_cert("c.test", common_name="alice").configure_cert(client_ctx)
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, server_ctx, server_side=True)
    client = trio.SSLStream(b, client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as n:
        n.start_soon(server.do_handshake)
        n.start_soon(client.do_handshake)
    return server, client


async def test_extension_with_client_cert() -> None:
    with trio.fail_after(10):
        server, _ = await handshake(True)
        ext = tls_extension(server)
        assert len(ext["client_cert_chain"]) == 1
        assert ext["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
        assert "CN=alice" in ext["client_cert_name"]
        assert ext["tls_version"] == 0x0304
        assert ext["cipher_suite"] in (0x1301, 0x1302, 0x1303)


async def test_extension_without_client_cert_and_app_wrapper() -> None:
    with trio.fail_after(10):
        server, _ = await handshake(False)
        seen: list[dict[str, Any]] = []

        async def inner(scope: Any, receive: Any, send: Any, spawn: Any, soon: Any) -> None:
            seen.append(scope)

        app = TLSScopeApp(inner, server)
        original = {"type": "http", "extensions": {"http.response.trailers": {}}}
        await app(original, None, None, None, None)  # type: ignore[arg-type]
        await app({"type": "lifespan"}, None, None, None, None)  # type: ignore[arg-type]
        assert seen[0]["extensions"]["tls"]["client_cert_chain"] == []
        assert seen[0]["extensions"]["http.response.trailers"] == {}
        assert "tls" not in original["extensions"]  # hypercorn's scope is not mutated
        assert "extensions" not in seen[1]
