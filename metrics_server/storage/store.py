"""The metrics store: per node, the last and previous points of the node and of its pods'
containers, and the usages they yield: a node's at each scrape, a pod's at its first read
after a scrape (then cached), so repeated queries are lookups.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from metrics_server.models import (
    TIMESTAMP,
    MetricsPoint,
    NodeMetricsBatch,
    NodeUsage,
    PodKey,
    PodUsage,
)
from metrics_server.storage.rates import container_prev, node_prev, pod_usage, resource_usage

__all__ = ["MetricsStore"]


_Series = tuple[str, MetricsPoint, MetricsPoint | None]
"""One container's (name, last, prev); a plain tuple for the reason given at MetricsPoint."""


class _Pod:
    """One pod's series (sorted by container name) and, once asked for, its usage.

    Usage is computed on first read, not at every scrape: between two scrapes most pods are
    never queried, and the result is a pure function of the series, which never change.
    """

    __slots__ = ("_computed", "_usage", "prevs", "series")

    def __init__(self, series: tuple[_Series, ...], prevs: int) -> None:
        self.series = series
        # How many of `series` have a prev, for the storage_points gauge and readiness.
        self.prevs = prevs
        self._usage: PodUsage | None = None
        self._computed = False

    @property
    def usage(self) -> PodUsage | None:
        if not self._computed:
            self._usage = pod_usage(self.series)
            self._computed = True
        return self._usage


@dataclass(slots=True, frozen=True)
class _NodeState:
    """Everything one node's last scrape left behind; never mutated once published."""

    last: MetricsPoint | None
    prev: MetricsPoint | None
    usage: NodeUsage | None
    pods: Mapping[PodKey, _Pod]
    container_prevs: int


_EMPTY_PODS: Mapping[PodKey, _Pod] = {}


class MetricsStore:
    """Points and usages of every scraped node and of the pods each node reported.

    Every method is synchronous and never awaits, so under trio each call is atomic with
    respect to other tasks and a reader never sees half an update. The shared dicts are
    still guarded by a `threading.Lock` (uncontended, hence cheap) so the store stays
    correct if a query is ever served from a worker thread. A node's results are
    replaced by swapping one reference to an immutable `_NodeState`.

    A pod belongs to the node whose scrape last reported it: a report from another node
    moves it there, and the old node's state is rebuilt without it.
    """

    __slots__ = (
        "_container_prevs",
        "_lock",
        "_node_prevs",
        "_nodes",
        "_nodes_with_usage",
        "_owner",
        "_resolution_ns",
    )

    def __init__(self, resolution_ns: int) -> None:
        self._resolution_ns = resolution_ns
        self._lock = threading.Lock()
        self._nodes: dict[str, _NodeState] = {}
        self._owner: dict[PodKey, str] = {}
        # Running totals so counts() and ready() are O(1) on the probe and gauge paths.
        self._node_prevs = 0
        self._container_prevs = 0
        self._nodes_with_usage = 0

    def store_node(self, name: str, batch: NodeMetricsBatch) -> None:
        """Record one successful scrape of node `name`; its pods absent from `batch` are
        forgotten."""
        with self._lock:
            old = self._nodes.get(name)
            old_pods = old.pods if old is not None else _EMPTY_PODS

            last = batch.node
            prev: MetricsPoint | None = None
            usage: NodeUsage | None = None
            if last is not None and old is not None:
                prev = node_prev(last, old.last, old.prev)
                if prev is not None:
                    computed = resource_usage(last, prev)
                    if computed is not None:
                        usage = NodeUsage(
                            timestamp=last[TIMESTAMP], window=computed[1], usage=computed[0]
                        )

            pods: dict[PodKey, _Pod] = {}
            moved: dict[str, list[PodKey]] = {}
            container_prevs = 0
            for key, containers in batch.pods.items():
                owner = self._owner.get(key)
                if owner is None:
                    before = None
                elif owner == name:
                    before = old_pods.get(key)
                else:
                    before = self._nodes[owner].pods.get(key)
                    moved.setdefault(owner, []).append(key)
                pod = self._next_pod(containers, before)
                pods[key] = pod
                container_prevs += pod.prevs

            for owner, keys in moved.items():
                self._publish(owner, _without(self._nodes[owner], keys))
            for key in old_pods:
                if key not in pods:
                    del self._owner[key]
            for key in pods:
                self._owner[key] = name
            self._publish(
                name,
                _NodeState(
                    last=last,
                    prev=prev,
                    usage=usage,
                    pods=pods,
                    container_prevs=container_prevs,
                ),
            )

    def drop_node(self, name: str) -> None:
        """Forget node `name` and every pod it reported (failed scrape or deleted node)."""
        with self._lock:
            old = self._nodes.get(name)
            if old is None:
                return
            for key in old.pods:
                del self._owner[key]
            self._publish(name, None)

    def node_usage(self, name: str) -> NodeUsage | None:
        with self._lock:
            state = self._nodes.get(name)
            return state.usage if state is not None else None

    def pod_usage(self, namespace: str, name: str) -> PodUsage | None:
        key = (namespace, name)
        with self._lock:
            owner = self._owner.get(key)
            if owner is None:
                return None
            return self._nodes[owner].pods[key].usage

    def ready(self) -> bool:
        """Upstream's readiness: some node and some pod container have a prev point.

        It is about prev points, not computable usage, exactly as upstream.
        """
        with self._lock:
            return self._node_prevs > 0 and self._container_prevs > 0

    def counts(self) -> tuple[int, int]:
        """(node points, container points) that have a prev, as upstream's
        metrics_server_storage_points gauge counts them."""
        with self._lock:
            return self._node_prevs, self._container_prevs

    def nodes_with_usage(self) -> int:
        with self._lock:
            return self._nodes_with_usage

    def _next_pod(self, containers: Mapping[str, MetricsPoint], before: _Pod | None) -> _Pod:
        resolution = self._resolution_ns
        names = sorted(containers) if len(containers) > 1 else list(containers)
        olds = before.series if before is not None else ()
        # The container set rarely changes, so pair by position and fall back to names.
        if len(olds) != len(names) or any(
            o[0] != n for o, n in zip(olds, names, strict=True)
        ):
            by_name = {o[0]: o for o in olds}
            paired = [by_name.get(n) for n in names]
        else:
            paired = list(olds)
        series: list[_Series] = []
        prevs = 0
        for cname, stored in zip(names, paired, strict=True):
            point = containers[cname]
            if stored is None:
                prev = container_prev(point, None, None, resolution)
            else:
                prev = container_prev(point, stored[1], stored[2], resolution)
            if prev is not None:
                prevs += 1
            series.append((cname, point, prev))
        return _Pod(tuple(series), prevs)

    def _publish(self, name: str, state: _NodeState | None) -> None:
        """Swap node `name`'s state (None removes it), keeping the running totals."""
        old = self._nodes.get(name)
        if old is not None:
            self._node_prevs -= old.prev is not None
            self._container_prevs -= old.container_prevs
            self._nodes_with_usage -= old.usage is not None
        if state is None:
            self._nodes.pop(name, None)
            return
        self._nodes[name] = state
        self._node_prevs += state.prev is not None
        self._container_prevs += state.container_prevs
        self._nodes_with_usage += state.usage is not None


def _without(state: _NodeState, keys: list[PodKey]) -> _NodeState:
    gone = set(keys)
    pods = {key: pod for key, pod in state.pods.items() if key not in gone}
    return _NodeState(
        last=state.last,
        prev=state.prev,
        usage=state.usage,
        pods=pods,
        container_prevs=sum(pod.prevs for pod in pods.values()),
    )
