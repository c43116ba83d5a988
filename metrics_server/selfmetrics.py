"""Self-metrics on /metrics: upstream's names, types, labels, help and buckets, plus ours.

Upstream registers its metrics through k8s.io/component-base, which prefixes each help text
with the stability level ("[ALPHA] …"); we do the same so the exposition matches. A private
registry per daemon (tests run several). A node's series are removed when the node goes
away, so a cluster with churn does not grow /metrics forever (upstream keeps them).
"""

from __future__ import annotations

import bisect
import contextlib
import resource
import threading
import time
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from collections.abc import Iterator

    from metrics_server.scraper.kubelet import ScrapeError

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""prometheus.DefBuckets."""

ALPHA = "[ALPHA] "
"""component-base's help prefix for metrics of stability level ALPHA (all of upstream's)."""

_UINT64_MAX = float(2**64 - 1)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format upstream serves (and every Prometheus understands); newer
prometheus_client versions default to announcing 1.0.0 for the same bytes."""


def tick_buckets(resolution: float) -> tuple[float, ...]:
    """Upstream's `BucketsForScrapeDuration(resolution)` (pkg/utils/monitoring.go).

    Above the largest default bucket (10 s) it appends the point halfway from 10 s to the
    resolution, the resolution, 1.5× and 2× it; below, it inserts the resolution unless a
    default bucket is within the smallest bucket width of it.
    """
    buckets = list(DEFAULT_BUCKETS)
    largest = buckets[-1]
    if resolution > largest:
        halfway = largest + (resolution - largest) / 2
        buckets += [halfway, resolution, resolution * 1.5, resolution * 2.0]
    elif resolution < largest:
        i = next(i for i, b in enumerate(buckets) if b > resolution)
        close_above = buckets[i] - resolution < buckets[0]
        close_below = i > 0 and resolution - buckets[i - 1] < buckets[0]
        if close_above or close_below:
            return tuple(buckets)
        buckets.insert(i, resolution)
    return tuple(buckets)


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """prometheus.ExponentialBuckets, multiplied step by step as Go does (so the `le`
    values are the same floats, not `start * factor**i`, which differs in the last bits)."""
    out: list[float] = []
    for _ in range(count):
        out.append(start)
        start *= factor
    return tuple(out)


def freshness_buckets() -> tuple[float, ...]:
    return exponential_buckets(1.0, 1.364, 20)


class SelfMetrics:
    """Owns the registry and the hooks the scraper, watches and API call."""

    def __init__(self, resolution: float) -> None:
        # Go's client has no `_created` series; without this every counter and histogram
        # would grow an extra gauge family that upstream does not have.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "metrics_server_kubelet_request_duration_seconds",
            ALPHA + "Duration of requests to Kubelet API in seconds",
            ["node"],
            buckets=DEFAULT_BUCKETS,
            registry=r,
        )
        self.request_total = Counter(
            "metrics_server_kubelet_request_total",
            ALPHA + "Number of requests sent to Kubelet API",
            ["success"],
            registry=r,
        )
        self.last_request = Gauge(
            "metrics_server_kubelet_last_request_time_seconds",
            ALPHA + "Time of last request performed to Kubelet API since unix epoch in seconds",
            ["node"],
            registry=r,
        )
        # Upstream observes one tick over all nodes; each of our node tasks is its own
        # tick, so this is the time to collect and store one node.
        self.tick_duration = Histogram(
            "metrics_server_manager_tick_duration_seconds",
            ALPHA + "The total time spent collecting and storing metrics in seconds.",
            buckets=tick_buckets(resolution),
            registry=r,
        )
        self.freshness = BulkHistogram(
            "metrics_server_api_metric_freshness_seconds",
            ALPHA + "Freshness of metrics exported",
            freshness_buckets(),
        )
        r.register(self.freshness)
        self.scrape_failures = Counter(
            "metrics_server_scrape_failures_total",
            "Failed kubelet scrapes by node and reason (timeout, connect, tls_no_ip_san, "
            "http_403, ...).",
            ["node", "reason"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "metrics_server_watch_restarts_total",
            "Restarts of kube-apiserver list/watch loops by resource and reason "
            "(expired: 410 Gone, error: anything else).",
            ["resource", "reason"],
            registry=r,
        )
        self.auth_config_lookup_failures = Counter(
            "metrics_server_authentication_config_lookup_failures_total",
            "Failed reads and watches of kube-system/extension-apiserver-authentication by "
            "reason (timeout, connection, http_403, http_500, ..., invalid).",
            ["reason"],
            registry=r,
        )
        ProcessCollector(registry=r)
        r.register(_LiveCollector(self))
        self._live: LiveState | None = None
        self._failure_reasons: dict[str, set[str]] = {}

    def bind(self, live: LiveState) -> None:
        """Where the gauges read at scrape time come from (the daemon)."""
        self._live = live

    def observe_scrape(self, node: str, seconds: float, error: ScrapeError | None) -> None:
        self.request_duration.labels(node).observe(seconds)
        self.request_total.labels("true" if error is None else "false").inc()
        # Upstream sets whole seconds (time.Now().Unix()).
        self.last_request.labels(node).set(float(int(time.time())))
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

    def auth_config_lookup_failure(self, reason: str) -> None:
        self.auth_config_lookup_failures.labels(reason).inc()

    def observe_freshness(self, ages: list[float]) -> None:
        """The ages, in seconds, of every object one API answer served."""
        self.freshness.observe_many(ages)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE


class LiveState(Protocol):
    """State read when /metrics is scraped; the daemon provides it."""

    def storage_points(self) -> tuple[int, int]: ...
    def scrape_tasks_alive(self) -> int: ...
    def pods_known(self) -> int: ...


class BulkHistogram:
    """A histogram fed a batch of observations at a time.

    The freshness histogram observes one value per served object, 150,000 for a cluster-wide
    pod list at 5,000 nodes; prometheus_client's Histogram takes a lock and walks the bucket
    list per value (13 % of such a request's time in a py-spy profile). Here a batch costs
    one lock and a bisect per value. Exposition is the same as a Histogram's.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)
        """Per bucket, not cumulative; the last is above the largest bound (+Inf)."""
        self._sum = 0.0
        self._lock = threading.Lock()  # /metrics may be rendered while a batch is counted

    def observe_many(self, values: list[float]) -> None:
        if not values:
            return
        counts, bounds, where = self._counts, self._bounds, bisect.bisect_left
        with self._lock:
            for value in values:
                counts[where(bounds, value)] += 1  # `le`: a value equal to a bound is in it
            self._sum += sum(values)

    def describe(self) -> list[HistogramMetricFamily]:
        return []

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(self._name, self._doc, buckets=cumulative, sum_value=total)


class _LiveCollector:
    """Gauges read at scrape time from the daemon's state."""

    def __init__(self, owner: SelfMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Go's process collector also reports the address-space limit; Python's does not.
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        yield GaugeMetricFamily(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            value=_UINT64_MAX if limit == resource.RLIM_INFINITY else float(limit),
        )
        live = self._owner._live
        if live is None:
            return
        nodes, containers = live.storage_points()
        points = GaugeMetricFamily(
            "metrics_server_storage_points",
            ALPHA + "Number of metrics points stored.",
            labels=["type"],
        )
        points.add_metric(["node"], nodes)
        points.add_metric(["container"], containers)
        yield points
        yield GaugeMetricFamily(
            "metrics_server_scrape_tasks",
            "Node scrape tasks running: one per selected node, plus those of removed "
            "nodes that have not exited yet.",
            value=live.scrape_tasks_alive(),
        )
        yield GaugeMetricFamily(
            "metrics_server_pods_known",
            "Running pods known from the pod metadata watch.",
            value=live.pods_known(),
        )
