"""Table views of NodeMetrics and PodMetrics: columns, summed quantities, includeObject."""

from __future__ import annotations

import orjson
import pytest
import yaml

from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.negotiate import JSON, YAML, Choice, Conversion
from metrics_server.api.status import ApiError
from metrics_server.models import PodInfo, PodUsage
from metrics_server.quantity import parse_go_duration
from tests.harness import parse_cpu, parse_memory
from tests.unit.test_api_metrics import (
    NOW_NS,
    SECOND,
    FakeNodes,
    FakePods,
    FakeStore,
    containers,
    make_api,
    pin_clock,
)

__all__ = ["pin_clock"]


def table(version: str = "v1", media_type: str = JSON) -> Choice:
    return Choice(media_type, Conversion("Table", "meta.k8s.io", version))


def test_columns_and_node_rows() -> None:
    api = make_api()
    body = orjson.loads(api.list_nodes({}, table()))
    assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [(c["name"], c["format"]) for c in body["columnDefinitions"]] == [
        ("Name", "name"), ("cpu", "quantity"), ("memory", "quantity"), ("Window", "duration")
    ]
    objects = orjson.loads(api.list_nodes({}))["items"]
    assert [r["cells"] for r in body["rows"]] == [
        [o["metadata"]["name"], o["usage"]["cpu"], o["usage"]["memory"], o["window"]]
        for o in objects
    ]


def test_pod_cells_sum_containers() -> None:
    api = make_api()
    body = orjson.loads(api.list_pods(None, {}, table()))
    objects = orjson.loads(api.list_pods(None, {}))["items"]
    assert len(body["rows"]) == len(objects) == 3
    for row, obj in zip(body["rows"], objects, strict=True):
        name, cpu, memory, window = row["cells"]
        assert name == obj["metadata"]["name"]
        assert parse_cpu(cpu) == sum(parse_cpu(c["usage"]["cpu"]) for c in obj["containers"])
        assert parse_memory(memory) == sum(
            parse_memory(c["usage"]["memory"]) for c in obj["containers"]
        )
        assert parse_go_duration(window) == parse_go_duration(obj["window"])


@pytest.mark.parametrize(
    ("usages", "cpu", "memory"),
    [
        # Kubernetes' own examples of canonical form: 1.5 cores is 1500m, 1.5Gi is 1536Mi.
        (((SECOND, 1 << 30), (SECOND // 2, 1 << 29)), "1500m", "1536Mi"),
        (((10_000_000, 5 << 20), (10_000_000, 10 << 20)), "20m", "15Mi"),
        (((SECOND, 600), (SECOND, 400)), "2", "1k"),
        (((1, 1023), (2, 1)), "3n", "1Ki"),
        (((250_000_000, 1000), (250_000_000, 24)), "500m", "1Ki"),
    ],
)
def test_summed_quantities_are_canonical(
    usages: tuple[tuple[int, int], ...], cpu: str, memory: str
) -> None:
    pod = PodInfo("ns", "p", {})
    usage = PodUsage(
        NOW_NS, 15 * SECOND, containers(*((f"c{i}", c, m) for i, (c, m) in enumerate(usages)))
    )
    api = MetricsAPI(FakeStore({}, {("ns", "p"): usage}), FakeNodes([]), FakePods([pod]))
    body = orjson.loads(api.get_pod("ns", "p", {}, table()))
    assert body["rows"][0]["cells"] == ["p", cpu, memory, "15s"]


def test_include_object_metadata_is_the_default() -> None:
    api = make_api()
    full = orjson.loads(api.list_pods(None, {}))["items"]
    for query in ({}, {"includeObject": "Metadata"}):
        rows = orjson.loads(api.list_pods(None, query, table("v1beta1")))["rows"]
        assert [r["object"] for r in rows] == [
            {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1beta1",
             "metadata": o["metadata"]}
            for o in full
        ]


def test_include_object_none_and_object() -> None:
    api = make_api()
    rows = orjson.loads(api.get_node("n1", {"includeObject": "None"}, table()))["rows"]
    assert len(rows) == 1 and "object" not in rows[0]
    rows = orjson.loads(api.get_node("n1", {"includeObject": "Object"}, table()))["rows"]
    assert rows[0]["object"] == orjson.loads(api.get_node("n1"))


def test_bad_include_object_is_a_clear_400() -> None:
    api = make_api()
    with pytest.raises(ApiError) as failure:
        api.list_nodes({"includeObject": "Everything"}, table())
    assert failure.value.code == 400
    assert failure.value.message == (
        'Unable to convert to Table as requested: includeObject: Invalid value: "Everything": '
        "must be 'Metadata', 'Object', 'None', or empty"
    )


def test_empty_list_still_has_columns() -> None:
    api = make_api()
    body = orjson.loads(api.list_pods("nowhere", {}, table()))
    assert body["rows"] == [] and len(body["columnDefinitions"]) == 4


def test_table_in_yaml() -> None:
    api = make_api()
    assert yaml.safe_load(api.list_nodes({}, table(media_type=YAML))) == orjson.loads(
        api.list_nodes({}, table())
    )
