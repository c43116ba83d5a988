"""MetricsAPI rendering: the object, PartialObjectMetadata and YAML views; view checks.

Also the fake caches and store the other test_api_* modules build a MetricsAPI from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import orjson
import pytest
import yaml

from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.negotiate import JSON, PROTOBUF, YAML, Choice, Conversion
from metrics_server.api.status import ApiError
from metrics_server.models import (
    ContainerUsage,
    NodeInfo,
    NodeUsage,
    PodInfo,
    PodUsage,
    ResourceUsage,
)

SECOND = 1_000_000_000
NOW_NS = 1_717_171_717 * SECOND + 123_456_789
"""The request time the tests pin (`pin_clock`)."""


class FakeNodes:
    def __init__(self, infos: Iterable[NodeInfo]) -> None:
        self.infos = {i.name: i for i in infos}

    def get(self, name: str) -> NodeInfo | None:
        return self.infos.get(name)

    def sorted(self) -> list[NodeInfo]:
        return [self.infos[n] for n in sorted(self.infos)]


class FakePods:
    def __init__(self, infos: Iterable[PodInfo]) -> None:
        self.infos = {(i.namespace, i.name): i for i in infos}

    def get(self, namespace: str, name: str) -> PodInfo | None:
        return self.infos.get((namespace, name))

    def in_namespace(self, namespace: str) -> Iterable[PodInfo]:
        return [self.infos[k] for k in sorted(self.infos) if k[0] == namespace]

    def all_sorted(self) -> Iterator[PodInfo]:
        return (self.infos[k] for k in sorted(self.infos))

    def with_label(self, namespace: str, key: str, values: Iterable[str]) -> list[PodInfo]:
        wanted = set(values)
        return [p for p in self.in_namespace(namespace) if p.labels.get(key) in wanted]


class FakeStore:
    def __init__(
        self, nodes: dict[str, NodeUsage], pods: dict[tuple[str, str], PodUsage]
    ) -> None:
        self.nodes = nodes
        self.pods = pods

    def node_usage(self, name: str) -> NodeUsage | None:
        return self.nodes.get(name)

    def pod_usage(self, namespace: str, name: str) -> PodUsage | None:
        return self.pods.get((namespace, name))


def containers(*usages: tuple[str, int, int]) -> tuple[ContainerUsage, ...]:
    return tuple(ContainerUsage(n, ResourceUsage(cpu, memory)) for n, cpu, memory in usages)


def make_api() -> MetricsAPI:
    """Two nodes and three pods with awkward values: large, tiny, non-round, multi-container."""
    nodes = [
        NodeInfo("n1", {"kubernetes.io/hostname": "n1", "zone": "a"}, (), 10250),
        NodeInfo("n2", {}, (), 10250),
    ]
    node_usage = {
        "n1": NodeUsage(
            NOW_NS - 3 * SECOND, 15_692_000_000, ResourceUsage(311_155_148, 2_950_160_384)
        ),
        "n2": NodeUsage(NOW_NS - 70 * SECOND, 60 * SECOND, ResourceUsage(4 * SECOND, 1000)),
    }
    pods = [
        PodInfo("default", "web-1", {"app": "web", "tier": "front"}),
        PodInfo("kube-system", "coredns-558bd4d5db-4dpjz", {"k8s-app": "kube-dns"}),
        PodInfo("default", "batch", {}),
        PodInfo("default", "pending", {"app": "web"}),  # no metrics yet
    ]
    pod_usage = {
        ("default", "web-1"): PodUsage(
            NOW_NS - 5 * SECOND,
            15 * SECOND,
            containers(("app", 500_000_000, 5 << 20), ("sidecar", 600_000_001, 10 << 20)),
        ),
        ("kube-system", "coredns-558bd4d5db-4dpjz"): PodUsage(
            NOW_NS - 1 * SECOND, 1_500_000, containers(("coredns", 4_710_169, 12_533_760))
        ),
        ("default", "batch"): PodUsage(
            NOW_NS - 9 * SECOND,
            14_999_999_999,
            containers(("a", 1, 1023), ("b", 999_999_999, 1), ("c", 1, 1 << 40)),
        ),
    }
    return MetricsAPI(
        FakeStore(node_usage, pod_usage), FakeNodes(nodes), FakePods(pods)
    )


@pytest.fixture(autouse=True)
def pin_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rendering of one request sees the same time, so views can be compared."""
    monkeypatch.setattr("metrics_server.api.metrics.time.time_ns", lambda: NOW_NS)


def partial_choice(kind: str, version: str = "v1", media_type: str = JSON) -> Choice:
    return Choice(media_type, Conversion(kind, "meta.k8s.io", version))


def test_json_objects_are_unchanged_by_the_choice_default() -> None:
    api = make_api()
    body = orjson.loads(api.list_pods(None, {}))
    assert body["kind"] == "PodMetricsList"
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]]
    assert keys == [("default", "batch"), ("default", "web-1"),
                    ("kube-system", "coredns-558bd4d5db-4dpjz")]
    web = body["items"][1]
    assert web["metadata"] == {
        "name": "web-1",
        "namespace": "default",
        "creationTimestamp": "2024-05-31T16:08:37Z",
        "labels": {"app": "web", "tier": "front"},
    }
    assert web["containers"][1]["usage"] == {"cpu": "600000001n", "memory": "10Mi"}


@pytest.mark.parametrize("call", ["list_nodes", "get_node", "list_pods", "get_pod"])
def test_yaml_is_the_json_document(call: str) -> None:
    api = make_api()
    render = {
        "list_nodes": lambda c: api.list_nodes({}, c),
        "get_node": lambda c: api.get_node("n1", {}, c),
        "list_pods": lambda c: api.list_pods(None, {}, c),
        "get_pod": lambda c: api.get_pod("kube-system", "coredns-558bd4d5db-4dpjz", {}, c),
    }[call]
    as_yaml = yaml.safe_load(render(Choice(YAML)))
    assert as_yaml == orjson.loads(render(Choice(JSON)))


def test_partial_object_metadata_list_keeps_only_metadata() -> None:
    api = make_api()
    full = orjson.loads(api.list_pods("default", {}))
    body = orjson.loads(api.list_pods("default", {}, partial_choice("PartialObjectMetadataList")))
    assert body["kind"] == "PartialObjectMetadataList"
    assert body["apiVersion"] == "meta.k8s.io/v1"
    assert [i["metadata"] for i in body["items"]] == [i["metadata"] for i in full["items"]]
    assert {i["kind"] for i in body["items"]} == {"PartialObjectMetadata"}


def test_partial_object_metadata_of_one_node_in_v1beta1() -> None:
    api = make_api()
    body = orjson.loads(api.get_node("n1", {}, partial_choice("PartialObjectMetadata", "v1beta1")))
    assert body["apiVersion"] == "meta.k8s.io/v1beta1"
    assert body["metadata"] == orjson.loads(api.get_node("n1"))["metadata"]


@pytest.mark.parametrize(
    ("kind", "single"), [("PartialObjectMetadata", False), ("PartialObjectMetadataList", True)]
)
def test_partial_kind_must_fit_list_or_get(kind: str, single: bool) -> None:
    api = make_api()
    with pytest.raises(ApiError) as failure:
        if single:
            api.get_pod("default", "web-1", {}, partial_choice(kind))
        else:
            api.list_pods(None, {}, partial_choice(kind))
    assert failure.value.code == 406
    assert kind in failure.value.message


def test_errors_come_before_work_and_in_the_asked_encoding() -> None:
    api = make_api()
    with pytest.raises(ApiError) as failure:
        api.get_pod("default", "pending", {}, Choice(PROTOBUF))
    assert failure.value.code == 404
    assert failure.value.encode(PROTOBUF).startswith(b"k8s\x00")
    assert yaml.safe_load(failure.value.encode(YAML)) == orjson.loads(failure.value.body())
