"""Self-metrics on /metrics: upstream's names, types, labels and buckets, plus our own.

A private registry per daemon (tests run several). A node's series are removed when the
node goes away, so a cluster with churn does not grow /metrics forever.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from metrics_server.daemon import Daemon
    from metrics_server.scraper.kubelet import ScrapeError

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def tick_buckets(resolution: float) -> tuple[float, ...]:
    """Prometheus defaults plus ½, 1, 1.5 and 2 resolutions when resolution > 10 s."""
    if resolution <= 10:
        return DEFAULT_BUCKETS
    extra = (resolution / 2, resolution, resolution * 1.5, resolution * 2)
    return tuple(sorted(set(DEFAULT_BUCKETS + extra)))


def freshness_buckets() -> tuple[float, ...]:
    return tuple(1.0 * 1.364**i for i in range(20))


class SelfMetrics:
    """Owns the registry and the hooks the scraper, watches and API call."""

    def __init__(self, resolution: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "metrics_server_kubelet_request_duration_seconds",
            "Duration of requests to kubelet API in seconds",
            ["node"],
            buckets=DEFAULT_BUCKETS,
            registry=r,
        )
        self.request_total = Counter(
            "metrics_server_kubelet_request_total",
            "Number of requests sent to kubelet API",
            ["success"],
            registry=r,
        )
        self.last_request = Gauge(
            "metrics_server_kubelet_last_request_time_seconds",
            "Time of last request performed to kubelet API since unix epoch in seconds",
            ["node"],
            registry=r,
        )
        self.tick_duration = Histogram(
            "metrics_server_manager_tick_duration_seconds",
            "The total time spent collecting and storing metrics in seconds "
            "(here: per node collection)",
            buckets=tick_buckets(resolution),
            registry=r,
        )
        self.freshness = Histogram(
            "metrics_server_api_metric_freshness_seconds",
            "Freshness of metrics exported",
            buckets=freshness_buckets(),
            registry=r,
        )
        self.scrape_failures = Counter(
            "metrics_server_scrape_failures_total",
            "Failed kubelet scrapes by node and reason",
            ["node", "reason"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "metrics_server_watch_restarts_total",
            "Restarts of kube-apiserver watches by resource and reason",
            ["resource", "reason"],
            registry=r,
        )
        ProcessCollector(registry=r)
        r.register(_LiveCollector(self))
        self._daemon: Daemon | None = None
        self._failure_reasons: dict[str, set[str]] = {}

    def bind(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def observe_scrape(self, node: str, seconds: float, error: ScrapeError | None) -> None:
        self.request_duration.labels(node).observe(seconds)
        self.request_total.labels("true" if error is None else "false").inc()
        self.last_request.labels(node).set(time.time())
        self.tick_duration.observe(seconds)
        if error is not None:
            self.scrape_failures.labels(node, error.reason).inc()
            self._failure_reasons.setdefault(node, set()).add(error.reason)

    def forget_node(self, node: str) -> None:
        for metric in (self.request_duration, self.last_request):
            with contextlib.suppress(KeyError):
                metric.remove(node)
        for reason in self._failure_reasons.pop(node, ()):
            with contextlib.suppress(KeyError):
                self.scrape_failures.remove(node, reason)

    def watch_restart(self, resource: str, reason: str) -> None:
        self.watch_restarts.labels(resource, reason).inc()

    def observe_freshness(self, seconds: float) -> None:
        self.freshness.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _LiveCollector:
    """Gauges read at scrape time from the daemon's state."""

    def __init__(self, owner: SelfMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        daemon = self._owner._daemon
        if daemon is None:
            return
        nodes, containers = daemon.store.counts()
        points = GaugeMetricFamily(
            "metrics_server_storage_points",
            "Number of metrics points stored.",
            labels=["type"],
        )
        points.add_metric(["node"], nodes)
        points.add_metric(["container"], containers)
        yield points
        yield GaugeMetricFamily(
            "metrics_server_scrape_tasks",
            "Node scrape tasks alive (one per selected node).",
            value=len(daemon.manager.nodes),
        )
        yield GaugeMetricFamily(
            "metrics_server_pods_known",
            "Running pods known from the pod metadata watch.",
            value=len(daemon.pods),
        )
