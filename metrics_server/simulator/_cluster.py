"""The simulated cluster as one object: configuration, start-up and shutdown, and the public
mutation, fault and ground-truth API that tests, the CLI and benchmarks use.

`run_cluster` is a trio service (`cluster = await nursery.start(run_cluster, config)`) and
`open_cluster` wraps it as an async context manager. The cluster owns its work directory (a
temporary one unless given), its PKI, one fake apiserver and one fake kubelet per node, all in
a nursery that `run_cluster` owns.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from metrics_server.simulator._apiserver import FakeAPIServer
from metrics_server.simulator._auth import ADMIN, METRICS_SERVER, NOBODY, VIEWER, User
from metrics_server.simulator._certs import PKI
from metrics_server.simulator._kubelet import FakeKubelet
from metrics_server.simulator._shards import ShardSpec, start_kubelet_shards
from metrics_server.simulator._world import Node, World, populate_node
from metrics_server.simulator.faults import Fault

__all__ = ["Cluster", "ClusterConfig", "open_cluster", "run_cluster"]

EXTENSION_AUTH = ("kube-system", "extension-apiserver-authentication")
PROXY_CONNECT_TIMEOUT = 5.0
PROXY_READ_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """How to build a simulated cluster. Everything is deterministic given `seed` and `clock`."""

    nodes: int = 3
    """Initial node count; nodes are named node-0, node-1, …"""
    pods_per_node: int = 10
    """Initial pods per node, spread over default, kube-system and app-0..2."""
    kubelet_refresh: float = 1.0
    """Seconds between kubelet samples; scrapes within one interval see the same timestamp."""
    seed: int = 0
    """Seeds names, labels and the per-container CPU/memory ground truth."""
    workdir: Path | None = None
    """Where PEMs and kubeconfigs are written; a temporary directory (removed at exit) if None."""
    apiserver_port: int = 0
    """0 picks an ephemeral port."""
    memory_wobble: bool = False
    """Memory moves over time as a function of the sample timestamp."""
    bookmark_interval: float = 60.0
    """Seconds between BOOKMARK events on watches that allow them."""
    history_limit: int = 10_000
    """Watch events kept; a watch from an older resourceVersion gets 410 Expired."""
    faults: Mapping[str, Fault] = field(default_factory=dict)
    """Faults set on nodes from the start (e.g. {"node-1": NoIPSAN()})."""
    clock: Callable[[], float] = time.time
    """Wall clock in seconds since the epoch, used for sample timestamps."""
    kubelet_port_base: int = 0
    """When set, the initial node-i's kubelet listens on 127.0.0.1:(base + i); 0 = ephemeral."""
    kubelet_processes: int = 1
    """Processes serving the initial nodes' kubelets: node-i is served by process i mod this
    (0 is this one; the others are `_shards.py` children). More than 1 needs a port base."""

    def __post_init__(self) -> None:
        if self.kubelet_processes < 1:
            raise ValueError("kubelet_processes must be at least 1")
        if self.kubelet_processes > 1 and not self.kubelet_port_base:
            raise ValueError("kubelet_processes > 1 needs kubelet_port_base")
        if self.kubelet_port_base and not 1024 <= self.kubelet_port_base <= 65535 - self.nodes:
            raise ValueError(
                f"kubelet_port_base {self.kubelet_port_base}: the {self.nodes} ports from it "
                "must lie within 1024-65535"
            )


def _kubeconfig(server: str, ca_pem: bytes, user: str, token: str) -> str:
    ca = base64.b64encode(ca_pem).decode()
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        "- name: sim\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {ca}\n"
        "contexts:\n"
        "- name: sim\n"
        "  context:\n"
        "    cluster: sim\n"
        f"    user: {user}\n"
        "current-context: sim\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    token: {token}\n"
    )


class Cluster:
    """A running simulated cluster. Mutation and fault methods are synchronous and take effect
    (watch events recorded, listeners closed or bound) before they return."""

    def __init__(self, config: ClusterConfig, workdir: Path, nursery: trio.Nursery) -> None:
        self.config = config
        self.workdir = workdir
        self._nursery = nursery
        self.pki = PKI(workdir / "pki")
        self.admin_token = secrets.token_hex(16)
        self.metrics_server_token = secrets.token_hex(16)
        self.viewer_token = secrets.token_hex(16)
        self.nobody_token = secrets.token_hex(16)
        self.tokens: dict[str, User] = {
            self.admin_token: ADMIN,
            self.metrics_server_token: METRICS_SERVER,
            self.viewer_token: VIEWER,
            self.nobody_token: NOBODY,
        }
        self.kubelets: dict[str, FakeKubelet] = {}
        self._fixed_ports: dict[str, int] = {}
        """Initial nodes with a fixed kubelet port."""
        self._remote: set[str] = set()
        """Initial nodes whose kubelet a shard process serves (no faults for those)."""
        self.world = World(
            seed=config.seed,
            clock=config.clock,
            refresh=config.kubelet_refresh,
            wobble=config.memory_wobble,
            history_limit=config.history_limit,
            on_node_added=self._start_kubelet,
            on_node_removed=self._stop_kubelet,
        )
        self.apiserver = FakeAPIServer(
            world=self.world,
            ssl_context=self.pki.apiserver_context(),
            tokens=self.tokens,
            bookmark_interval=config.bookmark_interval,
            nursery=nursery,
            port=config.apiserver_port,
        )
        self.kubeconfig_path = workdir / "kubeconfig"
        self.metrics_server_kubeconfig_path = workdir / "metrics-server.kubeconfig"

    # ---- addresses and files ----------------------------------------------------------------

    @property
    def apiserver_port(self) -> int:
        return self.apiserver.port

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver.port}"

    @property
    def ca_file(self) -> Path:
        """The cluster CA (signs the apiserver's and the metrics server's serving certs)."""
        return self.pki.cluster_ca_file

    @property
    def kubelet_ca_file(self) -> Path:
        return self.pki.kubelet_ca_file

    @property
    def front_proxy_ca_file(self) -> Path:
        return self.pki.front_proxy_ca_file

    @property
    def metrics_server_cert_file(self) -> Path:
        return self.pki.metrics_server_cert_file

    @property
    def metrics_server_key_file(self) -> Path:
        return self.pki.metrics_server_key_file

    def kubelet_port(self, node: str) -> int:
        return self.kubelets[node].port

    def node_names(self) -> list[str]:
        return sorted(self.world.nodes)

    def pod_keys(self, node: str | None = None) -> list[tuple[str, str]]:
        """(namespace, name) of every pod, or of the pods on `node`."""
        pods = self.world.pods.values()
        return sorted(p.key for p in pods if node is None or p.node == node)

    @property
    def resource_version(self) -> int:
        return self.world.rv

    # ---- start-up ---------------------------------------------------------------------------

    def _start_kubelet(self, node: Node) -> None:
        port = self._fixed_ports.get(node.name, 0)
        if node.name in self._remote:
            node.kubelet_port = port
            return
        kubelet = FakeKubelet(
            node.name, self.world, self.pki, token=self.metrics_server_token,
            nursery=self._nursery, fault=self.config.faults.get(node.name), port=port,
        )
        kubelet.start()
        self.kubelets[node.name] = kubelet
        node.kubelet_port = kubelet.port

    def _stop_kubelet(self, node: Node) -> None:
        kubelet = self.kubelets.pop(node.name, None)
        if kubelet is not None:
            kubelet.stop()

    def _populate(self) -> None:
        world = self.world
        for ns in ("default", "kube-system", "kube-public", "app-0", "app-1", "app-2"):
            world.ensure_namespace(ns)
        pki = self.pki
        world.set_configmap(*EXTENSION_AUTH, {
            "client-ca-file": pki.client_ca.cert_pem.bytes().decode(),
            "requestheader-client-ca-file": pki.front_proxy_ca.cert_pem.bytes().decode(),
            "requestheader-allowed-names": '["front-proxy-client"]',
            "requestheader-username-headers": '["X-Remote-User"]',
            "requestheader-group-headers": '["X-Remote-Group"]',
            "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
        })
        config = self.config
        for i in range(config.nodes):
            name = f"node-{i}"
            if config.kubelet_port_base:
                self._fixed_ports[name] = config.kubelet_port_base + i
            if i % config.kubelet_processes:
                self._remote.add(name)
            self.add_node(name, pods=config.pods_per_node, _initial=True)

    def _write_kubeconfigs(self) -> None:
        ca = self.pki.cluster_ca.cert_pem.bytes()
        self.kubeconfig_path.write_text(
            _kubeconfig(self.apiserver_url, ca, "admin", self.admin_token))
        self.metrics_server_kubeconfig_path.write_text(
            _kubeconfig(self.apiserver_url, ca, "metrics-server", self.metrics_server_token))
        for path in (self.kubeconfig_path, self.metrics_server_kubeconfig_path):
            path.chmod(0o600)

    def write_workloads(self) -> Path:
        """Write `workloads.json`: [namespace, {label: value}, pods] per replica set, the
        selectors a load generator can query like an HPA does."""
        groups: dict[tuple[str, str, str], int] = {}
        for pod in self.world.pods.values():
            labels = pod.labels
            if "pod-template-hash" in labels and "app" in labels:
                key = (pod.namespace, labels["app"], labels["pod-template-hash"])
                groups[key] = groups.get(key, 0) + 1
        path = self.workdir / "workloads.json"
        path.write_text(json.dumps([
            [ns, {"app": app, "pod-template-hash": rs}, count]
            for (ns, app, rs), count in sorted(groups.items())
        ]))
        return path

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """Write a kubeconfig for another token (e.g. `viewer_token`) and return its path."""
        path.write_text(_kubeconfig(self.apiserver_url, self.pki.cluster_ca.cert_pem.bytes(),
                                    "user", token))
        path.chmod(0o600)
        return path

    # ---- mutations --------------------------------------------------------------------------

    def add_node(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        pods: int | Iterable[tuple[str, str]] = 0,
        *,
        _initial: bool = False,
    ) -> None:
        """Add a node with its kubelet. `pods` is a count (generated) or (namespace, name) pairs."""
        populate_node(self.world, name, labels, pods, initial=_initial)

    def remove_node(self, name: str) -> None:
        """Delete the node, its pods and its kubelet."""
        self.world.remove_node(name)

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        containers: Iterable[str] | Mapping[str, tuple[int, int]] = ("main",),
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Add a Running pod starting now. `containers`: names (truth from the seed) or
        name → (cpu nanocores, memory bytes)."""
        self.world.add_pod(namespace, name, node, containers, labels)

    def remove_pod(self, namespace: str, name: str) -> None:
        self.world.remove_pod(namespace, name)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        """Only Running pods appear in kubelet bodies."""
        self.world.set_pod_phase(namespace, name, phase)

    def set_pod_labels(self, namespace: str, name: str, labels: Mapping[str, str]) -> None:
        self.world.set_pod_labels(namespace, name, labels)

    def set_node_labels(self, name: str, labels: Mapping[str, str]) -> None:
        """Replace the node's labels (kubernetes.io/hostname is not kept unless given)."""
        self.world.set_node_labels(name, labels)

    # ---- kubelet faults ---------------------------------------------------------------------

    def set_fault(self, node: str, fault: Fault | None) -> None:
        """Make the node's kubelet misbehave; None heals it."""
        kubelet = self.kubelets[node]
        kubelet.set_fault(fault)
        self.world.set_kubelet_port(node, kubelet.port)

    def clear_fault(self, node: str) -> None:
        self.set_fault(node, None)

    # ---- apiserver faults -------------------------------------------------------------------

    def drop_watches(self) -> None:
        """Cut every open watch stream (the connections are closed mid-stream)."""
        self.world.drop_watches()

    def expire_history(self) -> None:
        """Forget the event history: a watch from any earlier resourceVersion gets 410."""
        self.world.expire_history()

    def fail_lists(self, count: int | None = None, status: int = 500) -> None:
        """Fail the next `count` list requests (all of them until cleared when None)."""
        faults = self.apiserver.list_faults
        faults.active, faults.remaining, faults.status = True, count, status

    def slow_lists(self, seconds: float) -> None:
        """Delay every list request by `seconds` (0 to stop)."""
        self.apiserver.list_faults.delay = seconds

    def clear_list_faults(self) -> None:
        faults = self.apiserver.list_faults
        faults.active, faults.remaining, faults.delay = False, None, 0.0

    def apiserver_down(self) -> None:
        """Close the apiserver's listener and every connection to it."""
        self.apiserver.stop()

    def apiserver_up(self) -> None:
        """Listen again on the same port."""
        self.apiserver.start()

    # ---- aggregation ------------------------------------------------------------------------

    def set_metrics_server(self, url: str | None, ca_pem_path: Path | None = None) -> None:
        """Proxy /apis/metrics.k8s.io to `url` (verified against `ca_pem_path`, the cluster CA
        by default); None makes it 503 again."""
        client = None
        if url is not None:
            context = self.pki.proxy_client_context(ca_pem_path or self.pki.cluster_ca_file)
            client = httpx.AsyncClient(
                verify=context,
                timeout=httpx.Timeout(PROXY_READ_TIMEOUT, connect=PROXY_CONNECT_TIMEOUT),
            )
        self.apiserver.set_upstream(url, client)
        for old in self.apiserver.closing_clients:
            self._nursery.start_soon(old.aclose)
        self.apiserver.closing_clients.clear()

    # ---- ground truth -----------------------------------------------------------------------

    def sample_time(self) -> float:
        """The timestamp (seconds) kubelets stamp on samples taken now."""
        return self.world.tick_ms() / 1000

    def truth_pod(
        self, namespace: str, name: str, timestamp: float | None = None
    ) -> dict[str, tuple[int, int]]:
        """{container: (cpu nanocores, memory bytes)} at `timestamp` (default: now)."""
        return self.world.truth_pod(namespace, name, timestamp)

    def truth_node(self, name: str, timestamp: float | None = None) -> tuple[int, int]:
        """(cpu nanocores, memory bytes) of the node at `timestamp` (default: now)."""
        return self.world.truth_node(name, timestamp)


async def run_cluster(
    config: ClusterConfig, *, task_status: trio.TaskStatus[Cluster] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a simulated cluster until cancelled; `task_status.started(cluster)` once serving."""
    own_dir = config.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="metrics-server-sim-")) if own_dir else config.workdir
    assert workdir is not None
    workdir.mkdir(parents=True, exist_ok=True)
    cluster: Cluster | None = None
    try:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(config, workdir, nursery)
            cluster.apiserver.start()
            cluster._populate()
            cluster._write_kubeconfigs()
            cluster.write_workloads()
            if config.kubelet_processes > 1:
                spec = ShardSpec(
                    nodes=config.nodes,
                    pods_per_node=config.pods_per_node,
                    seed=config.seed,
                    kubelet_refresh=config.kubelet_refresh,
                    memory_wobble=config.memory_wobble,
                    port_base=config.kubelet_port_base,
                    processes=config.kubelet_processes,
                    token=cluster.metrics_server_token,
                )
                await start_kubelet_shards(spec, cluster.pki, workdir, nursery)
            task_status.started(cluster)
            await trio.sleep_forever()
    finally:
        if cluster is not None:
            clients = list(cluster.apiserver.closing_clients)
            if cluster.apiserver.upstream is not None:
                clients.append(cluster.apiserver.upstream.client)
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                for client in clients:
                    await client.aclose()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


@asynccontextmanager
async def open_cluster(config: ClusterConfig | None = None) -> AsyncIterator[Cluster]:
    """`async with open_cluster(ClusterConfig(nodes=3)) as cluster:` — stopped on exit."""
    async with trio.open_nursery() as nursery:
        cluster: Cluster = await nursery.start(run_cluster, config or ClusterConfig())
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
