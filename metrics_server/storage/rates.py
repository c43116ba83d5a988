"""Pure rate arithmetic behind the store (SPEC §4): which earlier point a new sample is
measured against, and the CPU rate, memory and window that pair of points yields.
"""

from __future__ import annotations

from collections.abc import Iterable

from metrics_server.models import (
    CUMULATIVE_CPU,
    MEMORY,
    START_TIME,
    TIMESTAMP,
    ContainerUsage,
    MetricsPoint,
    PodUsage,
    ResourceUsage,
)

__all__ = [
    "FRESH_CONTAINER_MIN_NS",
    "NS_PER_SECOND",
    "container_prev",
    "node_prev",
    "pod_usage",
    "resource_usage",
]

NS_PER_SECOND = 1_000_000_000

FRESH_CONTAINER_MIN_NS = 10 * NS_PER_SECOND
"""Below this age a container's rate since its start is too noisy to serve (upstream's 10 s)."""


def node_prev(
    new: MetricsPoint, old_last: MetricsPoint | None, old_prev: MetricsPoint | None
) -> MetricsPoint | None:
    """The point `new` is measured against, given what was stored before it arrived.

    A later sample pushes the old `last` back; a sample that is not later (a kubelet
    serving a cached or clock-skewed value) keeps the old `prev` only while that is still
    strictly older than `new`, so the window stays positive.
    """
    if old_last is None:
        return None
    if new[TIMESTAMP] > old_last[TIMESTAMP]:
        return old_last
    if old_prev is not None and old_prev[TIMESTAMP] < new[TIMESTAMP]:
        return old_prev
    return None


def container_prev(
    new: MetricsPoint,
    old_last: MetricsPoint | None,
    old_prev: MetricsPoint | None,
    resolution_ns: int,
) -> MetricsPoint | None:
    """Like `node_prev`, but aware of container starts and restarts.

    A container younger than one resolution (and at least 10 s old) is measured from its
    start with zero CPU, so it is served after its first scrape instead of its second.
    A start time at or after the old `last` sample means the container restarted and its
    cumulative counter began again, so the old points are worthless.
    """
    age = new[TIMESTAMP] - new[START_TIME]
    if new[START_TIME] < new[TIMESTAMP] and FRESH_CONTAINER_MIN_NS <= age < resolution_ns:
        # Measured from the start: (start_time, timestamp = start_time, cpu 0, memory).
        return (new[START_TIME], new[START_TIME], 0, new[MEMORY])
    if old_last is None or not new[START_TIME] < old_last[TIMESTAMP]:
        return None
    return node_prev(new, old_last, old_prev)


def resource_usage(last: MetricsPoint, prev: MetricsPoint) -> tuple[ResourceUsage, int] | None:
    """(usage, window in ns) between two points, or None when they cannot be compared.

    A start time or a cumulative CPU that went down means the counter was reset under us;
    upstream skips such a series rather than report a negative or bogus rate.
    """
    if last[START_TIME] < prev[START_TIME] or last[CUMULATIVE_CPU] < prev[CUMULATIVE_CPU]:
        return None
    window = last[TIMESTAMP] - prev[TIMESTAMP]
    if window <= 0:
        # The prev rules above never allow this; refuse rather than divide by zero.
        return None
    # Exact integer arithmetic, truncating like upstream's conversion to uint64.
    cpu = (last[CUMULATIVE_CPU] - prev[CUMULATIVE_CPU]) * NS_PER_SECOND // window
    return ResourceUsage(cpu=cpu, memory=last[MEMORY]), window


def pod_usage(
    containers: Iterable[tuple[str, MetricsPoint, MetricsPoint | None]],
) -> PodUsage | None:
    """A pod's usage from its containers' (name, last, prev), given in name order.

    The pod is served only when every container has a `prev`; a container whose usage
    cannot be computed is left out while the others are still served. The pod's
    timestamp and window are those of the container with the earliest `last` timestamp
    (the first by name among equals). A pod left with no container at all is not served.
    """
    served: list[ContainerUsage] = []
    timestamp = 0
    window = 0
    for name, last, prev in containers:
        if prev is None:
            return None
        computed = resource_usage(last, prev)
        if computed is None:
            continue
        usage, container_window = computed
        if not served or last[TIMESTAMP] < timestamp:
            timestamp = last[TIMESTAMP]
            window = container_window
        served.append(ContainerUsage(name=name, usage=usage))
    if not served:
        return None
    return PodUsage(timestamp=timestamp, window=window, containers=tuple(served))
