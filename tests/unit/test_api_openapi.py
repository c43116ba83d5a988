"""OpenAPI v2 and v3 documents: well-formed, self-contained, and what kube-apiserver and
`kubectl explain` look for (kinds tagged with x-kubernetes-group-version-kind)."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from metrics_server.api import discovery, openapi

KINDS = ["NodeMetrics", "NodeMetricsList", "PodMetrics", "PodMetricsList"]
METRICS = "io.k8s.metrics.pkg.apis.metrics.v1beta1."


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def unwrap(prop: dict[str, Any]) -> str:
    """The referenced schema of a property, whether `$ref` or v3's `allOf: [$ref]`."""
    return str(prop.get("$ref") or prop["allOf"][0]["$ref"]).rsplit(".", 1)[1]


@pytest.mark.parametrize(
    ("body", "section", "prefix"),
    [
        (openapi.V2, ("definitions",), "#/definitions/"),
        (openapi.V3, ("components", "schemas"), "#/components/schemas/"),
    ],
)
def test_every_reference_resolves(body: bytes, section: tuple[str, ...], prefix: str) -> None:
    doc = orjson.loads(body)
    schemas = doc
    for key in section:
        schemas = schemas[key]
    found = refs(doc)
    assert found
    for ref in found:
        assert ref.startswith(prefix)
        assert ref[len(prefix):] in schemas, ref


@pytest.mark.parametrize("body", [openapi.V2, openapi.V3])
def test_kinds_carry_their_group_version_kind(body: bytes) -> None:
    doc = orjson.loads(body)
    schemas = doc.get("definitions") or doc["components"]["schemas"]
    for kind in KINDS:
        schema = schemas[METRICS + kind]
        assert schema["x-kubernetes-group-version-kind"] == [
            {"group": "metrics.k8s.io", "kind": kind, "version": "v1beta1"}
        ]
    pod = schemas[METRICS + "PodMetrics"]["properties"]
    assert unwrap(pod["containers"]["items"]) == "ContainerMetrics"
    assert unwrap(pod["metadata"]) == "ObjectMeta"
    assert unwrap(pod["timestamp"]) == "Time"
    container = schemas[METRICS + "ContainerMetrics"]
    assert container["required"] == ["name", "usage"]
    assert unwrap(container["properties"]["usage"]["additionalProperties"]) == "Quantity"


def test_v2_paths_are_the_served_ones() -> None:
    paths = orjson.loads(openapi.V2)["paths"]
    prefix = "/apis/metrics.k8s.io/v1beta1"
    for path, response in [
        (f"{prefix}/nodes", "NodeMetricsList"),
        (f"{prefix}/nodes/{{name}}", "NodeMetrics"),
        (f"{prefix}/pods", "PodMetricsList"),
        (f"{prefix}/namespaces/{{namespace}}/pods", "PodMetricsList"),
        (f"{prefix}/namespaces/{{namespace}}/pods/{{name}}", "PodMetrics"),
    ]:
        get = paths[path]["get"]
        assert unwrap(get["responses"]["200"]["schema"]) == response
        assert "application/vnd.kubernetes.protobuf" in get["produces"]
        names = {p["name"] for p in paths[path]["parameters"]}
        assert {seg.strip("{}") for seg in path.split("/") if seg.startswith("{")} <= names
    assert orjson.loads(openapi.V2)["swagger"] == "2.0"


def test_etags_and_index_hash() -> None:
    for body, etag in ((openapi.V2, openapi.V2_ETAG), (openapi.V3, openapi.V3_ETAG)):
        assert etag == '"' + hashlib.sha512(body).hexdigest().upper() + '"'
    index = orjson.loads(openapi.V3_INDEX)["paths"]
    url = urlsplit(index["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"])
    assert url.path == "/openapi/v3/apis/metrics.k8s.io/v1beta1"
    assert parse_qs(url.query)["hash"] == [openapi.V3_ETAG.strip('"')]


def test_aggregated_discovery_agrees_with_legacy() -> None:
    legacy = orjson.loads(discovery.API_RESOURCE_LIST)["resources"]
    for version in ("v2", "v2beta1"):
        doc = orjson.loads(discovery.AGGREGATED[version])
        assert doc["apiVersion"] == f"apidiscovery.k8s.io/{version}"
        (group,) = doc["items"]
        assert group["metadata"]["name"] == "metrics.k8s.io"
        (gv,) = group["versions"]
        assert gv["version"] == "v1beta1" and gv["freshness"] == "Current"
        assert [
            (r["resource"], r["responseKind"]["kind"], r["scope"] == "Namespaced", r["verbs"])
            for r in gv["resources"]
        ] == [(r["name"], r["kind"], r["namespaced"], r["verbs"]) for r in legacy]
        assert discovery.AGGREGATED_ETAGS[version] == discovery.etag(discovery.AGGREGATED[version])


def test_version_info_shape() -> None:
    info = orjson.loads(discovery.VERSION_INFO)
    assert set(info) >= {"major", "minor", "gitVersion", "goVersion", "compiler", "platform"}
    assert info["gitVersion"].startswith(f"v{info['major']}.{info['minor']}.")
    assert "/" in info["platform"]
