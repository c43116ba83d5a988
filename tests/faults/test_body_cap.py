"""Fault row the simulator cannot produce: a kubelet streaming an endless body without a
Content-Length (chunked). Reading must stop at the cap, not at the end of the body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from metrics_server.cli import KubeletOptions
from metrics_server.kube.credentials import ClusterAccess
from metrics_server.scraper.kubelet import MAX_BODY_BYTES, KubeletTransport, ScrapeError

CHUNK = 64 * 1024
BODY = 100 * 1000 * 1000


class _Endless(httpx.AsyncByteStream):
    """100 MB of Prometheus-looking padding, produced on demand and counted."""

    def __init__(self) -> None:
        self.produced = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self.produced >= BODY:
            raise StopAsyncIteration
        await trio.lowlevel.checkpoint()
        self.produced += CHUNK
        return b"#" * CHUNK


def _transport() -> KubeletTransport:
    access = ClusterAccess(
        host="https://127.0.0.1:1", ca_file=None, verify=False, cert_file=None, key_file=None,
        tls_server_name=None, _config=None, _token=None, _token_read_at=0.0,
    )
    return KubeletTransport(KubeletOptions(insecure_tls=True, request_timeout=10 * 10**9), access)


async def test_chunked_body_is_cut_at_the_cap() -> None:
    stream = _Endless()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "text/plain"}, stream=stream)

    with trio.fail_after(20):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ScrapeError) as info:
                await _transport().scrape(client, "n1", "https://n1:10250/metrics/resource", None)
    assert info.value.reason == "body_too_large"
    assert "n1" in str(info.value)
    # Stopped within a chunk of the cap: the other ~70 MB were never asked for.
    assert MAX_BODY_BYTES < stream.produced <= MAX_BODY_BYTES + CHUNK
