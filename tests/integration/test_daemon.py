"""The daemon end to end in-process against the simulator: truth, churn, faults, errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import trio

from metrics_server.daemon import Daemon
from metrics_server.simulator import ClusterConfig, Hang, HttpStatus, open_cluster
from metrics_server.simulator._apiserver import FakeAPIServer
from metrics_server.simulator._cluster import Cluster
from metrics_server.simulator._http import Request, Responder
from tests.harness import (
    apiserver_client,
    direct_client,
    items_by_name,
    parse_cpu,
    parse_memory,
    running_daemon,
)

PREFIX = "/apis/metrics.k8s.io/v1beta1"


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with open_cluster(ClusterConfig(nodes=3, pods_per_node=4, kubelet_refresh=0.5)) as c:
        yield c


async def wait_until(d: Daemon, predicate: Callable[[], bool], seconds: float = 15) -> None:
    """Wait for a condition, woken by each scrape and watch event; fail after `seconds`."""
    with trio.fail_after(seconds):
        await d.wait_for(predicate)


async def test_serves_ground_truth_within_seconds(cluster: Cluster, tmp_path: Path) -> None:
    start = trio.current_time()
    async with running_daemon(cluster, tmp_path) as d:
        with trio.fail_after(15):
            await d.ready.wait()
        # Every node should be served well before one resolution (10 s) has passed.
        await wait_until(d, lambda: d.store.nodes_with_usage() == 3, seconds=8)
        elapsed = trio.current_time() - start
        assert elapsed < 8, f"first metrics after {elapsed:.1f}s"
        async with direct_client(cluster, d) as client:
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
            pods = (await client.get(f"{PREFIX}/pods")).json()
    assert nodes["kind"] == "NodeMetricsList"
    assert nodes["apiVersion"] == "metrics.k8s.io/v1beta1"
    by_node = items_by_name(nodes)
    assert sorted(by_node) == sorted(cluster.node_names())
    for name, item in by_node.items():
        cpu, memory = cluster.truth_node(name)
        assert parse_cpu(item["usage"]["cpu"]) == pytest.approx(cpu, rel=0.02)
        assert parse_memory(item["usage"]["memory"]) == memory
        assert item["window"].endswith("s")
    served = items_by_name(pods)
    assert len(served) == sum(len(cluster.pod_keys(n)) for n in cluster.node_names())
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in pods["items"]]
    assert keys == sorted(keys)
    for key, item in served.items():
        ns, name = key.split("/")
        truth = cluster.truth_pod(ns, name)
        got = {c["name"]: c["usage"] for c in item["containers"]}
        assert sorted(got) == sorted(truth)
        for container, (cpu, memory) in truth.items():
            assert parse_cpu(got[container]["cpu"]) == pytest.approx(cpu, rel=0.02)
            assert parse_memory(got[container]["memory"]) == memory


async def test_node_churn_starts_and_cancels_tasks(cluster: Cluster, tmp_path: Path) -> None:
    async with running_daemon(cluster, tmp_path) as d:
        with trio.fail_after(15):
            await d.ready.wait()
        cluster.add_node("node-extra")
        await wait_until(d, lambda: d.store.node_usage("node-extra") is not None)
        assert set(d.manager.nodes) == {*cluster.node_names()}
        state = d.manager.nodes["node-0"]
        cluster.remove_node("node-0")
        with trio.fail_after(10):
            await state.done.wait()  # the task really ended
        assert "node-0" not in d.manager.nodes
        assert d.store.node_usage("node-0") is None
        async with direct_client(cluster, d) as client:
            r = await client.get(f"{PREFIX}/nodes/node-0")
        assert r.status_code == 404
        assert r.json()["reason"] == "NotFound"
        assert r.json()["message"] == 'nodemetrics.metrics.k8s.io "node-0" not found'


async def test_hung_and_failing_kubelets_do_not_stall_others(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metrics_server")
    cluster.set_fault("node-1", Hang())
    cluster.set_fault("node-2", HttpStatus(500))
    async with running_daemon(cluster, tmp_path) as d:
        await wait_until(d, lambda: d.store.node_usage("node-0") is not None, seconds=10)
        assert d.store.node_usage("node-1") is None
        assert d.store.node_usage("node-2") is None
        await wait_until(d, lambda: d.manager.nodes["node-1"].failures >= 1, seconds=10)
        async with direct_client(cluster, d) as client:
            with trio.fail_after(1):  # the API answers at once despite the hung kubelet
                r = await client.get(f"{PREFIX}/nodes")
        assert [i["metadata"]["name"] for i in r.json()["items"]] == ["node-0"]
        errors = d.manager.nodes["node-1"].last_error
        assert errors is not None and errors.reason == "timeout"
        e2 = d.manager.nodes["node-2"].last_error
        assert e2 is not None and e2.reason == "http_500"
        # Recovery: the node is served again after the fault clears.
        cluster.clear_fault("node-2")
        await wait_until(d, lambda: d.store.node_usage("node-2") is not None, seconds=25)
    failures = [r.getMessage() for r in caplog.records if "Failed to scrape node" in r.getMessage()]
    # Logged once per node per state change, not once per attempt.
    assert sum("node node-2" in m for m in failures) == 1
    assert sum("node node-1" in m for m in failures) == 1


async def test_watch_drop_and_410_keep_serving(cluster: Cluster, tmp_path: Path) -> None:
    async with running_daemon(cluster, tmp_path) as d:
        with trio.fail_after(15):
            await d.ready.wait()
        pods_before = len(d.pods)
        cluster.drop_watches()
        cluster.expire_history()
        cluster.drop_watches()
        assert len(d.pods) == pods_before
        assert len(d.nodes) == 3
        cluster.add_pod("default", "late-pod", "node-0", containers={"app": (50_000_000, 64 << 20)})
        await wait_until(d, lambda: d.pods.get("default", "late-pod") is not None, seconds=20)
        assert d.pod_watch.restarts + d.node_watch.restarts >= 1
        assert len(d.nodes) == 3


async def test_api_errors_are_status_objects(cluster: Cluster, tmp_path: Path) -> None:
    async with running_daemon(cluster, tmp_path) as d:
        await wait_until(d, lambda: d.store.nodes_with_usage() == 3)
        async with direct_client(cluster, d) as client:
            bad = await client.get(f"{PREFIX}/pods", params={"labelSelector": "app in (x"})
            assert bad.status_code == 400
            assert bad.json()["kind"] == "Status" and bad.json()["reason"] == "BadRequest"
            badf = await client.get(f"{PREFIX}/nodes", params={"fieldSelector": "spec.x=1"})
            assert badf.status_code == 400
            missing = await client.get(f"{PREFIX}/namespaces/default/pods/nope")
            assert missing.status_code == 404
            assert missing.json()["message"] == 'podmetrics.metrics.k8s.io "default/nope" not found'
            post = await client.post(f"{PREFIX}/nodes")
            assert post.status_code == 405 and post.json()["kind"] == "Status"
            watch = await client.get(f"{PREFIX}/pods", params={"watch": "true"})
            assert watch.status_code == 405
            unknown = await client.get("/apis/metrics.k8s.io/v1beta1/widgets")
            assert unknown.status_code == 404 and unknown.json()["kind"] == "Status"
            ok = await client.get(f"{PREFIX}/nodes", params={"labelSelector": "!nonexistent"})
            assert ok.status_code == 200 and len(ok.json()["items"]) == 3


async def test_through_aggregator_with_selectors(cluster: Cluster, tmp_path: Path) -> None:
    async with running_daemon(cluster, tmp_path) as d:
        with trio.fail_after(15):
            await d.ready.wait()
        await wait_until(d, lambda: d.store.nodes_with_usage() == 3)
        ns, name = cluster.pod_keys("node-0")[0]
        async with apiserver_client(cluster) as client:
            one = await client.get(f"{PREFIX}/namespaces/{ns}/pods/{name}")
            assert one.status_code == 200, one.text
            body = one.json()
            assert body["kind"] == "PodMetrics" and body["metadata"]["name"] == name
            labels = body["metadata"].get("labels", {})
            assert labels, "pod labels are served"
            key, value = next(iter(labels.items()))
            listed = await client.get(
                f"{PREFIX}/namespaces/{ns}/pods", params={"labelSelector": f"{key}={value}"}
            )
            assert listed.status_code == 200
            assert all(i["metadata"]["labels"].get(key) == value for i in listed.json()["items"])
            assert name in [i["metadata"]["name"] for i in listed.json()["items"]]
            field = await client.get(
                f"{PREFIX}/pods", params={"fieldSelector": f"metadata.namespace={ns}"}
            )
            assert {i["metadata"]["namespace"] for i in field.json()["items"]} == {ns}
            disc = await client.get("/apis/metrics.k8s.io/v1beta1")
            assert [r["name"] for r in disc.json()["resources"]] == ["nodes", "pods"]


async def test_readyz_before_and_after(cluster: Cluster, tmp_path: Path) -> None:
    for node in cluster.node_names():
        cluster.set_fault(node, HttpStatus(403))
    async with running_daemon(cluster, tmp_path) as d, direct_client(cluster, d) as client:
        await wait_until(
            d,
            lambda: all(s.failures for s in d.manager.nodes.values()) and len(d.manager.nodes) == 3,
        )
        r = await client.get("/readyz", params={"verbose": "1"})
        assert r.status_code == 500
        assert "[-]metric-storage-ready failed: no metrics to serve" in r.text
        assert "every node scrape fails" in r.text and "403" in r.text
        assert (await client.get("/livez")).status_code == 200
        for node in cluster.node_names():
            cluster.clear_fault(node)
        with trio.fail_after(25):
            await d.ready.wait()
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.text == "ok"


async def test_node_selector_follows_relabelling(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `-l pool=a` only matching nodes get a scrape task and are served; relabelling
    moves a node in and another out, and the node list/watch carry the selector server-side."""
    node_requests: list[dict[str, str]] = []
    handle = FakeAPIServer.handle

    async def recording(self: FakeAPIServer, request: Request, respond: Responder) -> None:
        if request.path.rstrip("/") == "/api/v1/nodes":
            node_requests.append(dict(request.query))
        await handle(self, request, respond)

    monkeypatch.setattr(FakeAPIServer, "handle", recording)

    def relabel(node: str, pool: str | None) -> None:
        labels = {k: v for k, v in cluster.world.nodes[node].labels.items() if k != "pool"}
        cluster.set_node_labels(node, {**labels, **({"pool": pool} if pool else {})})

    relabel("node-0", "a")
    relabel("node-1", "b")  # node-2 has no pool label at all

    async def served_nodes(client: httpx.AsyncClient) -> list[str]:
        r = await client.get(f"{PREFIX}/nodes")
        assert r.status_code == 200, r.text
        return [i["metadata"]["name"] for i in r.json()["items"]]

    async with running_daemon(cluster, tmp_path, ["-l", "pool=a"]) as d:
        await wait_until(d, lambda: d.store.node_usage("node-0") is not None)
        assert set(d.manager.nodes) == {"node-0"}
        assert [n.name for n in d.nodes.sorted()] == ["node-0"]  # filtered upstream
        async with direct_client(cluster, d) as client:
            assert await served_nodes(client) == ["node-0"]
            assert (await client.get(f"{PREFIX}/nodes/node-1")).status_code == 404

            leaving = d.manager.nodes["node-0"]
            relabel("node-1", "a")  # starts matching
            relabel("node-0", "b")  # stops matching
            with trio.fail_after(10):
                await leaving.done.wait()  # its task really ended
            await wait_until(d, lambda: d.store.node_usage("node-1") is not None)
            assert set(d.manager.nodes) == {"node-1"}
            assert d.store.node_usage("node-0") is None
            assert await served_nodes(client) == ["node-1"]
            gone = await client.get(f"{PREFIX}/nodes/node-0")
            assert gone.status_code == 404 and gone.json()["reason"] == "NotFound"
            cpu, memory = cluster.truth_node("node-1")
            one = (await client.get(f"{PREFIX}/nodes/node-1")).json()
            assert parse_cpu(one["usage"]["cpu"]) == pytest.approx(cpu, rel=0.02)
            assert parse_memory(one["usage"]["memory"]) == memory

    # The apiserver did the filtering: both the list and the watch asked for it.
    assert node_requests
    assert all(q.get("labelSelector") == "pool=a" for q in node_requests), node_requests
    assert any(q.get("watch") in ("1", "true") for q in node_requests), node_requests
    assert any("watch" not in q for q in node_requests), node_requests
