"""Test harness: run this metrics server in-process against a simulated cluster."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio

from metrics_server import daemon as daemon_mod
from metrics_server.cli import parse_options
from metrics_server.daemon import Daemon
from metrics_server.simulator import Cluster


def daemon_argv(cluster: Cluster, workdir: Path, *extra: str) -> list[str]:
    """The flags the simulator's runner uses, with an ephemeral port."""
    return [
        "--kubeconfig",
        str(cluster.metrics_server_kubeconfig_path),
        "--secure-port",
        "0",
        "--bind-address",
        "127.0.0.1",
        "--cert-dir",
        str(workdir / "certs"),
        "--tls-cert-file",
        str(cluster.metrics_server_cert_file),
        "--tls-private-key-file",
        str(cluster.metrics_server_key_file),
        "--metric-resolution",
        "10s",
        "--kubelet-request-timeout",
        "2s",
        "--kubelet-use-node-status-port",
        "--kubelet-preferred-address-types",
        "InternalIP",
        "--kubelet-certificate-authority",
        str(cluster.kubelet_ca_file),
        "--shutdown-grace-period",
        "2s",
        *extra,
    ]


@asynccontextmanager
async def running_daemon(
    cluster: Cluster, workdir: Path, extra: Sequence[str] = (), *, aggregate: bool = True
) -> AsyncIterator[Daemon]:
    """Start the daemon in this trio run; register it with the cluster's aggregator."""
    options = parse_options(daemon_argv(cluster, workdir, *extra))
    access = await trio.to_thread.run_sync(daemon_mod.load_access, options)
    async with trio.open_nursery() as nursery:
        d: Daemon = await nursery.start(
            lambda task_status: daemon_mod.run(
                options, access, handle_signals=False, task_status=task_status
            )
        )
        if aggregate:
            cluster.set_metrics_server(f"https://127.0.0.1:{d.port}", cluster.ca_file)
        try:
            yield d
        finally:
            d.stop.set()
            if aggregate:
                cluster.set_metrics_server(None)


def direct_client(cluster: Cluster, d: Daemon, token: str | None = None) -> httpx.AsyncClient:
    """A client talking straight to the metrics server (not through the aggregator)."""
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {token or cluster.admin_token}"}
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{d.port}", verify=ctx, headers=headers, timeout=10
    )


def apiserver_client(cluster: Cluster, token: str | None = None) -> httpx.AsyncClient:
    """A client for the fake kube-apiserver (aggregated path), as kubectl would be."""
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {token or cluster.admin_token}"}
    return httpx.AsyncClient(
        base_url=cluster.apiserver_url, verify=ctx, headers=headers, timeout=10
    )


def parse_cpu(text: str) -> float:
    """Nanocores from a Kubernetes CPU quantity (n, u, m or whole cores)."""
    for suffix, factor in (("n", 1.0), ("u", 1e3), ("m", 1e6)):
        if text.endswith(suffix):
            return float(text[:-1]) * factor
    return float(text) * 1e9


def parse_memory(text: str) -> int:
    """Bytes from a Kubernetes memory quantity (Ki..Ti, k..T or plain)."""
    binary = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    decimal = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in binary.items():
        if text.endswith(suffix):
            return int(text[:-2]) * factor
    for suffix, factor in decimal.items():
        if text.endswith(suffix):
            return int(text[:-1]) * factor
    return int(text)


def items_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for item in body["items"]:
        meta = item["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"]
        out[key] = item
    return out
