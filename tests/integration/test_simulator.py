"""The simulated cluster: kubelet bodies against ground truth, faults, the fake apiserver's
list/watch semantics, reviews and the aggregation proxy. Every test has a deadline."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import yaml

from metrics_server.simulator import (
    Cluster,
    ClusterConfig,
    Garbage,
    Hang,
    HttpStatus,
    NoIPSAN,
    Refuse,
    Truncated,
    WrongCA,
    open_cluster,
)
from metrics_server.simulator._selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

DEADLINE = 10.0
META_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
META_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class FakeClock:
    """A wall clock the test moves by hand, so sample timestamps are exact."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def cluster_and_client(
    config: ClusterConfig, token: str = "admin"
) -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    async with open_cluster(config) as cluster:
        tokens = {
            "admin": cluster.admin_token,
            "viewer": cluster.viewer_token,
            "nobody": cluster.nobody_token,
            "ms": cluster.metrics_server_token,
        }
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        async with httpx.AsyncClient(
            base_url=cluster.apiserver_url, verify=context, timeout=DEADLINE,
            headers={"Authorization": f"Bearer {tokens[token]}"},
        ) as client:
            yield cluster, client


def kubelet_client(cluster: Cluster, token: str | None = None) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(cluster.kubelet_ca_file))
    headers = {"Authorization": f"Bearer {token or cluster.metrics_server_token}"}
    return httpx.AsyncClient(verify=context, headers=headers, timeout=DEADLINE)


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is somewhere in the exception's cause/context chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def kubelet_url(cluster: Cluster, node: str) -> str:
    return f"https://127.0.0.1:{cluster.kubelet_port(node)}/metrics/resource"


def parse_body(text: str) -> dict[tuple[str, str], tuple[float, int]]:
    """{(series, labels): (value, timestamp ms)} of a Prometheus text body."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value, *ts = line.split(" ")  # our label values contain no spaces
        name, _, labels = head.partition("{")
        out[(name, labels.rstrip("}"))] = (float(value), int(ts[0]) if ts else 0)
    return out


async def next_event(lines: AsyncIterator[str]) -> dict[str, Any]:
    async for line in lines:
        if line.strip():
            event: dict[str, Any] = json.loads(line)
            return event
    raise AssertionError("watch ended")


# ---- kubelets ------------------------------------------------------------------------------


async def test_kubelet_body_series_match_ground_truth() -> None:
    clock = FakeClock()
    config = ClusterConfig(nodes=2, pods_per_node=4, kubelet_refresh=1.0, clock=clock, seed=7)
    with trio.fail_after(DEADLINE):
        async with open_cluster(config) as cluster, kubelet_client(cluster) as client:
            node = "node-1"
            first = await client.get(kubelet_url(cluster, node))
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = first.text
            for series in ("node_cpu_usage_seconds_total", "node_memory_working_set_bytes",
                           "container_cpu_usage_seconds_total",
                           "container_memory_working_set_bytes", "container_start_time_seconds",
                           "pod_cpu_usage_seconds_total", "pod_memory_working_set_bytes",
                           "resource_scrape_error"):
                assert f"# HELP {series} [STABLE]" in text
                assert f"# TYPE {series} " in text
            assert "resource_scrape_error 0\n" in text

            clock.now += 0.4  # same refresh interval: same timestamp, same body
            assert (await client.get(kubelet_url(cluster, node))).text == text
            t1 = cluster.sample_time()
            clock.now += 30
            second = parse_body((await client.get(kubelet_url(cluster, node))).text)
            t2 = cluster.sample_time()
            first_samples = parse_body(text)
            assert {ts for _, ts in first_samples.values() if ts} == {int(t1 * 1000)}

            cpu1, _ = first_samples[("node_cpu_usage_seconds_total", "")]
            cpu2, ts2 = second[("node_cpu_usage_seconds_total", "")]
            assert ts2 == int(t2 * 1000)
            truth_cpu, truth_mem = cluster.truth_node(node)
            assert round((cpu2 - cpu1) * 1e9 / (t2 - t1)) == pytest.approx(truth_cpu, abs=2)
            assert second[("node_memory_working_set_bytes", "")][0] == truth_mem

            pods = cluster.pod_keys(node)
            assert pods
            for ns, pod in pods:
                for container, (cpu, memory) in cluster.truth_pod(ns, pod).items():
                    labels = f'container="{container}",namespace="{ns}",pod="{pod}"'
                    c1 = first_samples[("container_cpu_usage_seconds_total", labels)][0]
                    c2 = second[("container_cpu_usage_seconds_total", labels)][0]
                    assert round((c2 - c1) * 1e9 / (t2 - t1)) == pytest.approx(cpu, abs=2)
                    assert second[("container_memory_working_set_bytes", labels)][0] == memory
                    start = second[("container_start_time_seconds", labels)][0]
                    assert c2 == pytest.approx(cpu * (t2 - start) / 1e9, rel=1e-9)


async def test_memory_wobble_follows_the_sample_timestamp() -> None:
    clock = FakeClock()
    config = ClusterConfig(nodes=1, pods_per_node=2, clock=clock, memory_wobble=True)
    with trio.fail_after(DEADLINE):
        async with open_cluster(config) as cluster, kubelet_client(cluster) as client:
            seen = set()
            for _ in range(3):
                body = parse_body((await client.get(kubelet_url(cluster, "node-0"))).text)
                memory = body[("node_memory_working_set_bytes", "")][0]
                assert memory == cluster.truth_node("node-0", cluster.sample_time())[1]
                seen.add(memory)
                clock.now += 17
            assert len(seen) == 3


async def test_kubelet_requires_the_metrics_server_token() -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster:
            async with kubelet_client(cluster, token="wrong") as client:
                assert (await client.get(kubelet_url(cluster, "node-0"))).status_code == 401
            async with kubelet_client(cluster) as client:
                other = kubelet_url(cluster, "node-0").replace("/metrics/resource", "/stats")
                assert (await client.get(other)).status_code == 404
                assert (await client.get(kubelet_url(cluster, "node-0"))).status_code == 200


async def test_kubelet_faults_and_recovery() -> None:
    with trio.fail_after(DEADLINE):
        async with open_cluster(ClusterConfig(nodes=2, pods_per_node=1)) as cluster:
            url = kubelet_url(cluster, "node-0")
            async with kubelet_client(cluster) as client:
                cluster.set_fault("node-0", Hang())
                with trio.move_on_after(0.5) as hung:
                    await client.get(url)
                assert hung.cancelled_caught
                # A hung kubelet does not delay another one.
                assert (await client.get(kubelet_url(cluster, "node-1"))).status_code == 200

                cluster.set_fault("node-0", HttpStatus(500))
                assert (await client.get(url)).status_code == 500

                cluster.set_fault("node-0", Garbage())
                response = await client.get(url)
                assert response.status_code == 200
                assert b"node_cpu_usage_seconds_total" not in response.content

                cluster.set_fault("node-0", Truncated())
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(url)

                cluster.set_fault("node-0", Refuse())
                with pytest.raises(httpx.ConnectError):
                    await client.get(url)

                cluster.clear_fault("node-0")
                response = await client.get(url)
                assert response.status_code == 200
                assert "node_cpu_usage_seconds_total" in response.text

                for fault in (WrongCA(), NoIPSAN()):
                    cluster.set_fault("node-0", fault)
                    with pytest.raises(httpx.ConnectError) as failure:
                        await client.get(url)
                    assert caused_by(failure.value, ssl.SSLCertVerificationError)
                cluster.clear_fault("node-0")
                assert (await client.get(url)).status_code == 200


# ---- apiserver: reads ----------------------------------------------------------------------


async def test_authentication_discovery_and_nodes() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=2, pods_per_node=1)) as (cluster, c):
            anonymous = await c.get("/api/v1/nodes", headers={"Authorization": ""})
            assert anonymous.status_code == 401
            assert anonymous.json()["kind"] == "Status"

            groups = (await c.get("/apis")).json()
            metrics = next(g for g in groups["groups"] if g["name"] == "metrics.k8s.io")
            assert metrics["preferredVersion"]["version"] == "v1beta1"
            aggregated = await c.get("/apis", headers={
                "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"})
            assert aggregated.headers["content-type"] == (
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
            names = {r["name"] for r in (await c.get("/api/v1")).json()["resources"]}
            assert {"nodes", "pods", "namespaces", "configmaps"} <= names

            node = (await c.get("/api/v1/nodes/node-1")).json()
            assert node["kind"] == "Node"
            assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
            assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == (
                cluster.kubelet_port("node-1"))
            assert node["status"]["addresses"] == [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": "node-1"},
            ]
            assert node["status"]["allocatable"]["cpu"].endswith("m")
            missing = await c.get("/api/v1/nodes/nope")
            assert missing.status_code == 404
            assert missing.json()["reason"] == "NotFound"

            cm = (await c.get("/api/v1/namespaces/kube-system/configmaps/"
                              "extension-apiserver-authentication")).json()
            assert json.loads(cm["data"]["requestheader-allowed-names"]) == ["front-proxy-client"]
            assert cm["data"]["requestheader-client-ca-file"] == (
                cluster.front_proxy_ca_file.read_text())


async def test_pods_metadata_only_and_selectors() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=3, pods_per_node=4)) as (cluster, c):
            meta = (await c.get("/api/v1/pods", headers={"Accept": META_LIST})).json()
            assert meta["kind"] == "PartialObjectMetadataList"
            assert meta["apiVersion"] == "meta.k8s.io/v1"
            assert len(meta["items"]) == 12
            for item in meta["items"]:
                assert set(item) == {"kind", "apiVersion", "metadata"}
                assert item["metadata"]["managedFields"]

            on_node = (await c.get("/api/v1/pods", params={
                "fieldSelector": "spec.nodeName=node-2,status.phase=Running"})).json()
            assert {p["metadata"]["name"] for p in on_node["items"]} == {
                name for _, name in cluster.pod_keys("node-2")}

            cluster.add_pod("app-9", "special-abc-x1", "node-0", ["a", "b"], {"app": "special"})
            cluster.add_pod("app-9", "other-abc-x1", "node-0", ["a"], {"app": "other", "x": "1"})
            one = (await c.get("/api/v1/namespaces/app-9/pods", params={
                "labelSelector": "app in (special, nothing),!x"})).json()
            assert [p["metadata"]["name"] for p in one["items"]] == ["special-abc-x1"]
            assert [
                c["name"] for c in one["items"][0]["spec"]["containers"]] == ["a", "b"]

            cluster.set_pod_phase("app-9", "special-abc-x1", "Succeeded")
            running = (await c.get("/api/v1/namespaces/app-9/pods", params={
                "fieldSelector": "status.phase=Running"})).json()
            assert [p["metadata"]["name"] for p in running["items"]] == ["other-abc-x1"]

            bad = await c.get("/api/v1/pods", params={"labelSelector": "app in ("})
            assert bad.status_code == 400
            bad = await c.get("/api/v1/pods", params={"fieldSelector": "spec.bogus=1"})
            assert bad.status_code == 400


def test_selector_grammar() -> None:
    labels = {"app": "web", "tier": "frontend", "example.com/team": "a"}
    for text, expected in [
        ("", True), ("app=web", True), ("app==web", True), ("app!=web", False),
        ("app in (web,api)", True), ("app notin (web)", False), ("tier", True), ("!tier", False),
        ("missing!=x", True), ("example.com/team=a,app=web", True), ("app=web,tier=backend", False),
        ("app in (web), tier notin (batch)", True), ("missing notin (x)", True),
    ]:
        assert parse_label_selector(text).matches(labels) is expected, text
    for bad in ("app in", "app in ()", "=x", "app=(", "app in (a b"):
        with pytest.raises(SelectorError):
            parse_label_selector(bad)
    fields = parse_field_selector("metadata.name=a,spec.nodeName!=b", frozenset(
        {"metadata.name", "spec.nodeName"}))
    assert fields.matches({"metadata.name": "a", "spec.nodeName": "c"}.__getitem__)
    assert not fields.matches({"metadata.name": "a", "spec.nodeName": "b"}.__getitem__)


# ---- apiserver: watches --------------------------------------------------------------------


async def test_watch_nodes_sees_mutations_in_order() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=2, pods_per_node=1)) as (cluster, c):
            listed = (await c.get("/api/v1/nodes")).json()
            rv = listed["metadata"]["resourceVersion"]
            async with c.stream("GET", "/api/v1/nodes", params={
                    "watch": "true", "resourceVersion": rv}) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                cluster.add_node("node-new", labels={"pool": "x"}, pods=1)
                event = await next_event(lines)
                assert (event["type"], event["object"]["metadata"]["name"]) == (
                    "ADDED", "node-new")
                assert event["object"]["kind"] == "Node"
                cluster.set_node_labels("node-new", {"pool": "y"})
                event = await next_event(lines)
                assert event["type"] == "MODIFIED"
                assert event["object"]["metadata"]["labels"] == {"pool": "y"}
                cluster.remove_node("node-new")
                event = await next_event(lines)
                assert (event["type"], event["object"]["metadata"]["name"]) == (
                    "DELETED", "node-new")
                assert int(event["object"]["metadata"]["resourceVersion"]) > int(rv)

            # From "0": the current state first, as synthetic ADDED events.
            async with c.stream("GET", "/api/v1/nodes", params={
                    "watch": "1", "resourceVersion": "0", "timeoutSeconds": "1"}) as response:
                events = [json.loads(line) async for line in response.aiter_lines() if line]
            assert [e["type"] for e in events] == ["ADDED", "ADDED"]


async def test_watch_with_selector_turns_relabels_into_added_and_deleted() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=2, pods_per_node=0)) as (cluster, c):
            rv = (await c.get("/api/v1/nodes")).json()["metadata"]["resourceVersion"]
            async with c.stream("GET", "/api/v1/nodes", params={
                    "watch": "1", "resourceVersion": rv, "labelSelector": "pool=gpu"}) as r:
                lines = r.aiter_lines()
                cluster.set_node_labels("node-0", {"pool": "gpu"})
                event = await next_event(lines)
                assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "node-0")
                cluster.set_node_labels("node-1", {"pool": "cpu"})  # not selected: no event
                cluster.set_node_labels("node-0", {"pool": "cpu"})
                event = await next_event(lines)
                assert (event["type"], event["object"]["metadata"]["name"]) == (
                    "DELETED", "node-0")


async def test_watch_metadata_only_pods_and_bookmarks() -> None:
    config = ClusterConfig(nodes=1, pods_per_node=1, bookmark_interval=0.1)
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(config) as (cluster, c):
            listed = (await c.get("/api/v1/pods", headers={"Accept": META_LIST})).json()
            rv = listed["metadata"]["resourceVersion"]
            async with c.stream("GET", "/api/v1/pods", headers={"Accept": META_ONE}, params={
                    "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                    "fieldSelector": "status.phase=Running"}) as response:
                lines = response.aiter_lines()
                event = await next_event(lines)
                assert event["type"] == "BOOKMARK"
                assert event["object"] == {"kind": "PartialObjectMetadata",
                                           "apiVersion": "meta.k8s.io/v1",
                                           "metadata": {"resourceVersion": rv}}
                cluster.add_pod("default", "web-abc-12345", "node-0", ["web"], {"app": "web"})
                event = await next_event(lines)
                while event["type"] == "BOOKMARK":
                    event = await next_event(lines)
                assert event["type"] == "ADDED"
                assert event["object"]["kind"] == "PartialObjectMetadata"
                assert "spec" not in event["object"]
                assert event["object"]["metadata"]["name"] == "web-abc-12345"


async def test_watch_expiry_drop_and_timeout() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=1, pods_per_node=1)) as (cluster, c):
            old_rv = (await c.get("/api/v1/nodes")).json()["metadata"]["resourceVersion"]
            cluster.add_node("node-x")
            cluster.expire_history()
            async with c.stream("GET", "/api/v1/nodes", params={
                    "watch": "1", "resourceVersion": old_rv}) as response:
                events = [json.loads(line) async for line in response.aiter_lines() if line]
            assert len(events) == 1
            assert events[0]["type"] == "ERROR"
            assert events[0]["object"]["code"] == 410
            assert events[0]["object"]["reason"] == "Expired"

            rv = (await c.get("/api/v1/nodes")).json()["metadata"]["resourceVersion"]
            async with c.stream("GET", "/api/v1/nodes", params={
                    "watch": "1", "resourceVersion": rv}) as response:
                lines = response.aiter_lines()
                cluster.remove_node("node-x")
                assert (await next_event(lines))["type"] == "DELETED"
                cluster.drop_watches()
                with pytest.raises(httpx.RemoteProtocolError):
                    await next_event(lines)


async def test_list_faults_and_apiserver_down_up() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=1, pods_per_node=1)) as (cluster, c):
            cluster.fail_lists(2, status=500)
            assert (await c.get("/api/v1/nodes")).status_code == 500
            assert (await c.get("/api/v1/pods")).status_code == 500
            assert (await c.get("/api/v1/nodes")).status_code == 200
            cluster.fail_lists()
            assert (await c.get("/api/v1/nodes")).status_code == 500
            cluster.clear_list_faults()
            assert (await c.get("/api/v1/nodes")).status_code == 200

            port = cluster.apiserver_port
            cluster.apiserver_down()
            with pytest.raises(httpx.TransportError):
                await c.get("/api/v1/nodes")
            cluster.apiserver_up()
            assert cluster.apiserver_port == port
            assert (await c.get("/api/v1/nodes")).status_code == 200


# ---- reviews -------------------------------------------------------------------------------


async def test_token_and_subject_access_reviews() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=1, pods_per_node=0), "ms") as (cl, c):
            review = await c.post("/apis/authentication.k8s.io/v1/tokenreviews", json={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": cl.viewer_token}})
            assert review.status_code == 201
            assert review.json()["status"]["user"]["username"] == "viewer"
            review = await c.post("/apis/authentication.k8s.io/v1/tokenreviews",
                                  json={"spec": {"token": "bogus"}})
            assert review.json()["status"]["authenticated"] is False

            async def allowed(user: str, verb: str, group: str, resource: str) -> bool:
                sar = await c.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json={
                    "spec": {"user": user, "groups": ["system:authenticated"],
                             "resourceAttributes": {"verb": verb, "group": group,
                                                    "resource": resource}}})
                assert sar.status_code == 201
                result: bool = sar.json()["status"]["allowed"]
                return result

            assert await allowed("viewer", "list", "metrics.k8s.io", "pods")
            assert not await allowed("viewer", "list", "", "pods")
            assert not await allowed("nobody", "get", "metrics.k8s.io", "nodes")


# ---- aggregation ---------------------------------------------------------------------------


@asynccontextmanager
async def recording_server(cluster: Cluster) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in metrics server that requires a front-proxy client cert and records requests."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cluster.metrics_server_cert_file, cluster.metrics_server_key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cluster.front_proxy_ca_file)
    seen: list[dict[str, Any]] = []

    async def handle(raw: trio.SocketStream) -> None:
        stream = trio.SSLStream(raw, context, server_side=True)
        try:
            await stream.do_handshake()
            conn = h11.Connection(h11.SERVER)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.EndOfMessage):
                    break
                if isinstance(event, h11.Request):
                    seen.append({
                        "target": event.target.decode(),
                        "headers": [(k.decode(), v.decode()) for k, v in event.headers],
                        "peer": stream.getpeercert(),
                    })
            body = b'{"kind":"NodeMetricsList","items":[]}'
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                ("content-type", "application/json"), ("content-length", str(len(body)))])))
            await stream.send_all(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"https://127.0.0.1:{port}", seen
        nursery.cancel_scope.cancel()


async def test_aggregation_proxy_forwards_identity_with_front_proxy_cert() -> None:
    with trio.fail_after(DEADLINE):
        config = ClusterConfig(nodes=1, pods_per_node=0)
        async with cluster_and_client(config, "viewer") as (cluster, c):
            path = "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=a%3Db"
            assert (await c.get(path)).status_code == 503

            async with recording_server(cluster) as (url, seen):
                cluster.set_metrics_server(url, cluster.ca_file)
                response = await c.get(path, headers={
                    "Accept": "application/json", "X-Remote-User": "forged",
                    "X-Remote-Group": "system:masters"})
                assert response.status_code == 200
                assert response.json()["kind"] == "NodeMetricsList"
                assert response.headers["content-type"] == "application/json"

                (request,) = seen
                assert request["target"] == path
                headers = request["headers"]
                assert [v for k, v in headers if k == "x-remote-user"] == ["viewer"]
                assert [v for k, v in headers if k == "x-remote-group"] == [
                    "system:authenticated"]
                assert ("accept", "application/json") in headers
                assert not [k for k, _ in headers if k == "authorization"]
                subject = dict(rdn[0] for rdn in request["peer"]["subject"])
                assert subject["commonName"] == "front-proxy-client"

                nobody = await c.get(path, headers={
                    "Authorization": f"Bearer {cluster.nobody_token}"})
                assert nobody.status_code == 403
                assert len(seen) == 1

            cluster.set_metrics_server(None)
            assert (await c.get(path)).status_code == 503


async def test_truth_over_http() -> None:
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(ClusterConfig(nodes=2, pods_per_node=2)) as (cluster, c):
            truth = (await c.get("/sim/truth")).json()
            assert set(truth["nodes"]) == {"node-0", "node-1"}
            assert truth["nodes"]["node-0"]["cpu"] == cluster.truth_node("node-0")[0]
            ns, name = cluster.pod_keys()[0]
            containers = truth["pods"][f"{ns}/{name}"]["containers"]
            assert {k: (v["cpu"], v["memory"]) for k, v in containers.items()} == (
                cluster.truth_pod(ns, name))


def _free_port_run(count: int) -> int:
    """A base port whose next `count` ports are free now, below the ephemeral range."""
    for base in range(21000, 32000 - count, 97):
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port run")


async def test_kubelet_shard_processes_serve_the_same_nodes_and_pods() -> None:
    """With kubelet_processes=3, node-1 and node-2 are served by child processes on fixed
    ports; every kubelet answers with exactly the pods the apiserver lists on its node and the
    ground-truth memory, and the nodes advertise those ports."""
    base = _free_port_run(5)
    config = ClusterConfig(nodes=5, pods_per_node=12, kubelet_processes=3, kubelet_port_base=base)
    with trio.fail_after(60):
        async with cluster_and_client(config) as (cluster, api), kubelet_client(cluster) as kc:
            nodes = (await api.get("/api/v1/nodes")).json()["items"]
            ports = {
                n["metadata"]["name"]: n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
                for n in nodes
            }
            assert ports == {f"node-{i}": base + i for i in range(5)}
            assert sorted(cluster.kubelets) == ["node-0", "node-3"]  # the rest are remote
            for node, port in ports.items():
                r = await kc.get(f"https://127.0.0.1:{port}/metrics/resource")
                assert r.status_code == 200, node
                body = parse_body(r.text)
                served = {
                    (labels.split('namespace="')[1].split('"')[0],
                     labels.split('pod="')[1].split('"')[0])
                    for name, labels in body if name == "pod_memory_working_set_bytes"
                }
                assert served == set(cluster.pod_keys(node)), node
                for ns, pod in served:
                    for container, (_, memory) in cluster.truth_pod(ns, pod).items():
                        labels = f'container="{container}",namespace="{ns}",pod="{pod}"'
                        assert body[("container_memory_working_set_bytes", labels)][0] == memory
                assert body[("node_memory_working_set_bytes", "")][0] == cluster.truth_node(node)[1]
            bad = await kc.get(
                f"https://127.0.0.1:{ports['node-1']}/metrics/resource",
                headers={"Authorization": "Bearer wrong"},
            )
            assert bad.status_code == 401


def test_kubelet_processes_need_a_port_base() -> None:
    with pytest.raises(ValueError, match="kubelet_port_base"):
        ClusterConfig(nodes=2, kubelet_processes=2)
    with pytest.raises(ValueError, match="within 1024-65535"):
        ClusterConfig(nodes=10, kubelet_processes=2, kubelet_port_base=65530)


async def test_paged_pod_list_is_the_whole_list_in_order() -> None:
    """limit/continue: the pages, joined, are the unpaged list; a pod added between pages
    after the cursor shows up, one before it does not come back twice."""
    config = ClusterConfig(nodes=3, pods_per_node=7)
    with trio.fail_after(DEADLINE):
        async with cluster_and_client(config) as (cluster, api):
            whole = [
                (p["metadata"]["namespace"], p["metadata"]["name"])
                for p in (await api.get("/api/v1/pods")).json()["items"]
            ]
            assert whole == sorted(whole) and len(whole) == 21
            paged: list[tuple[str, str]] = []
            cont = ""
            while True:
                params = {"limit": "4", **({"continue": cont} if cont else {})}
                body = (await api.get("/api/v1/pods", params=params)).json()
                paged += [(p["metadata"]["namespace"], p["metadata"]["name"])
                          for p in body["items"]]
                assert len(body["items"]) <= 4
                cont = body["metadata"].get("continue", "")
                if not cont:
                    break
                if len(paged) == 8:
                    cluster.add_pod("zz-last", "late", "node-0")
            assert paged == [*whole, ("zz-last", "late")]


# ---- the metrics-server-sim command --------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
CLI_DEADLINE = 90.0


def sim_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """`python -m metrics_server.simulator ARGS` and an environment that imports this checkout
    (the metrics server it starts is `python -m metrics_server` with the same environment)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "metrics_server.simulator", *args], env


def demo_blocks(out: str) -> dict[str, list[tuple[str, str]]]:
    """{kubectl args: [(kubectl line, truth line)]}: each `$ kubectl …` line of the demo and
    the side-by-side lines after it, up to the next blank line, header rows included."""
    blocks: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in out.splitlines():
        if line.startswith("$ kubectl "):
            current = blocks.setdefault(line.removeprefix("$ kubectl "), [])
        elif not line.strip():
            current = None
        elif current is not None:
            left, sep, right = line.partition("| ")
            assert sep, f"not side by side: {line!r}"
            current.append((left.strip(), right.strip()))
    return blocks


def rows_by_key(lines: list[str], key_columns: int) -> dict[str, list[str]]:
    """Header dropped; each row keyed by its first `key_columns` cells joined with '/'."""
    out = {}
    for line in lines[1:]:
        cells = line.split()
        out["/".join(cells[:key_columns])] = cells[key_columns:]
    return out


def millicores(text: str) -> int:
    assert text.endswith("m"), text
    return int(text[:-1])


def assert_figures_match(shown: dict[str, list[str]], truth: dict[str, list[str]],
                         cpu_col: int, mem_col: int) -> None:
    """kubectl's CPU within 2 % (or 1m of rounding) of the truth column; memory (Mi) exact."""
    assert shown and sorted(shown) == sorted(truth)
    for key, cells in shown.items():
        want_cpu, want_mem = truth[key]
        got_cpu = millicores(cells[cpu_col])
        assert abs(got_cpu - millicores(want_cpu)) <= max(0.02 * millicores(want_cpu), 1), key
        assert cells[mem_col] == want_mem, key


@pytest.mark.e2e
async def test_cli_demo_reports_first_scrape_and_matches_truth(tmp_path: Path) -> None:
    argv, env = sim_command("--demo", "--nodes", "2", "--pods-per-node", "2",
                            "--no-memory-wobble", "--workdir", str(tmp_path / "sim"))
    with trio.fail_after(CLI_DEADLINE):
        result = await trio.run_process(argv, env=env, cwd=str(tmp_path), check=False,
                                        capture_stdout=True, capture_stderr=True)
    out, err = result.stdout.decode(), result.stderr.decode()
    log = trio.Path(tmp_path / "sim" / "metrics-server.log")
    log_text = await log.read_text() if await log.exists() else ""
    detail = f"stdout:\n{out}\nstderr:\n{err}\nlog:\n{log_text}"
    assert result.returncode == 0, detail
    assert "Traceback" not in err, detail
    lines = out.splitlines()
    assert "nodes: 2, pods: 4" in lines, detail
    assert "metrics server: first scrape: scraped 2/2 nodes" in lines, detail

    blocks = demo_blocks(out)
    assert list(blocks)[:2] == ["top nodes", "top pods -A"], detail
    assert len(blocks) == 3, detail
    containers_cmd = list(blocks)[2]
    match = re.fullmatch(r"top pod (\S+) -n (\S+) --containers", containers_cmd)
    assert match is not None, containers_cmd

    def sides(cmd: str) -> tuple[list[str], list[str]]:
        shown = [left for left, _ in blocks[cmd] if left]
        truth = [right for _, right in blocks[cmd] if right]
        return shown, truth

    shown, truth = sides("top nodes")
    assert shown[0].split() == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    nodes = rows_by_key(shown, 1)
    assert sorted(nodes) == ["node-0", "node-1"]
    assert_figures_match(nodes, rows_by_key(truth, 1), cpu_col=0, mem_col=2)

    shown, truth = sides("top pods -A")
    assert shown[0].split() == ["NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    pods = rows_by_key(shown, 2)
    assert len(pods) == 4
    assert_figures_match(pods, rows_by_key(truth, 1), cpu_col=0, mem_col=1)

    pod, namespace = match.groups()
    assert f"{namespace}/{pod}" in pods
    shown, truth = sides(containers_cmd)
    assert shown[0].split() == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert all(line.split()[0] == pod for line in shown[1:])
    by_container = {k.split("/", 1)[1]: v for k, v in rows_by_key(shown, 2).items()}
    assert_figures_match(by_container, rows_by_key(truth, 1), cpu_col=0, mem_col=1)


async def kubeconfig_target(path: Path) -> tuple[str, bytes, str] | None:
    """(server, CA PEM, token) once the kubeconfig is completely written, else None."""
    try:
        doc = yaml.safe_load(await trio.Path(path).read_text())
        cluster = doc["clusters"][0]["cluster"]
        token = doc["users"][0]["user"]["token"]
        return cluster["server"], base64.b64decode(cluster["certificate-authority-data"]), token
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None


async def test_cli_cluster_only_writes_kubeconfig_and_stops_cleanly(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "out" / "kubeconfig"
    kubeconfig.parent.mkdir()
    argv, env = sim_command("--no-metrics-server", "--nodes", "2", "--pods-per-node", "1",
                            "--kubeconfig-out", str(kubeconfig))
    stdout_path, stderr_path = trio.Path(tmp_path / "stdout"), trio.Path(tmp_path / "stderr")
    with (tmp_path / "stdout").open("wb") as stdout, (tmp_path / "stderr").open("wb") as stderr:
        process = await trio.lowlevel.open_process(argv, env=env, cwd=str(tmp_path),
                                                   stdout=stdout, stderr=stderr)
    try:
        with trio.fail_after(CLI_DEADLINE):
            while (target := await kubeconfig_target(kubeconfig)) is None:
                assert process.returncode is None, await stderr_path.read_text()
                await trio.sleep(0.05)
            server, ca_pem, token = target
            context = ssl.create_default_context(cadata=ca_pem.decode())
            async with httpx.AsyncClient(
                base_url=server, verify=context, timeout=DEADLINE,
                headers={"Authorization": f"Bearer {token}"},
            ) as client:
                nodes = await client.get("/api/v1/nodes")
                assert nodes.status_code == 200, nodes.text
                names = sorted(n["metadata"]["name"] for n in nodes.json()["items"])
                assert names == ["node-0", "node-1"]
                # Cluster only: nothing behind the aggregator.
                metrics = await client.get("/apis/metrics.k8s.io/v1beta1/nodes")
                assert metrics.status_code == 503
            out = await stdout_path.read_text()
            assert f"kubeconfig: {kubeconfig}" in out.splitlines()
            assert "starting the metrics server" not in out
            found = re.search(r"^workdir:\s+(\S+)$", out, re.MULTILINE)
            assert found is not None, out
            workdir = trio.Path(found[1])
            assert await workdir.is_dir()

            process.send_signal(signal.SIGTERM)
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
    err = await stderr_path.read_text()
    assert code == 0, err
    assert "Traceback" not in err, err
    assert "stopping" in err
    assert not await workdir.exists()  # its temporary workdir was removed on the way out
