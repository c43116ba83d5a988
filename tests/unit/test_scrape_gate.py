"""The first scrapes wait for the pod list (bounded), so that at thousands of nodes the
list is not starved by thousands of handshakes on the same event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import trio
import trio.testing

from metrics_server.daemon import pods_first
from metrics_server.models import NodeInfo
from metrics_server.scraper.kubelet import KubeletResponse
from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings

SETTINGS = ScrapeSettings(
    resolution=15.0,
    preferred_address_types=("InternalIP",),
    default_port=10250,
    use_node_status_port=False,
    tls_server_name_from_node=False,
)
BODY = (
    b"node_cpu_usage_seconds_total 1.5 1700000000000\n"
    b"node_memory_working_set_bytes 1e9 1700000000000\n"
)


class _Client:
    async def aclose(self) -> None:
        pass


@dataclass
class _Transport:
    scraped: list[str] = field(default_factory=list)
    two: trio.Event = field(default_factory=trio.Event)

    def client(self) -> _Client:
        return _Client()

    async def scrape(
        self, client: object, node: str, url: str, sni: str | None
    ) -> KubeletResponse:
        self.scraped.append(node)
        if len(self.scraped) == 2:
            self.two.set()
        return KubeletResponse(body=BODY, request_time=1_700_000_000_000_000_000)


@dataclass
class _Sink:
    stored: list[str] = field(default_factory=list)

    def store_node(self, name: str, batch: object) -> None:
        self.stored.append(name)

    def drop_node(self, name: str) -> None:
        pass

    def node_usage(self, name: str) -> object | None:
        return None


def _node(name: str) -> NodeInfo:
    return NodeInfo(
        name=name, labels={}, addresses=(("InternalIP", "127.0.0.1"),), kubelet_port=10250
    )


async def test_node_tasks_wait_for_the_gate_before_the_first_scrape(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    transport, sink = _Transport(), _Sink()
    manager = ScrapeManager(SETTINGS, cast(Any, transport), sink, first_scrape_gate=gate)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        manager.on_node("n1", _node("n1"))
        manager.on_node("n2", _node("n2"))
        await trio.sleep(100)  # virtual time: every task has run until it blocked
        assert transport.scraped == []
        assert manager.tasks_alive() == 2
        gate.set()
        with trio.fail_after(1):
            await transport.two.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(transport.scraped[:2]) == ["n1", "n2"]
        assert sorted(sink.stored[:2]) == ["n1", "n2"]
        nursery.cancel_scope.cancel()


async def test_pods_first_releases_when_the_pod_list_is_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    synced, release = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pods_first, synced, release, 30.0)
        await trio.sleep(5)
        assert not release.is_set()
        synced.set()
        with trio.fail_after(0.001):
            await release.wait()
    assert trio.current_time() < 5.001


async def test_pods_first_gives_up_after_its_limit(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod list that never syncs (apiserver failing it) must not hold node metrics back."""
    synced, release = trio.Event(), trio.Event()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pods_first, synced, release, 30.0)
        await release.wait()
    assert trio.current_time() - start == 30.0
    assert "Pod list not synced yet; scraping nodes anyway" in caplog.text
    assert 'waited="30s"' in caplog.text
