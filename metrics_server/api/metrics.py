"""The Metrics API's resources: selectors, joins of cache and store, and rendering in every
negotiated form (JSON, YAML, protobuf; the object itself, a Table or PartialObjectMetadata).

`MetricsAPI` answers a parsed request (query and negotiated `Choice`) with bytes; it knows
nothing of HTTP frameworks, so it is tested directly and served by `api.app`. Objects follow
SPEC §5: lists are sorted (nodes by name, pods by namespace then name) and leave out objects
without complete metrics; a get of such an object is 404.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from metrics_server.api import protobuf, serialize, tables
from metrics_server.api.negotiate import JSON, PROTOBUF, Choice
from metrics_server.api.selectors import (
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from metrics_server.api.status import ApiError, bad_request, not_found
from metrics_server.models import NodeInfo, NodeUsage, PodInfo, PodUsage
from metrics_server.quantity import (
    format_cpu,
    format_go_duration,
    format_memory,
    format_timestamp,
)

API_VERSION = "metrics.k8s.io/v1beta1"
_VALUE_REQUIRED = frozenset({"=", "==", "in"})
"""Operators that only match pods carrying one of the listed values (index-friendly)."""
NODE_FIELDS = ("metadata.name",)
POD_FIELDS = ("metadata.name", "metadata.namespace")
JSON_CHOICE: Final = Choice(JSON)
_NO_QUERY: Final[Mapping[str, str]] = {}


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
    def with_label(self, namespace: str, key: str, values: Iterable[str]) -> list[PodInfo]: ...


InfoT = TypeVar("InfoT", NodeInfo, PodInfo)
UsageT = TypeVar("UsageT", NodeUsage, PodUsage)


@dataclass(frozen=True, slots=True)
class _Kind(Generic[InfoT, UsageT]):
    """How one resource renders in each form."""

    kind: str
    list_kind: str
    item: Callable[[InfoT, UsageT, str], dict[str, Any]]
    """JSON item (metadata, timestamp, window, usage) given the creationTimestamp text."""
    proto: Callable[[InfoT, UsageT, bytes], bytes]
    """Protobuf message given the encoded creationTimestamp field."""
    cells: Callable[[InfoT, UsageT], list[Any]]
    metadata: Callable[[InfoT, str], dict[str, Any]]
    """JSON metadata given the creationTimestamp text."""


class MetricsAPI:
    """Answers get and list of NodeMetrics and PodMetrics."""

    def __init__(
        self,
        store: Usages,
        nodes: Nodes,
        pods: Pods,
        node_selector: str = "",
        *,
        on_served: Callable[[list[float]], None] | None = None,
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._pods = pods
        self._node_selector = parse_label_selector(node_selector)
        self._on_served = on_served
        """Called once per answer with each served object's age in seconds (the freshness
        histogram): one call for a 150,000-pod list, not one per pod."""

    def _served(self, timestamps_ns: Iterable[int], now_ns: int) -> None:
        if self._on_served is not None:
            self._on_served([(now_ns - ts) / 1e9 for ts in timestamps_ns])

    # -- nodes -------------------------------------------------------------------------

    def get_node(
        self, name: str, query: Mapping[str, str] = _NO_QUERY, choice: Choice = JSON_CHOICE
    ) -> bytes:
        _check_view(choice, query, single=True)
        info = self._nodes.get(name)
        usage = self._store.node_usage(name) if info is not None else None
        if info is None or usage is None or not self._node_selector.matches(info.labels):
            raise not_found("nodemetrics", name)
        now_ns = time.time_ns()
        self._served((usage.timestamp,), now_ns)
        return _render_one(_NODE, info, usage, now_ns, choice, query)

    def list_nodes(self, query: Mapping[str, str], choice: Choice = JSON_CHOICE) -> bytes:
        _check_view(choice, query, single=False)
        labels = _label_selector(query)
        fields = _field_selector(query, NODE_FIELDS)
        now_ns = time.time_ns()
        selected: list[tuple[NodeInfo, NodeUsage]] = []
        for info in self._nodes.sorted():
            if not labels.matches(info.labels) or not self._node_selector.matches(info.labels):
                continue
            if fields is not None and not fields.matches({"metadata.name": info.name}):
                continue
            usage = self._store.node_usage(info.name)
            if usage is not None:
                selected.append((info, usage))
        self._served((u.timestamp for _, u in selected), now_ns)
        return _render_list(_NODE, selected, now_ns, choice, query)

    # -- pods --------------------------------------------------------------------------

    def get_pod(
        self,
        namespace: str,
        name: str,
        query: Mapping[str, str] = _NO_QUERY,
        choice: Choice = JSON_CHOICE,
    ) -> bytes:
        _check_view(choice, query, single=True)
        info = self._pods.get(namespace, name)
        usage = self._store.pod_usage(namespace, name) if info is not None else None
        if info is None or usage is None:
            raise not_found("podmetrics", f"{namespace}/{name}")
        now_ns = time.time_ns()
        self._served((usage.timestamp,), now_ns)
        return _render_one(_POD, info, usage, now_ns, choice, query)

    def _candidates(self, namespace: str | None, labels: LabelSelector) -> Iterable[PodInfo]:
        """Pods that may match: via the label index when the selector requires a value."""
        if namespace is None:
            return self._pods.all_sorted()
        best: list[PodInfo] | None = None
        for req in labels.requirements:
            if req.operator in _VALUE_REQUIRED:
                found = self._pods.with_label(namespace, req.key, req.values)
                if best is None or len(found) < len(best):
                    best = found
        return self._pods.in_namespace(namespace) if best is None else best

    def list_pods(
        self, namespace: str | None, query: Mapping[str, str], choice: Choice = JSON_CHOICE
    ) -> bytes:
        _check_view(choice, query, single=False)
        labels = _label_selector(query)
        fields = _field_selector(query, POD_FIELDS)
        now_ns = time.time_ns()
        pods = self._candidates(namespace, labels)
        pod_usage = self._store.pod_usage
        selected: list[tuple[PodInfo, PodUsage]] = []
        append = selected.append
        for info in pods:
            if not labels.empty and not labels.matches(info.labels):
                continue
            if fields is not None and not fields.matches(
                {"metadata.name": info.name, "metadata.namespace": info.namespace}
            ):
                continue
            usage = pod_usage(info.namespace, info.name)
            if usage is not None:
                append((info, usage))
        self._served((u.timestamp for _, u in selected), now_ns)
        return _render_list(_POD, selected, now_ns, choice, query)


# -- request checks ----------------------------------------------------------------------


def _check_view(choice: Choice, query: Mapping[str, str], *, single: bool) -> None:
    """Refuse views that cannot apply before doing any work, as kube-apiserver does."""
    conversion = choice.conversion
    if conversion is None:
        return
    if conversion.kind == "Table":
        tables.include_object(query)
    elif conversion.kind == "PartialObjectMetadata" and not single:
        raise ApiError(
            406,
            "NotAcceptable",
            "you requested PartialObjectMetadata, but the requested object is a list",
        )
    elif conversion.kind == "PartialObjectMetadataList" and single:
        raise ApiError(
            406,
            "NotAcceptable",
            "you requested PartialObjectMetadataList, but the requested object is not a list",
        )


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


# -- JSON items --------------------------------------------------------------------------

# Pods scraped from one kubelet share a timestamp, and formatting one is the costliest step of
# a JSON item; remembering recent texts makes long lists several times cheaper.
_TIMESTAMP_TEXTS_LIMIT: Final = 4096
_timestamp_texts: dict[int, str] = {}


def _timestamp(ns: int) -> str:
    seconds = ns // 1_000_000_000
    text = _timestamp_texts.get(seconds)
    if text is None:
        if len(_timestamp_texts) >= _TIMESTAMP_TEXTS_LIMIT:
            _timestamp_texts.clear()
        text = _timestamp_texts[seconds] = format_timestamp(ns)
    return text



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
        "timestamp": _timestamp(usage.timestamp),
        "window": format_go_duration(usage.window),
        "usage": {"cpu": format_cpu(usage.usage.cpu), "memory": format_memory(usage.usage.memory)},
    }


def _pod_item(info: PodInfo, usage: PodUsage, now: str) -> dict[str, Any]:
    return {
        "metadata": _metadata(info.name, info.namespace, info.labels, now),
        "timestamp": _timestamp(usage.timestamp),
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


# -- Table cells -------------------------------------------------------------------------


def _node_cells(info: NodeInfo, usage: NodeUsage) -> list[Any]:
    return [
        info.name,
        format_cpu(usage.usage.cpu),
        format_memory(usage.usage.memory),
        format_go_duration(usage.window),
    ]


def _pod_cells(info: PodInfo, usage: PodUsage) -> list[Any]:
    cpu = sum(c.usage.cpu for c in usage.containers)
    memory = sum(c.usage.memory for c in usage.containers)
    return [info.name, format_cpu(cpu), format_memory(memory), format_go_duration(usage.window)]


def _node_metadata(info: NodeInfo, now: str) -> dict[str, Any]:
    return _metadata(info.name, None, info.labels, now)


def _pod_metadata(info: PodInfo, now: str) -> dict[str, Any]:
    return _metadata(info.name, info.namespace, info.labels, now)


_NODE: Final[_Kind[NodeInfo, NodeUsage]] = _Kind(
    "NodeMetrics", "NodeMetricsList", _node_item, protobuf.node_metrics, _node_cells,
    _node_metadata,
)
_POD: Final[_Kind[PodInfo, PodUsage]] = _Kind(
    "PodMetrics", "PodMetricsList", _pod_item, protobuf.pod_metrics, _pod_cells, _pod_metadata
)


# -- rendering ---------------------------------------------------------------------------


def _render_one(
    kind: _Kind[InfoT, UsageT],
    info: InfoT,
    usage: UsageT,
    now_ns: int,
    choice: Choice,
    query: Mapping[str, str],
) -> bytes:
    conversion = choice.conversion
    if conversion is None:
        if choice.media_type == PROTOBUF:
            raw = kind.proto(info, usage, protobuf.creation_field(now_ns))
            return protobuf.envelope(API_VERSION, kind.kind, raw)
        doc = {"kind": kind.kind, "apiVersion": API_VERSION,
               **kind.item(info, usage, format_timestamp(now_ns))}
        return serialize.dumps(doc, choice.media_type, pretty=choice.pretty)
    return _render_converted(kind, [(info, usage)], now_ns, choice, query, single=True)


def _render_list(
    kind: _Kind[InfoT, UsageT],
    selected: list[tuple[InfoT, UsageT]],
    now_ns: int,
    choice: Choice,
    query: Mapping[str, str],
) -> bytes:
    if choice.conversion is None:
        if choice.media_type == PROTOBUF:
            creation = protobuf.creation_field(now_ns)
            proto = kind.proto
            raw = protobuf.list_message([proto(i, u, creation) for i, u in selected])
            return protobuf.envelope(API_VERSION, kind.list_kind, raw)
        now = format_timestamp(now_ns)
        item = kind.item
        doc = {
            "kind": kind.list_kind,
            "apiVersion": API_VERSION,
            "metadata": {},
            "items": [item(i, u, now) for i, u in selected],
        }
        return serialize.dumps(doc, choice.media_type, pretty=choice.pretty)
    return _render_converted(kind, selected, now_ns, choice, query, single=False)


def _render_converted(
    kind: _Kind[InfoT, UsageT],
    selected: list[tuple[InfoT, UsageT]],
    now_ns: int,
    choice: Choice,
    query: Mapping[str, str],
    *,
    single: bool,
) -> bytes:
    conversion = choice.conversion
    assert conversion is not None
    group_version = conversion.group_version
    now = format_timestamp(now_ns)
    metadata = kind.metadata
    if conversion.kind == "Table":
        include = tables.include_object(query)
        cells = kind.cells
        if include == tables.INCLUDE_METADATA:
            rows = [
                tables.row(cells(i, u), tables.partial(metadata(i, now), group_version))
                for i, u in selected
            ]
        elif include == tables.INCLUDE_OBJECT:
            item = kind.item
            rows = [
                tables.row(
                    cells(i, u), {"kind": kind.kind, "apiVersion": API_VERSION, **item(i, u, now)}
                )
                for i, u in selected
            ]
        else:
            rows = [tables.row(cells(i, u), None) for i, u in selected]
        doc = tables.table(rows, group_version)
        return serialize.dumps(doc, choice.media_type, pretty=choice.pretty)
    # PartialObjectMetadata for a get, PartialObjectMetadataList for a list (checked before).
    if choice.media_type == PROTOBUF:
        creation = protobuf.creation_field(now_ns)
        metas = [
            protobuf.partial_object_metadata(
                protobuf.object_meta(i.name, metadata(i, now).get("namespace"), i.labels, creation)
            )
            for i, _ in selected
        ]
        if single:
            return protobuf.envelope(group_version, "PartialObjectMetadata", metas[0])
        raw = protobuf.list_message(metas)
        return protobuf.envelope(group_version, "PartialObjectMetadataList", raw)
    partials = [tables.partial(metadata(i, now), group_version) for i, _ in selected]
    doc = partials[0] if single else tables.partial_list(partials, group_version)
    return serialize.dumps(doc, choice.media_type, pretty=choice.pretty)
