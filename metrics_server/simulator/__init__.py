"""A simulated Kubernetes cluster for tests, the demo and benchmarks: a fake kube-apiserver,
fake kubelets with known ground truth and injectable faults, and the PKI and kubeconfigs that
tie them together. Production code never imports this package.

    async with open_cluster(ClusterConfig(nodes=3, pods_per_node=5)) as cluster:
        ...  # cluster.apiserver_url, cluster.kubeconfig_path, cluster.truth_node("node-0"), …
"""

from metrics_server.simulator._cluster import Cluster, ClusterConfig, open_cluster, run_cluster
from metrics_server.simulator.faults import (
    Fault,
    Garbage,
    Hang,
    HttpStatus,
    Huge,
    NoIPSAN,
    Refuse,
    Slow,
    Trickle,
    Truncated,
    WrongCA,
)

__all__ = [
    "Cluster",
    "ClusterConfig",
    "Fault",
    "Garbage",
    "Hang",
    "HttpStatus",
    "Huge",
    "NoIPSAN",
    "Refuse",
    "Slow",
    "Trickle",
    "Truncated",
    "WrongCA",
    "open_cluster",
    "run_cluster",
]
