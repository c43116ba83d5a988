"""Node and pod caches: reduction of objects, listener notifications, indexes."""

from __future__ import annotations

from typing import Any

from metrics_server.kube.cache import NodeCache, PodCache
from metrics_server.models import NodeInfo


def node_obj(name: str, labels: dict[str, str] | None = None, port: int = 10250) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": labels or {},
            "annotations": {"metrics.k8s.io/resource-metrics-path": "/x", "other": "y"},
            "managedFields": [{"manager": "kubelet"}],
        },
        "status": {
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        },
    }


def pod_obj(ns: str, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "labels": labels or {}}}


def test_node_cache_reduces_and_notifies() -> None:
    events: list[tuple[str, NodeInfo | None]] = []
    cache = NodeCache()
    cache.subscribe(lambda n, i: events.append((n, i)))
    cache.replace([node_obj("a"), node_obj("b")])
    assert [e[0] for e in events] == ["a", "b"]
    info = cache.get("a")
    assert info is not None
    assert info.addresses == (("InternalIP", "10.0.0.1"),)
    assert info.kubelet_port == 10250
    assert info.metrics_path == "/x"

    events.clear()
    cache.upsert(node_obj("a"))  # unchanged: no notification
    assert events == []
    cache.upsert(node_obj("a", {"role": "w"}))
    assert events[0][0] == "a" and events[0][1] is not None and events[0][1].labels == {"role": "w"}

    events.clear()
    cache.replace([node_obj("a", {"role": "w"})])  # b vanished during a relist
    assert events == [("b", None)]
    cache.delete(node_obj("a"))
    assert events[-1] == ("a", None)
    assert len(cache) == 0


def test_late_subscriber_sees_existing_nodes() -> None:
    cache = NodeCache()
    cache.replace([node_obj("a")])
    seen: list[str] = []
    cache.subscribe(lambda n, i: seen.append(n))
    assert seen == ["a"]


def test_pod_cache_namespaces_and_order() -> None:
    cache = PodCache()
    cache.replace([pod_obj("b", "p2"), pod_obj("a", "p9"), pod_obj("b", "p1")])
    assert len(cache) == 3
    assert [(p.namespace, p.name) for p in cache.all_sorted()] == [
        ("a", "p9"),
        ("b", "p1"),
        ("b", "p2"),
    ]
    assert [p.name for p in cache.in_namespace("b")] == ["p1", "p2"]
    cache.upsert(pod_obj("b", "p1", {"app": "x"}))
    assert len(cache) == 3
    got = cache.get("b", "p1")
    assert got is not None and got.labels == {"app": "x"}
    cache.delete(pod_obj("a", "p9"))
    assert len(cache) == 2 and cache.get("a", "p9") is None
    assert list(cache.in_namespace("a")) == []


def test_objects_without_names_are_ignored() -> None:
    cache = PodCache()
    cache.replace([{"metadata": {"name": "x"}}, {"metadata": {}}])
    assert len(cache) == 0


def test_label_index_agrees_with_a_full_scan_under_churn() -> None:
    import random

    rng = random.Random(5)
    cache = PodCache()
    namespaces = ["a", "b"]
    values = ["x", "y", "z"]

    def random_pod() -> dict[str, Any]:
        labels = {k: rng.choice(values) for k in ("app", "tier") if rng.random() < 0.8}
        return pod_obj(rng.choice(namespaces), f"p{rng.randrange(30)}", labels)

    for step in range(400):
        roll = rng.random()
        if roll < 0.6:
            cache.upsert(random_pod())
        elif roll < 0.95:
            cache.delete(random_pod())
        else:
            cache.replace([random_pod() for _ in range(20)])
        for ns in namespaces:
            everyone = list(cache.in_namespace(ns))
            for key in ("app", "tier", "missing"):
                for chosen in (["x"], ["y", "z"], []):
                    want = [p for p in everyone if p.labels.get(key) in chosen]
                    got = cache.with_label(ns, key, chosen)
                    assert got == want, (step, ns, key, chosen)
    assert len(cache) == sum(len(list(cache.in_namespace(ns))) for ns in namespaces)
