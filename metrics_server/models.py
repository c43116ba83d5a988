"""Plain data shared by the scraper, the store and the API; imports nothing internal.

All times are integer nanoseconds since the Unix epoch and all CPU figures integer
nanoseconds (cumulative) or nanocores (rates), so rate arithmetic is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

PodKey = tuple[str, str]
"""(namespace, name) of a pod."""


MetricsPoint = tuple[int, int, int, int]
"""One sample of a node or a container as the kubelet reported it:
(start_time, timestamp, cumulative_cpu, memory), read with the index constants below.

start_time: when the container (or node) started, ns since epoch, 0 when unknown;
timestamp: when the sample was taken, ns since epoch; cumulative_cpu: CPU time used since
start, ns; memory: working set, bytes.

A plain tuple on purpose. The store holds about 100 points per node and replaces them every
scrape; CPython's cyclic GC stops tracking an exact tuple of ints at its first collection but
never a tuple subclass, so as a NamedTuple every point was walked by every full collection
(1 s pauses at 5,000 nodes; see docs/BENCHMARKS.md). A tuple is also built faster than any
class instance, which matters in the decoder.
"""

START_TIME: Final = 0
TIMESTAMP: Final = 1
CUMULATIVE_CPU: Final = 2
MEMORY: Final = 3


def metrics_point(
    *, start_time: int, timestamp: int, cumulative_cpu: int, memory: int
) -> MetricsPoint:
    """A MetricsPoint with its fields named, for readability where speed does not matter."""
    return (start_time, timestamp, cumulative_cpu, memory)


@dataclass(slots=True)
class NodeMetricsBatch:
    """What one scrape of one kubelet yielded, already cleaned per SPEC §3.

    `node` is None when the node-level series were missing or zero. `pods` only holds
    pods all of whose containers had non-zero CPU and memory.
    """

    node: MetricsPoint | None
    pods: dict[PodKey, dict[str, MetricsPoint]] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ResourceUsage:
    """A computed usage: CPU in nanocores, memory in bytes."""

    cpu: int
    memory: int


@dataclass(slots=True, frozen=True)
class NodeUsage:
    """A node's served metrics."""

    timestamp: int
    """Timestamp of the last point, ns since epoch."""
    window: int
    """last − prev timestamps, ns."""
    usage: ResourceUsage


@dataclass(slots=True, frozen=True)
class ContainerUsage:
    name: str
    usage: ResourceUsage


@dataclass(slots=True, frozen=True)
class PodUsage:
    """A pod's served metrics; containers sorted by name."""

    timestamp: int
    window: int
    containers: tuple[ContainerUsage, ...]


@dataclass(slots=True, frozen=True)
class NodeInfo:
    """What the node watch keeps of a Node: only what scraping and the API need."""

    name: str
    labels: dict[str, str]
    addresses: tuple[tuple[str, str], ...]
    """(type, address) pairs from status.addresses, in the node's order."""
    kubelet_port: int
    """status.daemonEndpoints.kubeletEndpoint.Port (0 when absent)."""
    metrics_path: str | None = None
    """The `metrics.k8s.io/resource-metrics-path` annotation, if set."""


@dataclass(slots=True, frozen=True)
class PodInfo:
    """What the pod metadata watch keeps of a Pod."""

    namespace: str
    name: str
    labels: dict[str, str]
