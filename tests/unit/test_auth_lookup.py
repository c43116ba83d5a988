"""ConfigMap lookup: upstream's start-up failure semantics and the list+watch loop."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from metrics_server.auth import AuthConfig, AuthConfigError, AuthLookupError, AuthSources
from metrics_server.auth.lookup import ConfigMapWatcher


def cm(data: dict[str, str], rv: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"name": "extension-apiserver-authentication", "resourceVersion": rv},
        "data": data,
    }


def cm_data(client: trustme.CA, proxy: trustme.CA) -> dict[str, str]:
    return {
        "client-ca-file": client.cert_pem.bytes().decode(),
        "requestheader-client-ca-file": proxy.cert_pem.bytes().decode(),
        "requestheader-allowed-names": '["front-proxy-client"]',
        "requestheader-username-headers": '["X-Remote-User"]',
        "requestheader-group-headers": '["X-Remote-Group"]',
        "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
    }


def client_for(handler: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url="https://k", transport=httpx.MockTransport(handler))


async def test_initial_lookup_loads_both_halves() -> None:
    client_ca, proxy_ca = trustme.CA(), trustme.CA()

    async def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.params["fieldSelector"] == "metadata.name=extension-apiserver-authentication"
        return httpx.Response(
            200,
            json={
                "metadata": {"resourceVersion": "5"},
                "items": [cm(cm_data(client_ca, proxy_ca))],
            },
        )

    sources = AuthSources(AuthConfig())
    await ConfigMapWatcher(client_for(handler), sources).initial_lookup()
    snap = sources.snapshot()
    assert snap.client_ca.pem.strip() == client_ca.cert_pem.bytes().strip()
    assert snap.request_header is not None
    assert snap.request_header.allowed_names == ("front-proxy-client",)
    assert sources.client_ca_pem().count(b"BEGIN CERTIFICATE") == 2


async def test_flags_override_configmap() -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("no lookup expected")

    w = ConfigMapWatcher(
        client_for(handler),
        AuthSources(AuthConfig(client_ca_file="/x", requestheader_client_ca_file="/y")),
    )
    await w.initial_lookup()
    assert not w.want_client_ca and not w.want_request_header


async def test_not_found_means_no_front_proxy() -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"metadata": {"resourceVersion": "1"}, "items": []})

    sources = AuthSources(AuthConfig())
    await ConfigMapWatcher(client_for(handler), sources).initial_lookup()
    rh = sources.snapshot().request_header
    assert rh is not None and rh.ca.empty


@pytest.mark.parametrize("status", [403, 500])
async def test_lookup_failure_is_fatal_by_default(status: int) -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status)

    with pytest.raises(AuthLookupError, match="request-header-client-ca-file"):
        await ConfigMapWatcher(client_for(handler), AuthSources(AuthConfig())).initial_lookup()


async def test_lookup_failure_tolerated_disables_request_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    sources = AuthSources(AuthConfig(authentication_tolerate_lookup_failure=True))
    w = ConfigMapWatcher(client_for(handler), sources)
    await w.initial_lookup()
    assert not w.want_request_header and w.want_client_ca
    assert sources.snapshot().request_header is None
    assert "tolerate-lookup-failure=false" in caplog.text


async def test_slow_lookup_is_bounded() -> None:
    with trio.fail_after(5):

        async def handler(req: httpx.Request) -> httpx.Response:
            await trio.sleep_forever()
            raise AssertionError

        w = ConfigMapWatcher(client_for(handler), AuthSources(AuthConfig()), request_timeout=0.1)
        with pytest.raises(AuthLookupError, match="timed out"):
            await w.initial_lookup()


async def test_malformed_json_array_is_an_error() -> None:
    async def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [cm({"requestheader-allowed-names": "[1"})]})

    with pytest.raises(AuthLookupError, match="invalid JSON"):
        await ConfigMapWatcher(client_for(handler), AuthSources(AuthConfig())).initial_lookup()


async def test_watch_applies_updates_and_relists_on_410() -> None:
    with trio.fail_after(5):
        ca1, ca2, proxy = trustme.CA(), trustme.CA(), trustme.CA()
        events_send, events_recv = trio.open_memory_channel[bytes](10)
        lists: list[str] = []

        async def stream() -> AsyncIterator[bytes]:
            async for chunk in events_recv:
                yield chunk

        async def handler(req: httpx.Request) -> httpx.Response:
            if req.url.params.get("watch") == "true":
                if len(lists) == 2:  # start-up lookup + first list
                    return httpx.Response(200, content=stream())
                await trio.sleep_forever()
            lists.append(req.url.params.get("resourceVersion", ""))
            return httpx.Response(
                200, json={"metadata": {"resourceVersion": "1"}, "items": [cm(cm_data(ca1, proxy))]}
            )

        sources = AuthSources(AuthConfig())
        w = ConfigMapWatcher(client_for(handler), sources)
        async with trio.open_nursery() as nursery:
            await nursery.start(w.run)
            gen = sources.snapshot().generation
            event = {"type": "MODIFIED", "object": cm(cm_data(ca2, proxy), rv="2")}
            await events_send.send(json.dumps(event).encode() + b"\n")
            await sources.wait_changed(gen)
            assert sources.snapshot().client_ca.pem.strip() == ca2.cert_pem.bytes().strip()
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
            gen = sources.snapshot().generation
            await events_send.send(json.dumps(gone).encode() + b"\n")
            await sources.wait_changed(gen)  # the relist brings ca1 back
            assert sources.snapshot().client_ca.pem.strip() == ca1.cert_pem.bytes().strip()
            assert len(lists) == 3  # start-up lookup, first list, relist
            nursery.cancel_scope.cancel()


async def test_flag_ca_files_load_and_reload(tmp_path: Path) -> None:
    ca1, ca2 = trustme.CA(), trustme.CA()
    path = tmp_path / "ca.pem"
    ca1.cert_pem.write_to_path(str(path))
    sources = AuthSources(AuthConfig(client_ca_file=str(path), authentication_skip_lookup=True))
    await sources.load_flag_files()
    assert sources.snapshot().client_ca.pem.strip() == ca1.cert_pem.bytes().strip()
    path.write_bytes(b"garbage")
    await sources.poll_flag_files_once()  # broken file: the old bundle stays
    assert sources.snapshot().client_ca.pem.strip() == ca1.cert_pem.bytes().strip()
    ca2.cert_pem.write_to_path(str(path))
    await sources.poll_flag_files_once()
    assert sources.snapshot().client_ca.pem.strip() == ca2.cert_pem.bytes().strip()


async def test_missing_flag_file_is_fatal(tmp_path: Path) -> None:
    sources = AuthSources(AuthConfig(client_ca_file=str(tmp_path / "nope.pem")))
    with pytest.raises(AuthConfigError, match=r"nope\.pem"):
        await sources.load_flag_files()
