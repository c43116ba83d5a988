"""Fault rows for `kube-system/extension-apiserver-authentication` (SPEC: upstream's
`--authentication-tolerate-lookup-failure` semantics): missing, unreadable at start, and
unreadable but tolerated. In every case nobody gets in through forged identity headers.
"""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from metrics_server.simulator import Cluster, ClusterConfig, open_cluster
from tests.faults._observe import PREFIX
from tests.harness import apiserver_client, daemon_argv, direct_client, running_daemon

CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
FORGED = {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}


def _small_cluster() -> ClusterConfig:
    return ClusterConfig(nodes=1, pods_per_node=2, kubelet_refresh=0.5)


async def _assert_nobody_gets_in_by_headers(cluster: Cluster, port: int) -> None:
    """Through the aggregator (its front-proxy certificate is not trusted now) and straight
    to the server with forged identity headers: never a 200.

    Through the aggregator the refusal is 403 (no client CA at all, so no certificate is
    asked for: anonymous) or 503 (a client CA the front-proxy certificate does not verify
    against: OpenSSL aborts the handshake, see metrics_server/serving/tls.py)."""
    async with apiserver_client(cluster) as via_aggregator:
        r = await via_aggregator.get(f"{PREFIX}/nodes")
    assert r.status_code in (403, 503), r.text
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port}", verify=ctx, headers=FORGED
    ) as anonymous:
        forged = await anonymous.get(f"{PREFIX}/nodes")
    assert forged.status_code == 403, forged.text
    assert forged.json()["kind"] == "Status"


async def test_configmap_missing_means_no_front_proxy_until_it_appears(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with open_cluster(_small_cluster()) as cluster:
            original: dict[str, Any] = cluster.world.configmaps.pop(CONFIGMAP)
            async with running_daemon(cluster, tmp_path) as d, direct_client(cluster, d) as c:
                with trio.fail_after(15):
                    await d.ready.wait()
                assert (await c.get(f"{PREFIX}/nodes")).status_code == 200
                await _assert_nobody_gets_in_by_headers(cluster, d.port)
                # Once kube-apiserver publishes it, the watch applies it without a restart,
                # to new connections (the aggregator's client is replaced to get some).
                cluster.world.set_configmap(*CONFIGMAP, original["data"])
                assert await _aggregator_gets_in(cluster, d.port), "front proxy never trusted"


async def _aggregator_gets_in(cluster: Cluster, port: int, *, reconnect: bool = True) -> bool:
    statuses = []
    # The ConfigMap watch and the TLS reload wake nothing we can wait on; poll, bounded.
    for _ in range(40):
        if reconnect:
            cluster.set_metrics_server(f"https://127.0.0.1:{port}", cluster.ca_file)
        async with apiserver_client(cluster) as via_aggregator:
            r = await via_aggregator.get(f"{PREFIX}/nodes")
        statuses.append(r.status_code)
        if r.status_code == 200:
            return True
        await trio.sleep(0.25)
    return False


async def test_aggregator_connection_from_before_the_configmap_gets_in(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with open_cluster(_small_cluster()) as cluster:
            original: dict[str, Any] = cluster.world.configmaps.pop(CONFIGMAP)
            async with running_daemon(cluster, tmp_path) as d:
                with trio.fail_after(15):
                    await d.ready.wait()
                async with apiserver_client(cluster) as via_aggregator:
                    # Opens the aggregator's connection while no client CA is known.
                    assert (await via_aggregator.get(f"{PREFIX}/nodes")).status_code == 403
                cluster.world.set_configmap(*CONFIGMAP, original["data"])
                assert await _aggregator_gets_in(cluster, d.port, reconnect=False)


async def test_lookup_failure_at_start_is_one_clear_line(tmp_path: Path) -> None:
    """Without --authentication-tolerate-lookup-failure an unreadable ConfigMap stops
    start-up: exit status 1, one error line naming the ConfigMap, no traceback."""
    with trio.fail_after(60):
        async with open_cluster(_small_cluster()) as cluster:
            cluster.fail_lists(count=1, status=500)  # the first list is the lookup
            argv = [sys.executable, "-m", "metrics_server", *daemon_argv(cluster, tmp_path)]
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False,
                stdin=subprocess.DEVNULL,
            )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith(("E", "F"))]
    assert len(errors) == 1, stderr
    assert "extension-apiserver-authentication" in errors[0]
    assert "500" in errors[0]


async def test_tolerated_lookup_failure_starts_without_front_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metrics_server")
    with trio.fail_after(40):
        async with open_cluster(_small_cluster()) as cluster:
            cluster.fail_lists(count=1, status=500)
            async with running_daemon(
                cluster, tmp_path, ["--authentication-tolerate-lookup-failure"]
            ) as d, direct_client(cluster, d) as c:
                with trio.fail_after(15):
                    await d.ready.wait()
                assert (await c.get(f"{PREFIX}/nodes")).status_code == 200
                await _assert_nobody_gets_in_by_headers(cluster, d.port)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "Continuing without authentication configuration" in warnings
