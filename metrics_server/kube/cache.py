"""Node and pod caches fed by watches; they keep only what scraping and the API use.

Objects are reduced on arrival to `NodeInfo` / `PodInfo` (no managedFields, no
annotations, no spec), with label strings interned because thousands of pods share them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from metrics_server.models import NodeInfo, PodInfo, PodKey

METRICS_PATH_ANNOTATION = "metrics.k8s.io/resource-metrics-path"

NodeListener = Callable[[str, NodeInfo | None], None]
"""Called with (name, info) when a node appears or changes, (name, None) when it goes."""


def _labels(meta: dict[str, Any]) -> dict[str, str]:
    raw = meta.get("labels") or {}
    if not isinstance(raw, dict):
        return {}
    intern = sys.intern
    return {intern(str(k)): intern(str(v)) for k, v in raw.items()}


def node_info(obj: dict[str, Any]) -> NodeInfo | None:
    """Reduce a Node object; None if it has no name."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    status = obj.get("status") or {}
    addresses = tuple(
        (str(a.get("type", "")), str(a.get("address", "")))
        for a in status.get("addresses") or ()
        if isinstance(a, dict)
    )
    endpoint = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    try:
        port = int(endpoint or 0)
    except (TypeError, ValueError):
        port = 0
    annotations = meta.get("annotations") or {}
    path = annotations.get(METRICS_PATH_ANNOTATION) if isinstance(annotations, dict) else None
    return NodeInfo(
        name=str(name),
        labels=_labels(meta),
        addresses=addresses,
        kubelet_port=port,
        metrics_path=str(path) if path else None,
    )


class NodeCache:
    """Nodes selected by `--node-selector`, by name; tells a listener about changes."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}
        self._listeners: list[NodeListener] = []

    def subscribe(self, listener: NodeListener) -> None:
        self._listeners.append(listener)
        for name, info in self._nodes.items():
            listener(name, info)

    def _notify(self, name: str, info: NodeInfo | None) -> None:
        for listener in self._listeners:
            listener(name, info)

    @staticmethod
    def compact(obj: dict[str, Any]) -> NodeInfo | None:
        """What a listed object becomes, kept while the rest of the list arrives."""
        return node_info(obj)

    def replace(self, objects: list[dict[str, Any]]) -> None:
        self.replace_compact([n for n in map(node_info, objects) if n is not None])

    def replace_compact(self, infos: list[NodeInfo]) -> None:
        fresh = {n.name: n for n in infos}
        for name in [n for n in self._nodes if n not in fresh]:
            del self._nodes[name]
            self._notify(name, None)
        for name, info in fresh.items():
            if self._nodes.get(name) != info:
                self._nodes[name] = info
                self._notify(name, info)

    def upsert(self, obj: dict[str, Any]) -> None:
        info = node_info(obj)
        if info is not None and self._nodes.get(info.name) != info:
            self._nodes[info.name] = info
            self._notify(info.name, info)

    def delete(self, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if name in self._nodes:
            del self._nodes[name]
            self._notify(name, None)

    def get(self, name: str) -> NodeInfo | None:
        return self._nodes.get(name)

    def __len__(self) -> int:
        return len(self._nodes)

    def sorted(self) -> list[NodeInfo]:
        return [self._nodes[k] for k in sorted(self._nodes)]


def pod_info(obj: dict[str, Any]) -> PodInfo | None:
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        return None
    return PodInfo(
        namespace=sys.intern(str(namespace)), name=str(name), labels=_labels(meta)
    )


class PodCache:
    """Running pods' metadata by namespace, with a per-namespace label index.

    The index maps (namespace, label key, label value) to pod names, so an HPA-style query
    (`app=web,pod-template-hash=…` in one namespace) looks at its ~10 candidates instead of
    matching every pod of the namespace.
    """

    def __init__(self) -> None:
        self._by_ns: dict[str, dict[str, PodInfo]] = {}
        self._index: dict[tuple[str, str, str], set[str]] = {}
        self._count = 0

    @staticmethod
    def compact(obj: dict[str, Any]) -> PodInfo | None:
        """What a listed object becomes, kept while the rest of the list arrives."""
        return pod_info(obj)

    def replace(self, objects: list[dict[str, Any]]) -> None:
        self.replace_compact([p for p in map(pod_info, objects) if p is not None])

    def replace_compact(self, infos: list[PodInfo]) -> None:
        by_ns: dict[str, dict[str, PodInfo]] = {}
        index: dict[tuple[str, str, str], set[str]] = {}
        count = 0
        for info in infos:
            pods = by_ns.setdefault(info.namespace, {})
            old = pods.get(info.name)
            if old is not None:
                _unindex(index, old)
            else:
                count += 1
            pods[info.name] = info
            _index(index, info)
        self._by_ns, self._index, self._count = by_ns, index, count

    def upsert(self, obj: dict[str, Any]) -> None:
        info = pod_info(obj)
        if info is None:
            return
        pods = self._by_ns.setdefault(info.namespace, {})
        old = pods.get(info.name)
        if old is None:
            self._count += 1
        elif old.labels != info.labels:
            _unindex(self._index, old)
        pods[info.name] = info
        if old is None or old.labels != info.labels:
            _index(self._index, info)

    def delete(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        pods = self._by_ns.get(meta.get("namespace", ""))
        if pods is None:
            return
        old = pods.pop(meta.get("name", ""), None)
        if old is not None:
            self._count -= 1
            _unindex(self._index, old)
            if not pods:
                del self._by_ns[old.namespace]

    def with_label(self, namespace: str, key: str, values: Iterable[str]) -> list[PodInfo]:
        """Pods of `namespace` whose label `key` has one of `values`, sorted by name."""
        pods = self._by_ns.get(namespace)
        if pods is None:
            return []
        names: set[str] = set()
        for value in values:
            names |= self._index.get((namespace, key, value), set())
        return [pods[n] for n in sorted(names)]

    def get(self, namespace: str, name: str) -> PodInfo | None:
        pods = self._by_ns.get(namespace)
        return pods.get(name) if pods is not None else None

    def in_namespace(self, namespace: str) -> Iterable[PodInfo]:
        """Pods of one namespace, sorted by name."""
        pods = self._by_ns.get(namespace) or {}
        return [pods[k] for k in sorted(pods)]

    def all_sorted(self) -> Iterator[PodInfo]:
        """Every pod, sorted by namespace then name."""
        for ns in sorted(self._by_ns):
            pods = self._by_ns[ns]
            for name in sorted(pods):
                yield pods[name]

    def keys(self) -> Iterator[PodKey]:
        for ns, pods in self._by_ns.items():
            for name in pods:
                yield (ns, name)

    def __len__(self) -> int:
        return self._count


def _index(index: dict[tuple[str, str, str], set[str]], info: PodInfo) -> None:
    for key, value in info.labels.items():
        index.setdefault((info.namespace, key, value), set()).add(info.name)


def _unindex(index: dict[tuple[str, str, str], set[str]], info: PodInfo) -> None:
    for key, value in info.labels.items():
        entry = (info.namespace, key, value)
        names = index.get(entry)
        if names is not None:
            names.discard(info.name)
            if not names:
                del index[entry]
