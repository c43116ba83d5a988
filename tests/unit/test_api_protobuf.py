"""Protobuf answers decoded by an independent decoder (Google's `protobuf` package) with the
message definitions transcribed from upstream's generated.proto files in
`test_api_protobuf_upstream`, and compared number by number with the JSON answer to the same
request.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

import orjson
import pytest
from google.protobuf.message import Message

from metrics_server.api import protobuf
from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.negotiate import JSON, PROTOBUF, Choice, Conversion
from metrics_server.api.status import ApiError, not_found
from metrics_server.models import NodeInfo, NodeUsage, ResourceUsage
from metrics_server.quantity import parse_go_duration
from tests.unit.test_api_metrics import (
    NOW_NS,
    SECOND,
    FakeNodes,
    FakePods,
    FakeStore,
    make_api,
    pin_clock,
)
from tests.unit.test_api_protobuf_upstream import CLASSES, META, decode

# pin_clock: the autouse fixture, re-exported so that pytest applies it here; decode: for the
# integration tests, which import it from here.
__all__ = ["decode", "pin_clock"]


def rfc3339_seconds(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def assert_meta(meta: Message, want: dict[str, Any]) -> None:
    assert meta.name == want["name"]
    assert meta.namespace == want.get("namespace", "")
    assert meta.creationTimestamp.seconds == rfc3339_seconds(want["creationTimestamp"])
    assert meta.creationTimestamp.nanos == 0
    assert dict(meta.labels) == want.get("labels", {})


def assert_usage(usage: Any, want: dict[str, str]) -> None:
    assert {k: v.string for k, v in usage.items()} == want


def assert_node(node: Message, want: dict[str, Any]) -> None:
    assert_meta(node.metadata, want["metadata"])
    assert node.timestamp.seconds == rfc3339_seconds(want["timestamp"])
    assert node.window.duration == parse_go_duration(want["window"])
    assert_usage(node.usage, want["usage"])


def assert_pod(pod: Message, want: dict[str, Any]) -> None:
    assert_meta(pod.metadata, want["metadata"])
    assert pod.timestamp.seconds == rfc3339_seconds(want["timestamp"])
    assert pod.window.duration == parse_go_duration(want["window"])
    assert [c.name for c in pod.containers] == [c["name"] for c in want["containers"]]
    for got, expected in zip(pod.containers, want["containers"], strict=True):
        assert_usage(got.usage, expected["usage"])


def test_node_list_matches_json() -> None:
    api = make_api()
    version, kind, got = decode(api.list_nodes({}, Choice(PROTOBUF)))
    want = orjson.loads(api.list_nodes({}, Choice(JSON)))
    assert (version, kind) == (want["apiVersion"], want["kind"])
    assert len(got.items) == len(want["items"]) == 2
    for node, expected in zip(got.items, want["items"], strict=True):
        assert_node(node, expected)


def test_pod_list_matches_json_with_selectors() -> None:
    api = make_api()
    query = {"labelSelector": "app=web"}
    version, kind, got = decode(api.list_pods("default", query, Choice(PROTOBUF)))
    want = orjson.loads(api.list_pods("default", query, Choice(JSON)))
    assert (version, kind) == ("metrics.k8s.io/v1beta1", "PodMetricsList")
    assert [p.metadata.name for p in got.items] == ["web-1"]
    for pod, expected in zip(got.items, want["items"], strict=True):
        assert_pod(pod, expected)


def test_all_pods_match_json() -> None:
    api = make_api()
    _, _, got = decode(api.list_pods(None, {}, Choice(PROTOBUF)))
    want = orjson.loads(api.list_pods(None, {}, Choice(JSON)))
    assert len(got.items) == 3
    for pod, expected in zip(got.items, want["items"], strict=True):
        assert_pod(pod, expected)


def test_gets_match_json() -> None:
    api = make_api()
    version, kind, node = decode(api.get_node("n1", {}, Choice(PROTOBUF)))
    assert (version, kind) == ("metrics.k8s.io/v1beta1", "NodeMetrics")
    assert_node(node, orjson.loads(api.get_node("n1")))
    _, kind, pod = decode(api.get_pod("default", "batch", {}, Choice(PROTOBUF)))
    assert kind == "PodMetrics"
    assert_pod(pod, orjson.loads(api.get_pod("default", "batch")))


def test_partial_object_metadata_list() -> None:
    api = make_api()
    choice = Choice(PROTOBUF, Conversion("PartialObjectMetadataList", "meta.k8s.io", "v1"))
    version, kind, got = decode(api.list_pods(None, {}, choice))
    assert (version, kind) == ("meta.k8s.io/v1", "PartialObjectMetadataList")
    want = orjson.loads(api.list_pods(None, {}))
    for item, expected in zip(got.items, want["items"], strict=True):
        assert_meta(item.metadata, expected["metadata"])


def test_status_matches_json() -> None:
    error = not_found("podmetrics", "default/nope")
    version, kind, got = decode(error.encode(PROTOBUF))
    want = orjson.loads(error.body())
    assert (version, kind) == (want["apiVersion"], want["kind"])
    assert (got.status, got.message, got.reason, got.code) == (
        want["status"], want["message"], want["reason"], want["code"]
    )
    assert (got.details.name, got.details.group, got.details.kind) == (
        want["details"]["name"], want["details"]["group"], want["details"]["kind"]
    )
    bare = ApiError(400, "BadRequest", "bad")
    _, _, got = decode(bare.encode(PROTOBUF))
    assert not got.HasField("details") and got.code == 400


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 2047, 2048, 16383, 16384, 2**31, 2**63 - 1, -1, -(2**63)]
)
def test_varints_decode_as_int64(value: int) -> None:
    raw = b"\x08" + protobuf.varint(value)
    message = CLASSES[f"{META}.Duration"]()
    message.ParseFromString(raw)
    assert message.duration == value


def test_long_names_and_many_labels_cross_varint_boundaries() -> None:
    """Lengths past one and two varint bytes (names up to 253, values to 63 characters)."""
    labels = {f"example.com/key-{i:03d}": "v" * 63 for i in range(300)}
    name = "n" * 253
    usage = NodeUsage(NOW_NS - SECOND, 3_600 * SECOND + 1, ResourceUsage(2**62, 2**62))
    api = MetricsAPI(
        FakeStore({name: usage}, {}), FakeNodes([NodeInfo(name, labels, (), 1)]), FakePods([])
    )
    _, _, got = decode(api.list_nodes({}, Choice(PROTOBUF)))
    (node,) = got.items
    assert_node(node, orjson.loads(api.list_nodes({}, Choice(JSON)))["items"][0])
    assert len(node.metadata.labels) == 300
