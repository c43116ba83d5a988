"""Every representation the Metrics API serves, over HTTPS: straight to the metrics server and
through the simulated kube-apiserver (aggregation proxy, merged discovery and OpenAPI)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import yaml

from metrics_server.api import openapi
from metrics_server.daemon import Daemon
from metrics_server.simulator import ClusterConfig, open_cluster
from metrics_server.simulator._cluster import Cluster
from tests.harness import apiserver_client, direct_client, running_daemon
from tests.unit.test_api_protobuf import assert_node, assert_pod, decode, rfc3339_seconds

PREFIX = "/apis/metrics.k8s.io/v1beta1"
DEADLINE = 30
KUBECTL_TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
PROTOBUF_FIRST = "application/vnd.kubernetes.protobuf,application/json"
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Daemon]]:
    config = ClusterConfig(nodes=2, pods_per_node=3, kubelet_refresh=0.5, seed=3)
    async with open_cluster(config) as cluster, running_daemon(cluster, tmp_path) as d:
        pods = [key for node in cluster.node_names() for key in cluster.pod_keys(node)]
        with trio.fail_after(20):
            await d.wait_for(
                lambda: d.store.nodes_with_usage() == 2
                and all(d.store.pod_usage(ns, name) for ns, name in pods)
            )
        yield cluster, d


def without_creation(doc: Any) -> Any:
    """A JSON answer without creationTimestamp, which is the time of each request."""
    if isinstance(doc, dict):
        return {k: without_creation(v) for k, v in doc.items() if k != "creationTimestamp"}
    if isinstance(doc, list):
        return [without_creation(v) for v in doc]
    return doc


async def stable_pair(
    client: httpx.AsyncClient, path: str, accept: str
) -> tuple[Any, httpx.Response]:
    """A JSON answer and an `accept` answer taken between two equal JSON answers, so that no
    scrape changed the numbers in between."""
    while True:
        before = (await client.get(path)).json()
        other = await client.get(path, headers={"Accept": accept})
        after = (await client.get(path)).json()
        if without_creation(before) == without_creation(after):
            assert other.status_code == 200, other.text
            return after, other


def same_creation(decoded: Any, want: dict[str, Any]) -> dict[str, Any]:
    """`want` with the decoded object's creationTimestamp, once that is checked to be close
    (each answer stamps its own request time)."""
    seconds = decoded.metadata.creationTimestamp.seconds
    assert abs(seconds - rfc3339_seconds(want["metadata"]["creationTimestamp"])) <= 5
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    return {**want, "metadata": {**want["metadata"], "creationTimestamp": text}}


async def test_protobuf_answers_match_json(served: tuple[Cluster, Daemon]) -> None:
    cluster, d = served
    with trio.fail_after(DEADLINE):
        async with direct_client(cluster, d) as client:
            want, response = await stable_pair(client, f"{PREFIX}/nodes", PROTOBUF_FIRST)
            assert response.headers["content-type"] == "application/vnd.kubernetes.protobuf"
            version, kind, got = decode(response.content)
            assert (version, kind) == ("metrics.k8s.io/v1beta1", "NodeMetricsList")
            assert len(got.items) == len(want["items"]) == 2
            for node, expected in zip(got.items, want["items"], strict=True):
                assert_node(node, same_creation(node, expected))

            want, response = await stable_pair(client, f"{PREFIX}/pods", PROTOBUF_FIRST)
            _, kind, got = decode(response.content)
            assert kind == "PodMetricsList" and len(got.items) == len(want["items"]) == 6
            for pod, expected in zip(got.items, want["items"], strict=True):
                assert_pod(pod, same_creation(pod, expected))

            missing = await client.get(f"{PREFIX}/nodes/nope", headers={"Accept": PROTOBUF_FIRST})
            assert missing.status_code == 404
            _, kind, status = decode(missing.content)
            assert (kind, status.code, status.reason) == ("Status", 404, "NotFound")
            assert status.details.name == "nope"


async def test_tables_yaml_and_refusals(served: tuple[Cluster, Daemon]) -> None:
    cluster, d = served
    with trio.fail_after(DEADLINE):
        async with direct_client(cluster, d) as client:
            want, response = await stable_pair(client, f"{PREFIX}/pods", KUBECTL_TABLE)
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
            assert [c["name"] for c in body["columnDefinitions"]] == [
                "Name", "cpu", "memory", "Window"
            ]
            assert [r["cells"][0] for r in body["rows"]] == [
                i["metadata"]["name"] for i in want["items"]
            ]
            assert [without_creation(r["object"]["metadata"]) for r in body["rows"]] == [
                without_creation(i["metadata"]) for i in want["items"]
            ]

            none = await client.get(
                f"{PREFIX}/nodes",
                params={"includeObject": "None"},
                headers={"Accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"},
            )
            assert none.json()["apiVersion"] == "meta.k8s.io/v1beta1"
            assert all("object" not in r for r in none.json()["rows"])
            bad = await client.get(
                f"{PREFIX}/nodes", params={"includeObject": "x"}, headers={"Accept": KUBECTL_TABLE}
            )
            assert bad.status_code == 400 and "includeObject" in bad.json()["message"]

            want, response = await stable_pair(client, f"{PREFIX}/nodes", "application/yaml")
            assert response.headers["content-type"] == "application/yaml"
            assert without_creation(yaml.safe_load(response.content)) == without_creation(want)

            refused = await client.get(f"{PREFIX}/pods", headers={"Accept": "text/html"})
            assert refused.status_code == 406
            assert refused.headers["content-type"] == "application/json"
            assert refused.json()["message"] == (
                "only the following media types are accepted: application/json, "
                "application/yaml, application/vnd.kubernetes.protobuf"
            )
            pretty = await client.get(f"{PREFIX}/nodes", params={"pretty": "true"})
            assert pretty.content.startswith(b"{\n  ")


async def test_discovery_openapi_and_version(served: tuple[Cluster, Daemon]) -> None:
    cluster, d = served
    with trio.fail_after(DEADLINE):
        async with direct_client(cluster, d) as client:
            legacy = await client.get("/apis")
            assert legacy.headers["content-type"] == "application/json"
            assert legacy.json()["kind"] == "APIGroupList"
            for accept, version in ((AGGREGATED_V2, "v2"), (AGGREGATED_V2BETA1, "v2beta1")):
                aggregated = await client.get("/apis", headers={"Accept": accept})
                assert aggregated.headers["content-type"] == accept
                assert aggregated.json()["apiVersion"] == f"apidiscovery.k8s.io/{version}"
                etag = aggregated.headers["etag"]
                again = await client.get(
                    "/apis", headers={"Accept": accept, "If-None-Match": etag}
                )
                assert again.status_code == 304 and not again.content
            assert (await client.get("/apis", headers={"Accept": "text/plain"})).status_code == 406
            group = await client.get("/apis/metrics.k8s.io", headers={"Accept": "application/yaml"})
            assert yaml.safe_load(group.content)["kind"] == "APIGroup"

            v2 = await client.get("/openapi/v2", headers={"Accept": "application/json"})
            assert v2.json()["swagger"] == "2.0"
            cached = await client.get("/openapi/v2", headers={"If-None-Match": v2.headers["etag"]})
            assert cached.status_code == 304
            only_protobuf = await client.get(
                "/openapi/v2",
                headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"},
            )
            assert only_protobuf.status_code == 406
            fallback = await client.get(
                "/openapi/v2",
                headers={
                    "Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf, "
                    "application/json;q=0.9"
                },
            )
            assert fallback.status_code == 200 and fallback.json()["swagger"] == "2.0"

            index = (await client.get("/openapi/v3")).json()
            url = index["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"]
            v3 = await client.get(url)
            assert v3.json()["openapi"].startswith("3.")
            assert v3.headers["cache-control"] == "public, immutable"
            assert v3.headers["etag"] == openapi.V3_ETAG
            stale = await client.get(url.split("?")[0], params={"hash": "0BSOLETE"})
            assert stale.status_code == 301 and stale.headers["location"] == url

            info = (await client.get("/version", headers={"Accept": "text/html"})).json()
            assert info["gitVersion"].startswith("v")


async def test_through_the_apiserver(served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    with trio.fail_after(DEADLINE):
        async with apiserver_client(cluster) as client:
            table = await client.get(f"{PREFIX}/nodes", headers={"Accept": KUBECTL_TABLE})
            assert table.json()["kind"] == "Table"
            assert sorted(r["cells"][0] for r in table.json()["rows"]) == cluster.node_names()
            proto = await client.get(f"{PREFIX}/pods", headers={"Accept": PROTOBUF_FIRST})
            assert decode(proto.content)[1] == "PodMetricsList"

            apis = await client.get("/apis", headers={"Accept": AGGREGATED_V2})
            assert apis.headers["content-type"] == AGGREGATED_V2
            groups = {g["metadata"]["name"]: g for g in apis.json()["items"]}
            metrics = groups["metrics.k8s.io"]["versions"][0]
            assert {r["resource"]: r["responseKind"]["kind"] for r in metrics["resources"]} == {
                "nodes": "NodeMetrics", "pods": "PodMetrics"
            }
            core = (await client.get("/api", headers={"Accept": AGGREGATED_V2})).json()
            assert "pods" in {r["resource"] for r in core["items"][0]["versions"][0]["resources"]}

            v2 = (await client.get("/openapi/v2")).json()
            assert "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics" in v2["definitions"]
            assert "/version/" in v2["paths"] and f"{PREFIX}/nodes" in v2["paths"]
            index = (await client.get("/openapi/v3")).json()
            url = index["paths"]["apis/metrics.k8s.io/v1beta1"]["serverRelativeURL"]
            doc = await client.get(url)
            assert doc.content == openapi.V3
            assert doc.headers["etag"] == openapi.V3_ETAG


async def test_apiserver_without_metrics_server() -> None:
    """Discovery and OpenAPI still answer, without metrics.k8s.io, when it is not registered."""
    with trio.fail_after(DEADLINE):
        async with (
            open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster,
            apiserver_client(cluster) as client,
        ):
            apis = (await client.get("/apis", headers={"Accept": AGGREGATED_V2})).json()
            names = {g["metadata"]["name"] for g in apis["items"]}
            assert "metrics.k8s.io" not in names
            assert "authentication.k8s.io" in names
            assert (await client.get("/openapi/v3")).json() == {"paths": {}}
            v2 = (await client.get("/openapi/v2")).json()
            assert orjson.dumps(v2).find(b"PodMetrics") == -1
