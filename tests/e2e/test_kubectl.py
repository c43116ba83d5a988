"""The real kubectl (v1.35) against the simulator, aggregated to this metrics server."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from metrics_server.daemon import Daemon
from metrics_server.simulator import ClusterConfig, open_cluster
from metrics_server.simulator._cluster import Cluster
from metrics_server.simulator.kubectl import kubectl_path
from tests.harness import direct_client, parse_cpu, parse_memory, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return kubectl_path()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Daemon]]:
    config = ClusterConfig(nodes=3, pods_per_node=5, kubelet_refresh=0.5, seed=7)
    async with open_cluster(config) as cluster, running_daemon(cluster, tmp_path) as d:
        with trio.fail_after(20):
            await d.wait_for(lambda: d.store.nodes_with_usage() == len(cluster.node_names()))
        yield cluster, d


async def run_kubectl(kubectl: Path, cluster: Cluster, *args: str) -> str:
    with trio.fail_after(30):
        result = await trio.run_process(
            [str(kubectl), "--kubeconfig", str(cluster.kubeconfig_path), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr.decode()}"
    return out


def table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


def millicores_match(shown: str, nanocores: int) -> bool:
    assert shown.endswith("m") or shown.isdigit()
    got = parse_cpu(shown) / 1e6
    want = nanocores / 1e6
    # kubectl rounds up to whole millicores; otherwise within 2 %.
    return abs(got - want) <= max(0.02 * want, 1.0)


def mebibytes(nbytes: int) -> str:
    return f"{nbytes // (1 << 20)}Mi"


async def test_top_nodes(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    rows = table(await run_kubectl(kubectl, cluster, "top", "nodes"))
    assert sorted(r["NAME"] for r in rows) == sorted(cluster.node_names())
    for row in rows:
        cpu, memory = cluster.truth_node(row["NAME"])
        assert millicores_match(row["CPU(cores)"], cpu), (row, cpu)
        assert row["MEMORY(bytes)"] == mebibytes(memory)
        assert row["CPU(%)"].endswith("%") and row["MEMORY(%)"].endswith("%")


async def test_top_pods_all_namespaces(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    rows = table(await run_kubectl(kubectl, cluster, "top", "pods", "-A"))
    expected = {key for node in cluster.node_names() for key in cluster.pod_keys(node)}
    assert {(r["NAMESPACE"], r["NAME"]) for r in rows} == expected
    for row in rows:
        truth = cluster.truth_pod(row["NAMESPACE"], row["NAME"])
        cpu = sum(c for c, _ in truth.values())
        memory = sum(m for _, m in truth.values())
        # kubectl sums container quantities, then rounds.
        assert millicores_match(row["CPU(cores)"], cpu), (row, cpu)
        assert row["MEMORY(bytes)"] == mebibytes(memory)


async def test_top_pod_containers(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    ns, name = cluster.pod_keys("node-1")[0]
    rows = table(await run_kubectl(kubectl, cluster, "top", "pod", name, "-n", ns, "--containers"))
    truth = cluster.truth_pod(ns, name)
    assert {r["NAME"] for r in rows} == set(truth)
    for row in rows:
        assert row["POD"] == name
        cpu, memory = truth[row["NAME"]]
        assert millicores_match(row["CPU(cores)"], cpu)
        assert row["MEMORY(bytes)"] == mebibytes(memory)


def selective_label(cluster: Cluster) -> tuple[str, str, str]:
    """(namespace, key, value) of a pod label, from the simulator's world, that picks more than
    one but not every Running pod of its namespace, so the selector visibly filters."""
    running = [p for p in cluster.world.pods.values() if p.phase == "Running"]
    best: tuple[int, str, str, str] | None = None
    for pod in running:
        in_ns = [p for p in running if p.namespace == pod.namespace]
        for key, value in pod.labels.items():
            count = sum(p.labels.get(key) == value for p in in_ns)
            if 1 < count < len(in_ns) and (best is None or count > best[0]):
                best = (count, pod.namespace, key, value)
    assert best is not None, "the seed gives no label shared by some but not all pods of a ns"
    return best[1], best[2], best[3]


async def test_top_pods_label_selector(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    ns, key, value = selective_label(cluster)
    rows = table(
        await run_kubectl(kubectl, cluster, "top", "pods", "-n", ns, "-l", f"{key}={value}")
    )
    # The expected set comes from the simulator's world, not from the daemon's cache.
    want = {
        p.name
        for p in cluster.world.pods.values()
        if p.namespace == ns and p.phase == "Running" and p.labels.get(key) == value
    }
    assert {r["NAME"] for r in rows} == want
    assert len(rows) == len(want)
    for row in rows:
        truth = cluster.truth_pod(ns, row["NAME"])
        cpu = sum(c for c, _ in truth.values())
        memory = sum(m for _, m in truth.values())
        assert millicores_match(row["CPU(cores)"], cpu), (row, cpu)
        assert row["MEMORY(bytes)"] == mebibytes(memory)


async def test_get_raw_discovery_and_node(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    disc = orjson.loads(
        await run_kubectl(kubectl, cluster, "get", "--raw", "/apis/metrics.k8s.io/v1beta1")
    )
    assert disc["kind"] == "APIResourceList"
    assert sorted(r["name"] for r in disc["resources"]) == ["nodes", "pods"]
    body = orjson.loads(
        await run_kubectl(
            kubectl, cluster, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/node-0"
        )
    )
    assert body["kind"] == "NodeMetrics"
    assert body["metadata"]["name"] == "node-0"
    cpu, memory = cluster.truth_node("node-0")
    assert parse_cpu(body["usage"]["cpu"]) == pytest.approx(cpu, rel=0.02)
    assert parse_memory(body["usage"]["memory"]) == memory
    assert not math.isnan(float(body["window"].rstrip("s")))


def assert_pod_items_match_truth(cluster: Cluster, items: list[dict[str, Any]]) -> None:
    for item in items:
        meta = item["metadata"]
        truth = cluster.truth_pod(meta["namespace"], meta["name"])
        got = {c["name"]: c["usage"] for c in item["containers"]}
        assert sorted(got) == sorted(truth), meta
        for container, (cpu, memory) in truth.items():
            usage = got[container]
            assert parse_cpu(usage["cpu"]) == pytest.approx(cpu, rel=0.02), (meta, container)
            assert parse_memory(usage["memory"]) == memory, (meta, container)


async def test_get_raw_node_list(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    body = orjson.loads(
        await run_kubectl(kubectl, cluster, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes")
    )
    assert body["kind"] == "NodeMetricsList"
    names = [i["metadata"]["name"] for i in body["items"]]
    assert names == cluster.node_names()  # every node, once, sorted by name
    for item in body["items"]:
        cpu, memory = cluster.truth_node(item["metadata"]["name"])
        assert parse_cpu(item["usage"]["cpu"]) == pytest.approx(cpu, rel=0.02), item
        assert parse_memory(item["usage"]["memory"]) == memory, item


async def test_get_raw_pod_list(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    body = orjson.loads(
        await run_kubectl(kubectl, cluster, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods")
    )
    assert body["kind"] == "PodMetricsList"
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]]
    assert keys == cluster.pod_keys()  # every pod of the world, once, sorted
    assert_pod_items_match_truth(cluster, body["items"])


async def test_get_raw_namespaced_pod_list(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    ns = cluster.pod_keys("node-0")[0][0]
    path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"
    body = orjson.loads(await run_kubectl(kubectl, cluster, "get", "--raw", path))
    assert body["kind"] == "PodMetricsList"
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in body["items"]]
    want = [key for key in cluster.pod_keys() if key[0] == ns]
    assert keys == want
    assert len(want) < len(cluster.pod_keys())  # the namespace really narrows the list
    assert_pod_items_match_truth(cluster, body["items"])


async def test_get_raw_pod(kubectl: Path, served: tuple[Cluster, Daemon]) -> None:
    cluster, _ = served
    ns, name = cluster.pod_keys("node-0")[0]
    body = orjson.loads(
        await run_kubectl(
            kubectl,
            cluster,
            "get",
            "--raw",
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods/{name}",
        )
    )
    assert body["kind"] == "PodMetrics"
    truth = cluster.truth_pod(ns, name)
    for c in body["containers"]:
        cpu, memory = truth[c["name"]]
        assert parse_cpu(c["usage"]["cpu"]) == pytest.approx(cpu, rel=0.02)
        assert parse_memory(c["usage"]["memory"]) == memory


async def test_authorization_is_enforced_for_kubectl(
    kubectl: Path, served: tuple[Cluster, Daemon], tmp_path: Path
) -> None:
    """The aggregator authorizes before proxying (as kube-apiserver does); we authorize again."""
    cluster, d = served
    async with direct_client(cluster, d, cluster.nobody_token) as client:
        direct = await client.get("/apis/metrics.k8s.io/v1beta1/pods")
    assert direct.status_code == 403
    assert 'cannot list resource "pods" in API group "metrics.k8s.io"' in direct.json()["message"]
    viewer = cluster.kubeconfig_for(cluster.viewer_token, tmp_path / "viewer.kubeconfig")
    nobody = cluster.kubeconfig_for(cluster.nobody_token, tmp_path / "nobody.kubeconfig")
    with trio.fail_after(30):
        ok = await trio.run_process(
            [str(kubectl), "--kubeconfig", str(viewer), "top", "pods", "-A"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        denied = await trio.run_process(
            [str(kubectl), "--kubeconfig", str(nobody), "top", "pods", "-A"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert ok.returncode == 0, ok.stderr.decode()
    assert len(table(ok.stdout.decode())) > 0
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.decode().lower()
