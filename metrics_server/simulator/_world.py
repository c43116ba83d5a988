"""The simulated cluster's state: ground truth, Kubernetes objects and the watch event history.

One `World` owns every node, pod and configmap, the global resourceVersion counter and a bounded
history of watch events. Everything here is synchronous and deterministic given the seed and the
clock; the fake apiserver and the fake kubelets only read it.

Ground truth: each container has a constant CPU rate (nanocores, a multiple of 1000 so cumulative
CPU is an exact integer of nanoseconds at millisecond timestamps) and a memory working set. A
node's cumulative CPU is integrated piecewise so that it never goes backwards when pods come
and go.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

__all__ = [
    "Container",
    "Event",
    "Expired",
    "Node",
    "Pod",
    "World",
    "go_float",
    "populate_node",
]

Obj = dict[str, Any]

_WOBBLE_PERIOD_S = 120.0
_WOBBLE_FRACTION = 0.1
_APPS = (
    "web", "api", "worker", "cache", "frontend", "backend", "auth", "search", "billing",
    "checkout", "catalog", "notifier", "ingest", "reports", "gateway",
)
_TIERS = ("frontend", "backend", "cache", "batch")
_SYSTEM_APPS = ("coredns", "kube-proxy", "konnectivity-agent", "csi-node", "metrics-agent")
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
REPLICAS = 10
"""Generated pods per replica set (see `World.generate_pod_spec`)."""


def go_float(value: float) -> str:
    """Format like Go's strconv.FormatFloat(v, 'g', -1, 64), which Prometheus' expfmt uses."""
    value = float(value)
    if 1e-4 <= abs(value) < 1e6:
        # Fast path: here Python's repr is already the shortest decimal form Go prints.
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if value == 0:
        return "0"
    # repr gives the shortest round-tripping digits, as Go's -1 precision does.
    digits = repr(value).split("e")[0].lstrip("-").replace(".", "").strip("0") or "0"
    exp_form = f"{value:.{len(digits) - 1}e}"
    exponent = int(exp_form.split("e")[1])
    if exponent < -4 or exponent >= 6:
        return exp_form
    return f"{value:.{max(len(digits) - 1 - exponent, 0)}f}"


@functools.lru_cache(maxsize=65536)
def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suffix(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_HASH_ALPHABET) for _ in range(n))


def _uid(*parts: object) -> str:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(slots=True)
class Container:
    """One container's ground truth and its pre-rendered Prometheus label set."""

    name: str
    cpu: int
    """Constant CPU rate in nanocores (a multiple of 1000)."""
    memory: int
    """Base memory working set in bytes."""
    start: int
    """Start time, whole seconds since the epoch."""
    phase: float
    """Wobble phase in radians."""
    labels: str
    """`{container="…",namespace="…",pod="…"}`."""
    start_text: str = ""
    """The start time as rendered (constant, so formatted once)."""
    memory_text: str = ""
    """The memory as rendered while it does not wobble."""

    def __post_init__(self) -> None:
        self.start_text = go_float(self.start)
        self.memory_text = go_float(self.memory)

    def memory_at(self, t_ms: int, wobble: bool) -> int:
        if not wobble:
            return self.memory
        angle = 2 * math.pi * (t_ms / 1000.0) / _WOBBLE_PERIOD_S + self.phase
        return self.memory + int(self.memory * _WOBBLE_FRACTION * math.sin(angle))

    def cpu_ns_at(self, t_ms: int) -> int:
        elapsed_ms = max(t_ms - self.start * 1000, 0)
        return self.cpu * elapsed_ms // 1000


@dataclass(slots=True)
class Pod:
    namespace: str
    name: str
    node: str
    labels: dict[str, str]
    containers: list[Container]
    created: int
    phase: str = "Running"
    obj: Obj = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(slots=True)
class Node:
    name: str
    labels: dict[str, str]
    created: int
    boot: int
    """Boot time, whole seconds since the epoch."""
    system_cpu: int
    system_memory: int
    cpu_capacity: int
    """Whole cores."""
    memory_capacity_gi: int
    kubelet_port: int = 0
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    cpu_base_ns: int = 0
    """Cumulative CPU integrated up to `cpu_mark_ms`."""
    cpu_mark_ms: int = 0
    generation: int = 0
    """Bumped whenever the kubelet body must be re-rendered for a reason other than time."""
    cached_key: tuple[int, int] = (-1, -1)
    cached_body: bytes = b""
    cached_gzip: bytes | None = None
    """`cached_body` gzipped, made on the first request that accepts gzip."""
    obj: Obj = field(default_factory=dict)

    def running(self) -> Iterable[Pod]:
        return (pod for pod in self.pods.values() if pod.phase == "Running")

    def cpu_rate(self) -> int:
        return self.system_cpu + sum(c.cpu for pod in self.running() for c in pod.containers)

    def cpu_ns_at(self, t_ms: int) -> int:
        return self.cpu_base_ns + self.cpu_rate() * max(t_ms - self.cpu_mark_ms, 0) // 1000

    def memory_at(self, t_ms: int, wobble: bool) -> int:
        return self.system_memory + sum(
            c.memory_at(t_ms, wobble) for pod in self.running() for c in pod.containers
        )


@dataclass(slots=True)
class Event:
    """One watch event. `old` is the object before the change (for selector transitions)."""

    rv: int
    resource: str
    type: str
    old: Obj | None
    new: Obj
    encoded: dict[str, bytes] = field(default_factory=dict)
    """Serialized forms keyed by (mode, type), shared by every watcher."""


class Expired(Exception):
    """The requested resourceVersion is older than the retained history (HTTP 410)."""


_HELP = {
    "container_cpu_usage_seconds_total": (
        "counter", "Cumulative cpu time consumed by the container in core-seconds"),
    "container_memory_working_set_bytes": (
        "gauge", "Current working set of the container in bytes"),
    "container_start_time_seconds": (
        "gauge", "Start time of the container since unix epoch in seconds"),
    "node_cpu_usage_seconds_total": (
        "counter", "Cumulative cpu time consumed by the node in core-seconds"),
    "node_memory_working_set_bytes": ("gauge", "Current working set of the node in bytes"),
    "pod_cpu_usage_seconds_total": (
        "counter", "Cumulative cpu time consumed by the pod in core-seconds"),
    "pod_memory_working_set_bytes": ("gauge", "Current working set of the pod in bytes"),
    "resource_scrape_error": (
        "gauge", "1 if there was an error while getting container metrics, 0 otherwise"),
}
HEADERS = {
    name: f"# HELP {name} [STABLE] {text}\n# TYPE {name} {kind}\n"
    for name, (kind, text) in _HELP.items()
}


def _seconds(ns: int) -> str:
    return go_float(ns / 1e9)


class World:
    """All state of one simulated cluster; every mutation bumps the RV and records events."""

    def __init__(
        self,
        *,
        seed: int,
        clock: Callable[[], float],
        refresh: float,
        wobble: bool,
        history_limit: int,
        on_node_added: Callable[[Node], None] | None = None,
        on_node_removed: Callable[[Node], None] | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.refresh_ms = max(round(refresh * 1000), 1)
        self.wobble = wobble
        self.history_limit = history_limit
        self.on_node_added = on_node_added
        self.on_node_removed = on_node_removed
        self.rv = 1
        self.history: deque[Event] = deque()
        self.floor = 1
        """Every event with rv > floor is still in `history`."""
        self.nodes: dict[str, Node] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.configmaps: dict[tuple[str, str], Obj] = {}
        self.namespaces: dict[str, Obj] = {}
        self._wakeup = trio.Event()
        self.drop_generation = 0

    # ---- time -------------------------------------------------------------------------------

    def tick_ms(self) -> int:
        """The current sample timestamp: wall clock quantized to the kubelet refresh interval."""
        now_ms = int(self.clock() * 1000)
        return now_ms - now_ms % self.refresh_ms

    def now_s(self) -> int:
        return int(self.clock())

    # ---- watch plumbing ---------------------------------------------------------------------

    @property
    def changed(self) -> trio.Event:
        """Set at the next event or watch drop. Take it *before* reading events, then wait."""
        return self._wakeup

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = trio.Event()

    def drop_watches(self) -> None:
        self.drop_generation += 1
        self._wake()

    def expire_history(self) -> None:
        self.history.clear()
        self.floor = self.rv

    def events_since(self, rv: int) -> list[Event]:
        if rv < self.floor:
            raise Expired(f"too old resource version: {rv} ({self.floor})")
        if not self.history or self.history[-1].rv <= rv:
            return []
        # History is sorted by rv; scan from the right since watchers are usually near the end.
        out: list[Event] = []
        for event in reversed(self.history):
            if event.rv <= rv:
                break
            out.append(event)
        out.reverse()
        return out

    def _emit(self, resource: str, type_: str, old: Obj | None, new: Obj) -> None:
        self.history.append(Event(self.rv, resource, type_, old, new))
        while len(self.history) > self.history_limit:
            self.floor = self.history.popleft().rv
        self._wake()

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    # ---- objects ----------------------------------------------------------------------------

    def _meta(
        self, name: str, namespace: str | None, created: int, labels: Mapping[str, str], *,
        annotations: Mapping[str, str], manager: str,
    ) -> Obj:
        meta: Obj = {"name": name}
        if namespace is not None:
            meta["namespace"] = namespace
        meta.update({
            "uid": _uid(self.seed, namespace, name, created),
            "resourceVersion": str(self.rv),
            "creationTimestamp": _rfc3339(created),
            "labels": dict(labels),
            "annotations": dict(annotations),
            "managedFields": [{
                "manager": manager,
                "operation": "Update",
                "apiVersion": "v1",
                "time": _rfc3339(created),
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}, "f:annotations": {}}},
            }],
        })
        return meta

    def _node_object(self, node: Node) -> Obj:
        cpu_alloc_m = node.cpu_capacity * 1000 - 90
        mem_alloc_ki = node.memory_capacity_gi * 1024 * 1024 - 360_448
        ready_since = _rfc3339(node.created)
        return {
            "metadata": self._meta(
                node.name, None, node.created, node.labels,
                annotations={
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
                manager="kubelet",
            ),
            "spec": {"podCIDR": "10.244.0.0/24", "providerID": f"sim://{node.name}"},
            "status": {
                "capacity": {
                    "cpu": str(node.cpu_capacity),
                    "memory": f"{node.memory_capacity_gi}Gi",
                    "pods": "110",
                    "ephemeral-storage": "100Gi",
                },
                "allocatable": {
                    "cpu": f"{cpu_alloc_m}m",
                    "memory": f"{mem_alloc_ki}Ki",
                    "pods": "110",
                    "ephemeral-storage": "95Gi",
                },
                "conditions": [{
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": ready_since,
                    "lastTransitionTime": ready_since,
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": node.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": node.kubelet_port}},
                "nodeInfo": {
                    "kubeletVersion": "v1.35.0-sim",
                    "containerRuntimeVersion": "containerd://2.0.0",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "osImage": "Simulated Linux",
                    "kernelVersion": "6.8.0",
                },
            },
        }

    def _pod_object(self, pod: Pod) -> Obj:
        app = pod.labels.get("app", pod.name)
        meta = self._meta(
            pod.name, pod.namespace, pod.created, pod.labels,
            annotations={"kubectl.kubernetes.io/restartedAt": _rfc3339(pod.created)},
            manager="kube-controller-manager",
        )
        meta["generateName"] = pod.name.rsplit("-", 1)[0] + "-"
        meta["ownerReferences"] = [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": meta["generateName"][:-1],
            "uid": _uid(self.seed, pod.namespace, app), "controller": True,
            "blockOwnerDeletion": True,
        }]
        running = pod.phase == "Running"
        return {
            "metadata": meta,
            "spec": {
                "nodeName": pod.node,
                "containers": [
                    {
                        "name": c.name,
                        "image": f"registry.example/{app}/{c.name}:1.0",
                        "resources": {"requests": {
                            "cpu": f"{max(c.cpu // 1_000_000, 1)}m",
                            "memory": f"{max(c.memory // 1024 // 1024, 1)}Mi",
                        }},
                    }
                    for c in pod.containers
                ],
                "restartPolicy": "Always",
                "serviceAccountName": "default",
            },
            "status": {
                "phase": pod.phase,
                "hostIP": "127.0.0.1",
                "podIP": "10.244.0.1",
                "startTime": _rfc3339(pod.created),
                "conditions": [{"type": "Ready", "status": "True" if running else "False"}],
                "containerStatuses": [
                    {
                        "name": c.name, "ready": running, "restartCount": 0,
                        "image": f"registry.example/{app}/{c.name}:1.0",
                        "state": (
                            {"running": {"startedAt": _rfc3339(c.start)}} if running
                            else {"terminated": {"exitCode": 0, "reason": "Completed"}}
                        ),
                    }
                    for c in pod.containers
                ],
            },
        }

    # ---- generation -------------------------------------------------------------------------

    def rng(self, *parts: object) -> random.Random:
        return random.Random("/".join(map(str, (self.seed, *parts))))

    def make_containers(
        self, namespace: str, pod: str, names: Iterable[str], start: int
    ) -> list[Container]:
        out = []
        for name in names:
            rng = self.rng("container", namespace, pod, name)
            cpu_milli = math.exp(rng.uniform(math.log(1), math.log(200)))
            cpu = max(int(cpu_milli * 1000), 1) * 1000
            memory = int(math.exp(rng.uniform(math.log(8 << 20), math.log(1 << 30)))) // 4096 * 4096
            labels = (
                f'{{container="{_escape(name)}",namespace="{_escape(namespace)}",'
                f'pod="{_escape(pod)}"}}'
            )
            out.append(Container(name, cpu, memory, start, rng.uniform(0, 2 * math.pi), labels))
        return out

    def generate_pod_spec(
        self, node: str, index: int
    ) -> tuple[str, str, dict[str, str], list[str]]:
        """A realistic (namespace, name, labels, container names) for the index-th pod of node.

        Pods come in replica sets of `REPLICAS` consecutive pods of one node: same namespace,
        app and pod-template-hash, so an HPA-style selector (`app=…,pod-template-hash=…`)
        matches about ten pods whatever the cluster size.
        """
        group = self.rng("group", node, index // REPLICAS)
        roll = group.random()
        if roll < 0.15:
            namespace, app = "kube-system", group.choice(_SYSTEM_APPS)
        elif roll < 0.3:
            namespace, app = "default", group.choice(_APPS)
        else:
            namespace, app = f"app-{group.randrange(3)}", group.choice(_APPS)
        rs_hash = _suffix(group, 10)
        count = group.choice((1, 1, 1, 2, 2, 3))
        rng = self.rng("pod", node, index)
        # Deployment-style name; the loop keeps names unique across the cluster.
        name = f"{app}-{rs_hash}-{_suffix(rng, 5)}"
        while (namespace, name) in self.pods:
            name = f"{app}-{rs_hash}-{_suffix(rng, 5)}"
        labels = {"app": app, "tier": rng.choice(_TIERS), "pod-template-hash": rs_hash}
        containers = [app, "sidecar", "log-shipper"][:count]
        return namespace, name, labels, containers

    # ---- mutations --------------------------------------------------------------------------

    def ensure_namespace(self, name: str) -> None:
        if name in self.namespaces:
            return
        self._bump()
        created = self.now_s()
        obj = {
            "metadata": self._meta(name, None, created, {"kubernetes.io/metadata.name": name},
                                   annotations={}, manager="kube-apiserver"),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        self.namespaces[name] = obj
        self._emit("namespaces", "ADDED", None, obj)

    def set_configmap(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.ensure_namespace(namespace)
        old = self.configmaps.get((namespace, name))
        self._bump()
        obj = {
            "metadata": self._meta(name, namespace, self.now_s(), {}, annotations={},
                                   manager="kube-apiserver"),
            "data": dict(data),
        }
        self.configmaps[(namespace, name)] = obj
        self._emit("configmaps", "MODIFIED" if old else "ADDED", old, obj)

    def add_node(
        self, name: str, labels: Mapping[str, str] | None = None, kubelet_port: int = 0
    ) -> Node:
        if name in self.nodes:
            raise ValueError(f"node {name!r} already exists")
        rng = self.rng("node", name)
        now = self.now_s()
        boot = now - rng.randrange(3600, 30 * 86400)
        node = Node(
            name=name,
            labels={
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": f"zone-{'abc'[rng.randrange(3)]}",
                "node.kubernetes.io/instance-type": rng.choice(("sim.large", "sim.xlarge")),
                **(labels or {}),
            },
            created=boot,
            boot=boot,
            system_cpu=rng.randrange(50, 300) * 1_000_000,
            system_memory=rng.randrange(300, 1200) << 20,
            cpu_capacity=rng.choice((4, 8, 16)),
            memory_capacity_gi=rng.choice((16, 32, 64)),
            kubelet_port=kubelet_port,
        )
        tick = self.tick_ms()
        node.cpu_mark_ms = tick
        # As if the system rate had been constant since boot.
        node.cpu_base_ns = node.system_cpu * max(tick - boot * 1000, 0) // 1000
        self.nodes[name] = node
        if self.on_node_added is not None:
            self.on_node_added(node)
        self._bump()
        node.obj = self._node_object(node)
        self._emit("nodes", "ADDED", None, node.obj)
        return node

    def set_kubelet_port(self, name: str, port: int) -> None:
        node = self.nodes[name]
        if node.kubelet_port == port:
            return
        node.kubelet_port = port
        self._update_node(node)

    def _update_node(self, node: Node) -> None:
        old = node.obj
        self._bump()
        node.obj = self._node_object(node)
        self._emit("nodes", "MODIFIED", old, node.obj)

    def set_node_labels(self, name: str, labels: Mapping[str, str]) -> None:
        node = self.nodes[name]
        node.labels = dict(labels)
        self._update_node(node)

    def remove_node(self, name: str) -> None:
        node = self.nodes[name]
        for key in list(node.pods):
            self.remove_pod(*key)
        del self.nodes[name]
        if self.on_node_removed is not None:
            self.on_node_removed(node)
        old = node.obj
        self._bump()
        gone = _with_rv(old, self.rv)
        self._emit("nodes", "DELETED", old, gone)

    def _mark_node(self, node: Node) -> None:
        """Fold the cumulative CPU up to now into the base before the node's rate changes."""
        tick = self.tick_ms()
        if tick > node.cpu_mark_ms:
            node.cpu_base_ns = node.cpu_ns_at(tick)
            node.cpu_mark_ms = tick
        node.generation += 1

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        containers: Iterable[str] | Mapping[str, tuple[int, int]] = ("main",),
        labels: Mapping[str, str] | None = None,
        *,
        start: int | None = None,
    ) -> Pod:
        """Add a running pod. `containers` is names (truth drawn from the seed) or a mapping
        name → (cpu nanocores, memory bytes) to pin the truth."""
        if (namespace, name) in self.pods:
            raise ValueError(f"pod {namespace}/{name} already exists")
        host = self.nodes[node]
        started = self.tick_ms() // 1000 if start is None else start
        made = self.make_containers(namespace, name, list(containers), started)
        if isinstance(containers, Mapping):
            for c in made:
                cpu, memory = containers[c.name]
                c.cpu, c.memory, c.memory_text = cpu - cpu % 1000, memory, go_float(memory)
        self.ensure_namespace(namespace)
        pod = Pod(namespace, name, node, dict(labels or {}), made, created=started)
        self._mark_node(host)
        host.pods[pod.key] = pod
        self.pods[pod.key] = pod
        self._bump()
        pod.obj = self._pod_object(pod)
        self._emit("pods", "ADDED", None, pod.obj)
        return pod

    def remove_pod(self, namespace: str, name: str) -> None:
        pod = self.pods.pop((namespace, name))
        host = self.nodes[pod.node]
        self._mark_node(host)
        del host.pods[pod.key]
        old = pod.obj
        self._bump()
        self._emit("pods", "DELETED", old, _with_rv(old, self.rv))

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        pod = self.pods[(namespace, name)]
        self._mark_node(self.nodes[pod.node])
        pod.phase = phase
        old = pod.obj
        self._bump()
        pod.obj = self._pod_object(pod)
        self._emit("pods", "MODIFIED", old, pod.obj)

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        pod = self.pods[(namespace, name)]
        pod.labels = dict(labels)
        old = pod.obj
        self._bump()
        pod.obj = self._pod_object(pod)
        self._emit("pods", "MODIFIED", old, pod.obj)

    # ---- kubelet ----------------------------------------------------------------------------

    def kubelet_body(self, name: str) -> bytes:
        """The node's /metrics/resource body at the current tick, rendered once per tick."""
        node = self.nodes[name]
        tick = self.tick_ms()
        key = (tick, node.generation)
        if node.cached_key != key:
            node.cached_body = self._render(node, tick)
            node.cached_gzip = None
            node.cached_key = key
        return node.cached_body

    def kubelet_body_gzip(self, name: str) -> bytes:
        """`kubelet_body` gzipped (level 1: the simulator's CPU is not what is measured)."""
        body = self.kubelet_body(name)
        node = self.nodes[name]
        if node.cached_gzip is None:
            node.cached_gzip = gzip.compress(body, compresslevel=1, mtime=0)
        return node.cached_gzip

    def _render(self, node: Node, t: int) -> bytes:
        ts = f" {t}\n"
        pods = sorted(node.running(), key=lambda p: p.key)
        cpu_lines = []
        mem_lines = []
        start_lines = []
        pod_cpu = []
        pod_mem = []
        for pod in pods:
            total_cpu = 0
            total_mem = 0
            wobble = self.wobble
            for c in pod.containers:
                cpu = c.cpu_ns_at(t)
                mem = c.memory_at(t, wobble)
                total_cpu += cpu
                total_mem += mem
                labels = c.labels
                mem_text = go_float(mem) if wobble else c.memory_text
                cpu_lines.append(f"container_cpu_usage_seconds_total{labels} {_seconds(cpu)}{ts}")
                mem_lines.append(f"container_memory_working_set_bytes{labels} {mem_text}{ts}")
                start_lines.append(f"container_start_time_seconds{labels} {c.start_text}{ts}")
            pod_labels = f'{{namespace="{_escape(pod.namespace)}",pod="{_escape(pod.name)}"}}'
            pod_cpu.append(f"pod_cpu_usage_seconds_total{pod_labels} {_seconds(total_cpu)}{ts}")
            pod_mem.append(f"pod_memory_working_set_bytes{pod_labels} {go_float(total_mem)}{ts}")
        parts = [
            HEADERS["container_cpu_usage_seconds_total"], *cpu_lines,
            HEADERS["container_memory_working_set_bytes"], *mem_lines,
            HEADERS["container_start_time_seconds"], *start_lines,
            HEADERS["node_cpu_usage_seconds_total"],
            f"node_cpu_usage_seconds_total {_seconds(node.cpu_ns_at(t))}{ts}",
            HEADERS["node_memory_working_set_bytes"],
            f"node_memory_working_set_bytes {go_float(node.memory_at(t, self.wobble))}{ts}",
            HEADERS["pod_cpu_usage_seconds_total"], *pod_cpu,
            HEADERS["pod_memory_working_set_bytes"], *pod_mem,
            HEADERS["resource_scrape_error"], "resource_scrape_error 0\n",
        ]
        return "".join(parts).encode()

    # ---- truth ------------------------------------------------------------------------------

    def _at(self, timestamp: float | None) -> int:
        if timestamp is None:
            return self.tick_ms()
        return int(timestamp * 1000)

    def truth_pod(
        self, namespace: str, name: str, timestamp: float | None = None
    ) -> dict[str, tuple[int, int]]:
        pod = self.pods[(namespace, name)]
        t = self._at(timestamp)
        return {c.name: (c.cpu, c.memory_at(t, self.wobble)) for c in pod.containers}

    def truth_node(self, name: str, timestamp: float | None = None) -> tuple[int, int]:
        node = self.nodes[name]
        return node.cpu_rate(), node.memory_at(self._at(timestamp), self.wobble)

    def truth(self, timestamp: float | None = None) -> Obj:
        t = self._at(timestamp)
        return {
            "timestamp": t / 1000,
            "nodes": {
                n.name: {"cpu": n.cpu_rate(), "memory": n.memory_at(t, self.wobble)}
                for n in self.nodes.values()
            },
            "pods": {
                f"{p.namespace}/{p.name}": {
                    "namespace": p.namespace,
                    "name": p.name,
                    "node": p.node,
                    "phase": p.phase,
                    "containers": {
                        c.name: {"cpu": c.cpu, "memory": c.memory_at(t, self.wobble)}
                        for c in p.containers
                    },
                }
                for p in self.pods.values()
            },
        }


def _with_rv(obj: Obj, rv: int) -> Obj:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}


def populate_node(
    world: World,
    name: str,
    labels: Mapping[str, str] | None,
    pods: int | Iterable[tuple[str, str]],
    *,
    initial: bool,
) -> None:
    """Add a node and its pods to `world`: a count of pods is generated from the seed, so a
    kubelet shard process that populates the same node gets the same pods."""
    world.add_node(name, labels)
    specs = (
        [world.generate_pod_spec(name, i) for i in range(pods)] if isinstance(pods, int)
        else [(ns, pod, {"app": pod.rsplit("-", 2)[0]}, ["main"]) for ns, pod in pods]
    )
    for ns, pod, pod_labels, containers in specs:
        start = None
        if initial:
            # Initial pods have been running for a while, as in a real cluster.
            age = world.rng("age", ns, pod).randrange(600, 5 * 86400)
            start = max(world.now_s() - age, world.nodes[name].boot + 60)
        world.add_pod(ns, pod, name, containers, pod_labels, start=start)
