"""Fault rows for `kube-system/extension-apiserver-authentication` (SPEC: upstream's
`--authentication-tolerate-lookup-failure` semantics): missing, unreadable at start,
unreadable but tolerated, and unreadable for a while once running. In every case nobody
gets in through forged identity headers; every failed read is counted in
`metrics_server_authentication_config_lookup_failures_total` and logged once per change of
state; scraping keeps its schedule and the API keeps answering.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from metrics_server.simulator import Cluster, ClusterConfig, open_cluster
from tests.faults._observe import (
    API_DEADLINE,
    PREFIX,
    ApiProbe,
    LogRecords,
    ScrapeLog,
    debug_logs,
    series,
)
from tests.harness import apiserver_client, daemon_argv, direct_client, running_daemon

CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
FORGED = {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"}
LOOKUP_LOGGER = "metrics_server.auth.lookup"
FAILURES = "metrics_server_authentication_config_lookup_failures_total"
RESOLUTION = 10.0
SCHEDULE_SLACK = 1.5


async def _lookup_failures(client: httpx.AsyncClient) -> dict[str, float]:
    """`metrics_server_authentication_config_lookup_failures_total` by reason."""
    text = (await client.get("/metrics")).text
    return {labels["reason"]: value for labels, value in series(text, FAILURES)}


def _lookup_lines(logs: LogRecords, level: int) -> list[str]:
    return [m for _, lvl, name, m in logs.records if name == LOOKUP_LOGGER and lvl == level]


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
                # NotFound is an answer (no front proxy), not a failure.
                assert await _lookup_failures(c) == {}
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


async def test_tolerated_lookup_failure_starts_without_front_proxy(tmp_path: Path) -> None:
    with LogRecords() as logs, trio.fail_after(40):
        async with open_cluster(_small_cluster()) as cluster:
            cluster.fail_lists(count=1, status=500)
            async with running_daemon(
                cluster, tmp_path, ["--authentication-tolerate-lookup-failure"]
            ) as d, direct_client(cluster, d) as c:
                with trio.fail_after(15):
                    await d.ready.wait()
                assert (await c.get(f"{PREFIX}/nodes")).status_code == 200
                await _assert_nobody_gets_in_by_headers(cluster, d.port)
                assert await _lookup_failures(c) == {"http_500": 1}
    # One line for the event (upstream's three sentences), one once the watch reads it.
    warnings = _lookup_lines(logs, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "Continuing without authentication configuration" in warnings[0]
    assert "HTTP 500" in warnings[0]
    infos = [m for m in _lookup_lines(logs, logging.INFO) if "readable again" in m]
    assert len(infos) == 1, infos
    assert "request-header authentication stays off" in infos[0]


async def test_configmap_unreadable_while_running(tmp_path: Path) -> None:
    """The ConfigMap watch breaks and its relists are refused (403, as when the RoleBinding
    goes) for a few seconds: the last settings stay in force (the aggregator still gets in),
    each failure is counted, the outage is one warning and one recovery line, and neither
    scraping nor the API notices."""
    config = ClusterConfig(nodes=2, pods_per_node=2, kubelet_refresh=0.5)
    scrapes, api, aggregated = ScrapeLog(), ApiProbe(), ApiProbe()
    with LogRecords() as logs, debug_logs(LOOKUP_LOGGER), trio.fail_after(60):
        async with (
            open_cluster(config) as cluster,
            running_daemon(cluster, tmp_path) as d,
            direct_client(cluster, d) as client,
            apiserver_client(cluster) as via_aggregator,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(15):
                await d.wait_for(lambda: d.store.nodes_with_usage() == 2)
            assert await _lookup_failures(client) == {}
            nursery.start_soon(scrapes.run, d)
            nursery.start_soon(api.run, client)
            nursery.start_soon(aggregated.run, via_aggregator)
            began = trio.current_time()
            # The node and pod watches resume from their resourceVersion without a list;
            # the ConfigMap watcher always relists, so it is the one that gets the 403s.
            cluster.fail_lists(count=3, status=403)
            cluster.drop_watches()
            # Its backoff (1, 1, 2, 3 s) wakes nothing we can wait on; poll, bounded.
            for _ in range(80):
                back = [m for m in _lookup_lines(logs, logging.INFO) if "readable again" in m]
                if back and not cluster.apiserver.list_faults.active:
                    break
                await trio.sleep(0.25)
            healed = trio.current_time()
            # Every node's next scheduled scrape comes after the outage too.
            await trio.sleep(max(0.0, began + RESOLUTION + SCHEDULE_SLACK - healed))
            scrapes.record(d)
            ended = trio.current_time()
            failures = await _lookup_failures(client)
            nursery.cancel_scope.cancel()

    # Counted: the broken stream, then each refused relist.
    assert failures == {"connection": 1, "http_403": 3}, failures
    # Logged once per change of state; the repeats are debug lines.
    warnings = _lookup_lines(logs, logging.WARNING)
    assert len(warnings) == 1 and "configmap watch failed" in warnings[0], warnings
    infos = [m for m in _lookup_lines(logs, logging.INFO) if "readable again" in m]
    assert len(infos) == 1, infos
    assert "stays off" not in infos[0]
    repeats = [m for m in _lookup_lines(logs, logging.DEBUG) if "still unreadable" in m]
    assert len(repeats) == 3 and all("403" in m for m in repeats), repeats

    # Scraping kept its schedule on every node, without a failure.
    for node in ("node-0", "node-1"):
        samples = scrapes.samples[node]
        assert all(s.reason is None for s in samples), samples
        starts = [*scrapes.starts(node), ended]
        assert any(began <= t <= ended for t in starts[:-1]), (node, starts, began)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps) <= RESOLUTION + SCHEDULE_SLACK, (node, gaps)

    # The API answered promptly throughout, directly and through the aggregator, whose
    # front-proxy certificate the last known settings still trust.
    for probe in (api, aggregated):
        assert not probe.failures, probe.failures
        answers = probe.during(began, healed)
        assert answers, probe
        assert all(status == 200 and took < API_DEADLINE for _, took, status, _ in answers)
