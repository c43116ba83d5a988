"""Self-metrics exposition: upstream's help, buckets and series; node series go with the node;
the scrape-task gauge counts the tasks that really run."""

from __future__ import annotations

import resource
import time
from typing import cast

import httpx
import trio
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics_server.cli import parse_options
from metrics_server.daemon import Daemon
from metrics_server.kube.cache import NodeCache, PodCache
from metrics_server.models import NodeInfo
from metrics_server.scraper.kubelet import KubeletResponse, KubeletTransport, ScrapeError
from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings
from metrics_server.selfmetrics import (
    DEFAULT_BUCKETS,
    BulkHistogram,
    SelfMetrics,
    exponential_buckets,
    freshness_buckets,
    tick_buckets,
)
from metrics_server.storage.store import MetricsStore


def families(m: SelfMetrics) -> dict[str, object]:
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_tick_buckets_follow_buckets_for_scrape_duration() -> None:
    # Values from upstream's pkg/utils/monitoring.go for each branch.
    assert tick_buckets(10) == DEFAULT_BUCKETS
    assert tick_buckets(60) == (*DEFAULT_BUCKETS, 35.0, 60.0, 90.0, 120.0)
    assert tick_buckets(15) == (*DEFAULT_BUCKETS, 12.5, 15.0, 22.5, 30.0)
    assert tick_buckets(4) == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.0, 5.0, 10.0)
    # Within the smallest bucket width of a default bucket: nothing inserted.
    assert tick_buckets(5.001) == DEFAULT_BUCKETS
    assert tick_buckets(2.499) == DEFAULT_BUCKETS


def test_freshness_buckets_are_gos_floats() -> None:
    buckets = freshness_buckets()
    assert len(buckets) == 20 and buckets[0] == 1.0 and buckets[1] == 1.364
    # Go multiplies step by step; 1.364**4 differs in the last bit.
    assert buckets[4] == 3.4614453660160014
    assert buckets[4] != 1.364**4
    assert buckets[-1] == 364.31163045936864
    assert exponential_buckets(2, 2, 3) == (2, 4, 8)


def test_exposition_matches_upstream_and_has_no_created_series() -> None:
    m = SelfMetrics(60.0)
    m.observe_scrape("n1", 0.2, None)
    m.observe_scrape("n2", 0.3, ScrapeError("timeout", "node n2: timed out"))
    m.observe_freshness([2.0])
    text = m.render()[0].decode()
    assert "_created" not in text
    fams = families(m)
    expected = {
        "metrics_server_kubelet_request_duration_seconds": "histogram",
        "metrics_server_kubelet_request": "counter",
        "metrics_server_kubelet_last_request_time_seconds": "gauge",
        "metrics_server_manager_tick_duration_seconds": "histogram",
        "metrics_server_api_metric_freshness_seconds": "histogram",
        "metrics_server_scrape_failures": "counter",
        "process_virtual_memory_max_bytes": "gauge",
        "process_cpu_seconds": "counter",
        "process_resident_memory_bytes": "gauge",
    }
    for name, kind in expected.items():
        assert fams[name].type == kind, name  # type: ignore[attr-defined]
    for name in expected:
        if name.startswith("metrics_server_") and "scrape_failures" not in name:
            assert fams[name].documentation.startswith("[ALPHA] "), name  # type: ignore[attr-defined]
    assert (
        "# HELP metrics_server_kubelet_request_duration_seconds "
        "[ALPHA] Duration of requests to Kubelet API in seconds\n"
    ) in text
    last = {
        s.labels["node"]: s.value
        for s in fams["metrics_server_kubelet_last_request_time_seconds"].samples  # type: ignore[attr-defined]
    }
    assert set(last) == {"n1", "n2"}
    assert all(v == int(v) for v in last.values())  # whole seconds, like time.Now().Unix()
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    vmax = fams["process_virtual_memory_max_bytes"].samples[0].value  # type: ignore[attr-defined]
    assert vmax == (float(2**64 - 1) if limit == resource.RLIM_INFINITY else limit)


def test_forget_node_removes_its_series() -> None:
    m = SelfMetrics(10.0)
    for node in ("keep", "gone"):
        m.observe_scrape(node, 0.1, None)
        m.observe_scrape(node, 0.1, ScrapeError("http_403", f"node {node}: HTTP 403"))
        m.observe_scrape(node, 0.1, ScrapeError("timeout", f"node {node}: timed out"))
    m.forget_node("gone")
    m.forget_node("never-seen")  # harmless
    text = m.render()[0].decode()
    assert 'node="gone"' not in text
    assert text.count('metrics_server_scrape_failures_total{node="keep"') == 2
    # Cluster-wide series stay.
    assert 'metrics_server_kubelet_request_total{success="false"} 4.0' in text


def test_authentication_config_lookup_failures_are_counted_by_reason() -> None:
    m = SelfMetrics(10.0)
    name = "metrics_server_authentication_config_lookup_failures"
    family = families(m)[name]
    assert family.type == "counter" and family.samples == []  # type: ignore[attr-defined]
    # Ours, not upstream's: no stability prefix.
    assert "extension-apiserver-authentication" in family.documentation  # type: ignore[attr-defined]
    assert not family.documentation.startswith("[ALPHA]")  # type: ignore[attr-defined]
    for reason in ("http_403", "http_403", "timeout"):
        m.auth_config_lookup_failure(reason)
    counted = {
        s.labels["reason"]: s.value
        for s in families(m)[name].samples  # type: ignore[attr-defined]
        if s.name.endswith("_total")
    }
    assert counted == {"http_403": 2.0, "timeout": 1.0}
    text = m.render()[0].decode()
    assert f'{name}_total{{reason="http_403"}} 2.0' in text

# -- metrics_server_scrape_tasks counts the tasks trio runs, not the nodes -------------------

NODE_TEXT = (
    b"node_cpu_usage_seconds_total 357.35491 1633253809720\n"
    b"node_memory_working_set_bytes 1.616273408e+09 1633253809720\n"
)


class _Kubelet:
    """Stands in for KubeletTransport: answers at once, except for the nodes in `hold`,
    whose scrape ignores cancellation until `release` is set (a task that will not end)."""

    def __init__(self, *hold: str) -> None:
        self.hold = set(hold)
        self.holding = trio.Event()
        self.release = trio.Event()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    async def scrape(
        self, client: httpx.AsyncClient, node: str, url: str, server_name: str | None
    ) -> KubeletResponse:
        if node in self.hold:
            self.holding.set()
            with trio.CancelScope(shield=True):
                await self.release.wait()
        return KubeletResponse(body=NODE_TEXT, request_time=time.time_ns())


def _info(name: str) -> NodeInfo:
    return NodeInfo(name, {}, (("InternalIP", "10.0.0.1"),), 10250)


def _scrape_tasks(m: SelfMetrics) -> float:
    samples = families(m)["metrics_server_scrape_tasks"].samples  # type: ignore[attr-defined]
    return float(samples[0].value)


async def test_scrape_tasks_gauge_drops_only_once_a_task_has_exited(
    autojump_clock: trio.abc.Clock,
) -> None:
    kubelet = _Kubelet("stuck")
    store = MetricsStore(10 * 10**9)
    settings = ScrapeSettings(10.0, ("InternalIP",), 10250, False, False)
    manager = ScrapeManager(settings, cast(KubeletTransport, kubelet), store)
    d = Daemon(
        options=parse_options([]), store=store, nodes=NodeCache(), pods=PodCache(), manager=manager
    )
    m = SelfMetrics(10.0)
    m.bind(d)
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(manager.run)
                for name in ("a", "b", "stuck"):
                    manager.on_node(name, _info(name))
                await kubelet.holding.wait()
                assert _scrape_tasks(m) == len(manager.nodes) == 3

                # Removed: forgotten at once, counted until its task has really finished.
                a = manager.nodes["a"]
                manager.on_node("a", None)
                assert "a" not in manager.nodes and _scrape_tasks(m) == 3
                await a.done.wait()
                # `done` is the task's last act: nothing of it runs after this wakes us.
                assert _scrape_tasks(m) == len(manager.nodes) == 2

                # A task that does not end stays visible, however long it takes.
                stuck = manager.nodes["stuck"]
                manager.on_node("stuck", None)
                await trio.sleep(600)
                assert len(manager.nodes) == 1 and not stuck.done.is_set()
                assert _scrape_tasks(m) == 2
                kubelet.release.set()
                await stuck.done.wait()
                assert _scrape_tasks(m) == len(manager.nodes) == 1
            finally:
                kubelet.release.set()  # a failed assertion must not leave it hanging
            nursery.cancel_scope.cancel()
    assert _scrape_tasks(m) == 0


def test_bulk_histogram_exposes_what_a_histogram_would() -> None:
    """Freshness is counted a batch at a time; the text must equal prometheus_client's own
    Histogram fed the same values one by one, bounds (`le` is inclusive) and +Inf included."""
    SelfMetrics(15.0)  # as in the daemon: no `_created` series on prometheus_client's side
    buckets = freshness_buckets()
    values = [0.0, 0.5, 1.0, buckets[3], buckets[3] + 1e-9, 17.2, 15.0, 1e6, 2.0, 2.0]
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = Histogram("fresh_seconds", "doc", buckets=buckets, registry=theirs_registry)
    ours = BulkHistogram("fresh_seconds", "doc", buckets)
    ours_registry.register(ours)
    for v in values:
        theirs.observe(v)
    ours.observe_many(values[:4])
    ours.observe_many([])
    ours.observe_many(values[4:])
    assert generate_latest(ours_registry) == generate_latest(theirs_registry)
    assert b'fresh_seconds_bucket{le="+Inf"} 10.0' in generate_latest(ours_registry)
