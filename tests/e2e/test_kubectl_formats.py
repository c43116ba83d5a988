"""Real clients against the simulator aggregated to this metrics server: kubectl 1.35 `get`
(server-side Table printing, -o wide/json/yaml), `explain` (OpenAPI v3), `api-resources`
(aggregated discovery), and the Python `kubernetes` client's CustomObjectsApi."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import yaml

from metrics_server.daemon import Daemon
from metrics_server.simulator import ClusterConfig, open_cluster
from metrics_server.simulator._cluster import Cluster
from metrics_server.simulator.kubectl import kubectl_path
from tests.harness import parse_cpu, parse_memory, running_daemon

pytestmark = pytest.mark.e2e

Served = tuple[Cluster, Daemon, Path]


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return kubectl_path()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    config = ClusterConfig(nodes=3, pods_per_node=4, kubelet_refresh=0.5, seed=11)
    async with open_cluster(config) as cluster, running_daemon(cluster, tmp_path) as d:
        pods = [key for node in cluster.node_names() for key in cluster.pod_keys(node)]
        with trio.fail_after(20):
            await d.wait_for(
                lambda: d.store.nodes_with_usage() == 3
                and all(d.store.pod_usage(ns, name) for ns, name in pods)
            )
        # A cache directory per test: kubectl caches discovery and OpenAPI per host:port.
        yield cluster, d, tmp_path / "kube-cache"


async def run_kubectl(kubectl: Path, served: Served, *args: str) -> str:
    cluster, _, cache = served
    with trio.fail_after(30):
        result = await trio.run_process(
            [str(kubectl), "--kubeconfig", str(cluster.kubeconfig_path), "--cache-dir",
             str(cache), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr.decode()}"
    return result.stdout.decode()


def rows(text: str) -> list[dict[str, str]]:
    """kubectl's columns, cut where the header's columns start (cells may be empty)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    names = header.split()
    starts = [0]
    for name in names[1:]:
        starts.append(header.index(f" {name}", starts[-1]) + 1)
    bounds = [*starts[1:], None]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, bounds, strict=True)}
        for line in lines[1:]
    ]


def close_cpu(shown: str, nanocores: int) -> bool:
    # Ground truth moves a little between samples; the rate is within 2 % of it.
    return abs(parse_cpu(shown) - nanocores) <= max(0.02 * nanocores, 1e6)


async def test_get_nodes_metrics_is_a_server_side_table(kubectl: Path, served: Served) -> None:
    cluster, _, _ = served
    table = rows(await run_kubectl(kubectl, served, "get", "nodes.metrics.k8s.io"))
    assert list(table[0]) == ["NAME", "CPU", "MEMORY", "WINDOW"]
    assert [r["NAME"] for r in table] == sorted(cluster.node_names())
    for row in table:
        cpu, memory = cluster.truth_node(row["NAME"])
        assert close_cpu(row["CPU"], cpu), (row, cpu)
        assert parse_memory(row["MEMORY"]) == memory
        assert row["WINDOW"].endswith("s")


async def test_get_podmetrics_all_namespaces(kubectl: Path, served: Served) -> None:
    cluster, _, _ = served
    table = rows(await run_kubectl(kubectl, served, "get", "podmetrics", "-A"))
    assert list(table[0]) == ["NAMESPACE", "NAME", "CPU", "MEMORY", "WINDOW"]
    expected = sorted(k for node in cluster.node_names() for k in cluster.pod_keys(node))
    assert [(r["NAMESPACE"], r["NAME"]) for r in table] == expected
    for row in table:
        truth = cluster.truth_pod(row["NAMESPACE"], row["NAME"])
        assert close_cpu(row["CPU"], sum(c for c, _ in truth.values())), row
        assert parse_memory(row["MEMORY"]) == sum(m for _, m in truth.values())
    wide = rows(await run_kubectl(kubectl, served, "get", "podmetrics", "-A", "-o", "wide"))
    assert [(r["NAMESPACE"], r["NAME"]) for r in wide] == expected


@pytest.mark.parametrize("output", ["json", "yaml"])
async def test_get_podmetrics_as_objects(kubectl: Path, served: Served, output: str) -> None:
    cluster, _, _ = served
    text = await run_kubectl(kubectl, served, "get", "podmetrics", "-A", "-o", output)
    doc: dict[str, Any] = orjson.loads(text) if output == "json" else yaml.safe_load(text)
    assert doc["kind"] == "List"
    assert {i["kind"] for i in doc["items"]} == {"PodMetrics"}
    for item in doc["items"]:
        meta = item["metadata"]
        truth = cluster.truth_pod(meta["namespace"], meta["name"])
        got = {c["name"]: c["usage"] for c in item["containers"]}
        assert sorted(got) == sorted(truth)
        for name, (cpu, memory) in truth.items():
            assert close_cpu(got[name]["cpu"], cpu)
            assert parse_memory(got[name]["memory"]) == memory


async def test_get_one_node_as_yaml(kubectl: Path, served: Served) -> None:
    cluster, _, _ = served
    text = await run_kubectl(kubectl, served, "get", "nodemetrics", "node-1", "-o", "yaml")
    doc = yaml.safe_load(text)
    assert (doc["kind"], doc["metadata"]["name"]) == ("NodeMetrics", "node-1")
    assert parse_memory(doc["usage"]["memory"]) == cluster.truth_node("node-1")[1]


async def test_explain_reads_our_openapi(kubectl: Path, served: Served) -> None:
    text = await run_kubectl(kubectl, served, "explain", "podmetrics.containers")
    assert "GROUP:      metrics.k8s.io" in text
    assert "KIND:       PodMetrics" in text
    assert "FIELD: containers <[]ContainerMetrics>" in text
    assert "name\t<string> -required-" in text
    assert "usage\t<map[string]Quantity> -required-" in text
    top = await run_kubectl(kubectl, served, "explain", "nodemetrics")
    for field in ("metadata\t<ObjectMeta>", "timestamp\t<string> -required-", "window"):
        assert field in top


async def test_explain_from_openapi_v2(kubectl: Path, served: Served) -> None:
    """The v2 path: kubectl reads /openapi/v2 as gnostic protobuf, which the apiserver builds
    from the definitions it merged from ours."""
    text = await run_kubectl(
        kubectl, served, "explain", "podmetrics.containers", "--output", "plaintext-openapiv2"
    )
    assert "KIND:     PodMetrics" in text
    assert "VERSION:  metrics.k8s.io/v1beta1" in text
    assert "name\t<string> -required-" in text
    assert "usage\t<map[string]string> -required-" in text


async def test_api_resources(kubectl: Path, served: Served) -> None:
    text = await run_kubectl(kubectl, served, "api-resources", "--api-group=metrics.k8s.io")
    table = rows(text)
    assert [(r["NAME"], r["APIVERSION"], r["NAMESPACED"], r["KIND"]) for r in table] == [
        ("nodes", "metrics.k8s.io/v1beta1", "false", "NodeMetrics"),
        ("pods", "metrics.k8s.io/v1beta1", "true", "PodMetrics"),
    ]


async def test_python_kubernetes_client(served: Served) -> None:
    cluster, _, _ = served
    ns, name = cluster.pod_keys("node-2")[0]

    def query() -> tuple[dict[str, Any], dict[str, Any]]:
        from kubernetes import client, config

        api_client = config.new_client_from_config(str(cluster.kubeconfig_path))
        try:
            custom = client.CustomObjectsApi(api_client)
            nodes = custom.list_cluster_custom_object(
                "metrics.k8s.io", "v1beta1", "nodes", _request_timeout=10
            )
            pod = custom.get_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", ns, "pods", name, _request_timeout=10
            )
        finally:
            api_client.close()
        return nodes, pod

    with trio.fail_after(30):
        nodes, pod = await trio.to_thread.run_sync(query)
    assert nodes["kind"] == "NodeMetricsList"
    assert sorted(i["metadata"]["name"] for i in nodes["items"]) == sorted(cluster.node_names())
    for item in nodes["items"]:
        assert parse_memory(item["usage"]["memory"]) == cluster.truth_node(
            item["metadata"]["name"]
        )[1]
    assert (pod["kind"], pod["metadata"]["namespace"], pod["metadata"]["name"]) == (
        "PodMetrics", ns, name
    )
    truth = cluster.truth_pod(ns, name)
    assert {c["name"] for c in pod["containers"]} == set(truth)
