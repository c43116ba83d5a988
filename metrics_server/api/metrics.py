"""The Metrics API's resources: selectors, joins of cache and store, and JSON rendering.

`MetricsAPI` answers a parsed request with bytes; it knows nothing of HTTP frameworks,
so it is tested directly and served by `api.app`. Objects follow SPEC §5: lists are
sorted (nodes by name, pods by namespace then name) and leave out objects without
complete metrics; a get of such an object is 404.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from metrics_server.api.selectors import (
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from metrics_server.api.status import bad_request, not_found
from metrics_server.models import NodeInfo, NodeUsage, PodInfo, PodUsage
from metrics_server.quantity import (
    format_cpu,
    format_go_duration,
    format_memory,
    format_timestamp,
)

API_VERSION = "metrics.k8s.io/v1beta1"
NODE_FIELDS = ("metadata.name",)
POD_FIELDS = ("metadata.name", "metadata.namespace")


class Usages(Protocol):
    """Read side of the store."""

    def node_usage(self, name: str) -> NodeUsage | None: ...
    def pod_usage(self, namespace: str, name: str) -> PodUsage | None: ...


class Nodes(Protocol):
    def get(self, name: str) -> NodeInfo | None: ...
    def sorted(self) -> list[NodeInfo]: ...


class Pods(Protocol):
    def get(self, namespace: str, name: str) -> PodInfo | None: ...
    def in_namespace(self, namespace: str) -> Iterable[PodInfo]: ...
    def all_sorted(self) -> Iterable[PodInfo]: ...


class MetricsAPI:
    """Answers get and list of NodeMetrics and PodMetrics."""

    def __init__(
        self,
        store: Usages,
        nodes: Nodes,
        pods: Pods,
        node_selector: str = "",
        *,
        on_served: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._pods = pods
        self._node_selector = parse_label_selector(node_selector)
        self._on_served = on_served
        """Called with each served object's age in seconds (the freshness histogram)."""

    def _served(self, timestamp_ns: int, now_ns: int) -> None:
        if self._on_served is not None:
            self._on_served((now_ns - timestamp_ns) / 1e9)

    # -- nodes -------------------------------------------------------------------------

    def get_node(self, name: str) -> bytes:
        info = self._nodes.get(name)
        usage = self._store.node_usage(name) if info is not None else None
        if info is None or usage is None or not self._node_selector.matches(info.labels):
            raise not_found("nodemetrics", name)
        now_ns = time.time_ns()
        self._served(usage.timestamp, now_ns)
        item = _node_item(info, usage, format_timestamp(now_ns))
        item = {"kind": "NodeMetrics", "apiVersion": API_VERSION, **item}
        return orjson.dumps(item)

    def list_nodes(self, query: Mapping[str, str]) -> bytes:
        labels = _label_selector(query)
        fields = _field_selector(query, NODE_FIELDS)
        now_ns = time.time_ns()
        now = format_timestamp(now_ns)
        items = []
        for info in self._nodes.sorted():
            if not labels.matches(info.labels) or not self._node_selector.matches(info.labels):
                continue
            if fields is not None and not fields.matches({"metadata.name": info.name}):
                continue
            usage = self._store.node_usage(info.name)
            if usage is not None:
                self._served(usage.timestamp, now_ns)
                items.append(_node_item(info, usage, now))
        return _list("NodeMetricsList", items)

    # -- pods --------------------------------------------------------------------------

    def get_pod(self, namespace: str, name: str) -> bytes:
        info = self._pods.get(namespace, name)
        usage = self._store.pod_usage(namespace, name) if info is not None else None
        if info is None or usage is None:
            raise not_found("podmetrics", f"{namespace}/{name}")
        now_ns = time.time_ns()
        self._served(usage.timestamp, now_ns)
        item = _pod_item(info, usage, format_timestamp(now_ns))
        return orjson.dumps({"kind": "PodMetrics", "apiVersion": API_VERSION, **item})

    def list_pods(self, namespace: str | None, query: Mapping[str, str]) -> bytes:
        labels = _label_selector(query)
        fields = _field_selector(query, POD_FIELDS)
        now_ns = time.time_ns()
        now = format_timestamp(now_ns)
        pods = self._pods.all_sorted() if namespace is None else self._pods.in_namespace(namespace)
        pod_usage = self._store.pod_usage
        items = []
        for info in pods:
            if not labels.empty and not labels.matches(info.labels):
                continue
            if fields is not None and not fields.matches(
                {"metadata.name": info.name, "metadata.namespace": info.namespace}
            ):
                continue
            usage = pod_usage(info.namespace, info.name)
            if usage is not None:
                self._served(usage.timestamp, now_ns)
                items.append(_pod_item(info, usage, now))
        return _list("PodMetricsList", items)


def _label_selector(query: Mapping[str, str]) -> LabelSelector:
    text = query.get("labelSelector", "")
    try:
        return parse_label_selector(text)
    except SelectorError as exc:
        raise bad_request(f'unable to parse labelSelector "{text}": {exc}') from None


def _field_selector(query: Mapping[str, str], allowed: tuple[str, ...]) -> Any:
    text = query.get("fieldSelector", "")
    if not text.strip():
        return None
    try:
        return parse_field_selector(text, allowed)
    except SelectorError as exc:
        raise bad_request(f'unable to parse fieldSelector "{text}": {exc}') from None


def _metadata(name: str, namespace: str | None, labels: dict[str, str], now: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["creationTimestamp"] = now
    if labels:
        meta["labels"] = labels
    return meta


def _node_item(info: NodeInfo, usage: NodeUsage, now: str) -> dict[str, Any]:
    return {
        "metadata": _metadata(info.name, None, info.labels, now),
        "timestamp": format_timestamp(usage.timestamp),
        "window": format_go_duration(usage.window),
        "usage": {"cpu": format_cpu(usage.usage.cpu), "memory": format_memory(usage.usage.memory)},
    }


def _pod_item(info: PodInfo, usage: PodUsage, now: str) -> dict[str, Any]:
    return {
        "metadata": _metadata(info.name, info.namespace, info.labels, now),
        "timestamp": format_timestamp(usage.timestamp),
        "window": format_go_duration(usage.window),
        "containers": [
            {
                "name": c.name,
                "usage": {
                    "cpu": format_cpu(c.usage.cpu),
                    "memory": format_memory(c.usage.memory),
                },
            }
            for c in usage.containers
        ],
    }


def _list(kind: str, items: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"kind": kind, "apiVersion": API_VERSION, "metadata": {}, "items": items})
