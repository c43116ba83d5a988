"""Operating the metrics server as a cluster add-on: probes, /metrics, logs, start-up report,
signals. In-process against the simulator where that is enough; as a real subprocess
(`python -m metrics_server`) where the process itself is under test (logs, signals, exit)."""

from __future__ import annotations

import json
import logging
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from metrics_server.daemon import Daemon
from metrics_server.selfmetrics import DEFAULT_BUCKETS, freshness_buckets
from metrics_server.simulator import ClusterConfig, HttpStatus, NoIPSAN, open_cluster
from metrics_server.simulator._cluster import Cluster
from tests.harness import apiserver_client, daemon_argv, direct_client, running_daemon

PREFIX = "/apis/metrics.k8s.io/v1beta1"


def anonymous_client(cluster: Cluster, port: int) -> httpx.AsyncClient:
    """What a kubelet probe is: no credentials at all."""
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    return httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=10)


async def wait_until(d: Daemon, predicate: Callable[[], bool], seconds: float = 15) -> None:
    with trio.fail_after(seconds):
        await d.wait_for(predicate)


# -- health ------------------------------------------------------------------------------


async def test_health_endpoints_match_kubernetes_format(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=2, pods_per_node=2)) as cluster,
            running_daemon(cluster, tmp_path) as d,
            anonymous_client(cluster, d.port) as client,
            direct_client(cluster, d) as admin,
        ):
            await d.ready.wait()
            for path, checks in (
                ("/livez", ["ping", "log", "metric-collection-timely", "metadata-informer-sync"]),
                ("/healthz", ["ping", "log", "metadata-informer-sync"]),
                (
                    "/readyz",
                    [
                        "ping",
                        "log",
                        "metric-storage-ready",
                        "metric-informer-sync",
                        "metadata-informer-sync",
                        "shutdown",
                    ],
                ),
            ):
                terse = await client.get(path)
                assert (terse.status_code, terse.text) == (200, "ok"), path
                assert terse.headers["content-type"] == "text/plain; charset=utf-8"
                verbose = await client.get(f"{path}?verbose")
                expected = "".join(f"[+]{c} ok\n" for c in checks) + f"{path[1:]} check passed\n"
                assert verbose.text == expected, path
                for check in checks:
                    # Only the three root paths are always allowed (as upstream's default
                    # --authorization-always-allow-paths); per-check paths are authorized.
                    assert (await client.get(f"{path}/{check}")).status_code == 403
                    one = await admin.get(f"{path}/{check}")
                    assert (one.status_code, one.text) == (200, "ok"), (path, check)

            excluded = await client.get(
                "/readyz?verbose&exclude=shutdown&exclude=nope&exclude=also-nope"
            )
            assert excluded.status_code == 200
            assert excluded.text == (
                "[+]ping ok\n[+]log ok\n[+]metric-storage-ready ok\n[+]metric-informer-sync ok\n"
                "[+]metadata-informer-sync ok\n[+]shutdown excluded: ok\n"
                'warn: some health checks cannot be excluded: no matches for "also-nope","nope"\n'
                "readyz check passed\n"
            )
            assert (await admin.get("/readyz/no-such-check")).status_code == 404


async def test_stuck_node_task_fails_liveness(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=3, pods_per_node=2)) as cluster,
            running_daemon(cluster, tmp_path) as d,
            anonymous_client(cluster, d.port) as client,
            direct_client(cluster, d) as admin,
        ):
            await d.ready.wait()
            # The task for node-1 stops (as a wedged or crashed task would) while the node
            # stays in the cluster; its last collection start then falls behind.
            state = d.manager.nodes["node-1"]
            state.scope.cancel()
            await state.done.wait()
            assert (await client.get("/livez")).status_code == 200  # not late yet
            assert state.last_start is not None
            # Pretend it stopped 16 s ago: past 1.5 × the 10 s resolution.
            state.last_start = trio.current_time() - 16
            terse = await client.get("/livez")
            assert terse.status_code == 500
            assert terse.text == (
                "[+]ping ok\n[+]log ok\n[-]metric-collection-timely failed: reason withheld\n"
                "[+]metadata-informer-sync ok\nlivez check failed\n"
            )
            verbose = await client.get("/livez?verbose")
            assert re.search(
                r"\[-\]metric-collection-timely failed: metric collection didn't start on time: "
                r"the scrape task of node node-1 last started a collection 1[67]\.\ds ago, "
                r"limit 15s \(1\.5 × --metric-resolution\); the task is stuck\n",
                verbose.text,
            ), verbose.text
            one = await admin.get("/livez/metric-collection-timely")
            assert one.status_code == 500
            assert one.text.startswith("internal server error: metric collection didn't start")
            assert one.text.endswith("\n")
            # Readiness and the other probes do not depend on it.
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            metrics = (await admin.get("/metrics")).text
            assert "metrics_server_scrape_tasks 2.0" in metrics


async def test_informer_sync_checks_fail_until_the_apiserver_answers(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_cluster(ClusterConfig(nodes=2, pods_per_node=2)) as cluster:
            cluster.apiserver_down()
            async with (
                running_daemon(
                    cluster, tmp_path, ["--authentication-tolerate-lookup-failure"]
                ) as d,
                anonymous_client(cluster, d.port) as client,
            ):
                ready = await client.get("/readyz?verbose")
                assert ready.status_code == 500
                lines = ready.text.splitlines()
                assert lines[0:2] == ["[+]ping ok", "[+]log ok"]
                assert lines[2].startswith(
                    "[-]metric-storage-ready failed: no metrics to serve: "
                    "node list not received from kube-apiserver yet"
                )
                assert lines[3].startswith(
                    "[-]metric-informer-sync failed: node list not received from kube-apiserver"
                )
                assert lines[4].startswith(
                    "[-]metadata-informer-sync failed: pod list not received from kube-apiserver"
                )
                assert lines[5:] == ["[+]shutdown ok", "readyz check failed"]
                # Not ready, but alive: a restart cannot bring the apiserver back.
                live = await client.get("/livez?verbose")
                assert live.status_code == 200, live.text
                assert "[+]metadata-informer-sync ok\n" in live.text
                assert (await client.get("/healthz")).status_code == 500

                cluster.apiserver_up()
                await wait_until(d, lambda: d.pod_watch.synced and d.node_watch.synced, 30)
                assert (await client.get("/livez")).status_code == 200
                async with direct_client(cluster, d) as admin:
                    one = await admin.get("/readyz/metadata-informer-sync")
                assert (one.status_code, one.text) == (200, "ok")


async def test_readyz_fails_on_shutdown_before_the_listener_closes(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=2, pods_per_node=2)) as cluster,
            running_daemon(cluster, tmp_path, ["--shutdown-delay-duration", "60s"]) as d,
            direct_client(cluster, d) as client,
        ):
            await d.ready.wait()
            assert d.request_shutdown("test")  # what SIGTERM does
            assert not d.request_shutdown("again")
            ready = await client.get("/readyz?verbose")
            assert ready.status_code == 500
            assert "[-]shutdown failed: process is shutting down\n" in ready.text
            assert ready.text.endswith("readyz check failed\n")
            # During --shutdown-delay-duration everything else is still served.
            assert (await client.get("/livez")).status_code == 200
            nodes = await client.get(f"{PREFIX}/nodes")
            assert nodes.status_code == 200 and nodes.json()["kind"] == "NodeMetricsList"
            assert not d.stop.is_set()

            d.stop.set()  # the end of the delay
            await d.serving_done.wait()
            async with direct_client(cluster, d) as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get("/readyz")


# -- /metrics ----------------------------------------------------------------------------

UPSTREAM_METRICS: dict[str, tuple[str, set[str], tuple[float, ...] | None]] = {
    # family name as the parser reports it (counters without _total): type, labels, buckets
    "metrics_server_kubelet_request_duration_seconds": ("histogram", {"node"}, DEFAULT_BUCKETS),
    "metrics_server_kubelet_request": ("counter", {"success"}, None),
    "metrics_server_kubelet_last_request_time_seconds": ("gauge", {"node"}, None),
    # --metric-resolution 10s: upstream's buckets are exactly the defaults.
    "metrics_server_manager_tick_duration_seconds": ("histogram", set(), DEFAULT_BUCKETS),
    "metrics_server_api_metric_freshness_seconds": ("histogram", set(), freshness_buckets()),
    "metrics_server_storage_points": ("gauge", {"type"}, None),
}
PROCESS_METRICS = {
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_virtual_memory_max_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}
OUR_METRICS: dict[str, tuple[str, set[str]]] = {
    "metrics_server_scrape_failures": ("counter", {"node", "reason"}),
    "metrics_server_watch_restarts": ("counter", {"resource", "reason"}),
    "metrics_server_scrape_tasks": ("gauge", set()),
    "metrics_server_pods_known": ("gauge", set()),
}


async def fetch_metrics(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def check_family(
    family: Any, kind: str, labels: set[str], buckets: tuple[float, ...] | None
) -> None:
    assert family.type == kind, family.name
    suffixes = {"histogram": {"_bucket", "_count", "_sum"}, "counter": {"_total"}}.get(kind, {""})
    assert family.samples, family.name
    for sample in family.samples:
        assert sample.name[len(family.name) :] in suffixes, sample.name
        keys = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
        assert keys == labels, (sample.name, sample.labels)
    if buckets is not None:
        series: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for s in family.samples:
            if s.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, []).append(s.labels["le"])
        assert series, family.name
        for les in series.values():
            assert les[-1] == "+Inf"
            assert tuple(float(le) for le in les[:-1]) == buckets, family.name


def label_values(family: Any, label: str) -> set[str]:
    return {s.labels[label] for s in family.samples if label in s.labels}


async def test_metrics_names_types_labels_buckets_and_node_removal(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=3, pods_per_node=3, faults={"node-2": HttpStatus(500)})
    with trio.fail_after(60):
        async with (
            open_cluster(config) as cluster,
            running_daemon(cluster, tmp_path) as d,
            direct_client(cluster, d) as client,
        ):
            await d.ready.wait()
            await wait_until(d, lambda: d.manager.nodes["node-2"].failures >= 1)
            assert (await client.get(f"{PREFIX}/pods")).status_code == 200  # freshness
            restarts = d.pod_watch.restarts + d.node_watch.restarts
            cluster.drop_watches()
            await wait_until(d, lambda: d.pod_watch.restarts + d.node_watch.restarts > restarts)

            fams = await fetch_metrics(client)
            for name, (kind, labels, buckets) in UPSTREAM_METRICS.items():
                check_family(fams[name], kind, labels, buckets)
                assert fams[name].documentation.startswith("[ALPHA] "), name
            for name, kind in PROCESS_METRICS.items():
                check_family(fams[name], kind, set(), None)
            for name, (kind, labels) in OUR_METRICS.items():
                check_family(fams[name], kind, labels, None)
            assert not [n for n in fams if n.endswith("_created")]
            nodes = {"node-0", "node-1", "node-2"}
            assert label_values(fams["metrics_server_kubelet_request"], "success") == {
                "true",
                "false",
            }
            for name in (
                "metrics_server_kubelet_request_duration_seconds",
                "metrics_server_kubelet_last_request_time_seconds",
            ):
                assert label_values(fams[name], "node") == nodes, name
            assert label_values(fams["metrics_server_storage_points"], "type") == {
                "node",
                "container",
            }
            failures = fams["metrics_server_scrape_failures"].samples
            assert {(s.labels["node"], s.labels["reason"]) for s in failures} == {
                ("node-2", "http_500")
            }
            assert label_values(fams["metrics_server_watch_restarts"], "resource") <= {
                "nodes",
                "pods",
            }
            assert fams["metrics_server_scrape_tasks"].samples[0].value == 3
            assert fams["metrics_server_pods_known"].samples[0].value == len(cluster.pod_keys())

            state = d.manager.nodes["node-2"]
            cluster.remove_node("node-2")
            await state.done.wait()
            fams = await fetch_metrics(client)
            leftovers = [
                (f.name, s.labels)
                for f in fams.values()
                for s in f.samples
                if s.labels.get("node") == "node-2"
            ]
            assert leftovers == []
            duration = fams["metrics_server_kubelet_request_duration_seconds"]
            assert label_values(duration, "node") == {"node-0", "node-1"}
            assert fams["metrics_server_scrape_tasks"].samples[0].value == 2


# -- start-up report and readiness reasons -------------------------------------------------


async def test_startup_report_names_failure_classes_with_fixes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_server")
    faults = {"node-1": NoIPSAN(), "node-2": NoIPSAN(), "node-3": HttpStatus(403)}
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=4, pods_per_node=2, faults=faults)) as cluster,
            running_daemon(cluster, tmp_path) as d,
        ):
            await d.reported.wait()
    assert d.startup_report == (
        "first scrape: scraped 1/4 nodes; 3 failed: "
        "2× x509 no IP SAN (node-1, node-2), 1× HTTP 403 (node-3)"
    )
    reports = [r for r in caplog.records if "first scrape:" in r.getMessage()]
    assert len(reports) == 1
    assert reports[0].levelname == "INFO"
    line = reports[0].getMessage()
    assert line.startswith(f'"{d.startup_report}" fix="')
    assert "x509 no IP SAN: " in line and "--kubelet-tls-server-name-from-node" in line
    assert "HTTP 403: " in line and "system:metrics-server ClusterRole" in line


async def test_readyz_says_why_when_every_node_fails(tmp_path: Path) -> None:
    faults = {"node-0": NoIPSAN(), "node-1": HttpStatus(401)}
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=2, pods_per_node=2, faults=faults)) as cluster,
            running_daemon(cluster, tmp_path) as d,
            anonymous_client(cluster, d.port) as client,
            direct_client(cluster, d) as admin,
        ):
            await wait_until(
                d,
                lambda: len(d.manager.nodes) == 2
                and all(s.failures for s in d.manager.nodes.values()),
            )
            verbose = await client.get("/readyz?verbose")
            assert verbose.status_code == 500
            line = next(ln for ln in verbose.text.splitlines() if "metric-storage-ready" in ln)
            assert line.startswith(
                "[-]metric-storage-ready failed: no metrics to serve: every node scrape fails: "
                "1× HTTP 401 (node-1), 1× x509 no IP SAN (node-0). Fix: HTTP 401: the kubelet "
                "rejects our token: enable kubelet webhook authentication; x509 no IP SAN: "
            )
            assert "--kubelet-tls-server-name-from-node" in line and ". E.g. node node-" in line
            terse = await client.get("/readyz")
            assert "[-]metric-storage-ready failed: reason withheld\n" in terse.text
            one = await admin.get("/readyz/metric-storage-ready")
            assert one.status_code == 500
            assert one.text.startswith(
                "internal server error: no metrics to serve: every node scrape fails"
            )


# -- the process: logs and signals -----------------------------------------------------------


class ServerProcess:
    """`python -m metrics_server` with its combined output collected line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.ended = False
        self._news = trio.lowlevel.ParkingLot()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def drain(self) -> None:
        assert self.process.stdout is not None
        pending = b""
        async for chunk in self.process.stdout:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)
            self._news.unpark_all()
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self.ended = True
        self._news.unpark_all()

    async def wait_line(self, pattern: str) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = 0
        while True:
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            if self.ended:
                raise AssertionError(f"no line matches {pattern!r}; output:\n{self.text}")
            await self._news.park()

    async def port(self) -> int:
        return int((await self.wait_line(r"serving securely on \S+ port (\d+)")).group(1))


@asynccontextmanager
async def server_process(argv: list[str]) -> AsyncIterator[ServerProcess]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "metrics_server", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    server = ServerProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.drain)
            try:
                yield server
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


def client_for(cluster: Cluster, port: int, token: str | None) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{port}", verify=ctx, headers=headers, timeout=15
    )


KLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


async def test_no_secret_in_logs_at_v10(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=2, pods_per_node=2, faults={"node-1": HttpStatus(401)})
    bogus = "not-a-valid-token-0123456789abcdef"
    with trio.fail_after(90):
        async with open_cluster(config) as cluster:
            async with server_process(daemon_argv(cluster, tmp_path, "-v=10")) as server:
                port = await server.port()
                cluster.set_metrics_server(f"https://127.0.0.1:{port}", cluster.ca_file)
                await server.wait_line("Metrics are ready to serve")
                for token, path, status in (
                    (cluster.admin_token, f"{PREFIX}/nodes", 200),
                    (cluster.admin_token, "/metrics", 200),
                    (cluster.viewer_token, f"{PREFIX}/pods", 200),
                    (cluster.nobody_token, f"{PREFIX}/nodes", 403),
                    (bogus, f"{PREFIX}/nodes", 401),
                    (None, "/readyz?verbose", 200),
                ):
                    async with client_for(cluster, port, token) as client:
                        assert (await client.get(path)).status_code == status, path
                async with apiserver_client(cluster) as through_aggregator:
                    assert (await through_aggregator.get(f"{PREFIX}/pods")).status_code == 200
                cluster.drop_watches()
                await server.wait_line("Watch failed; reconnecting")
                await server.wait_line('"Failed to scrape node".*HTTP 401')
                server.process.send_signal(signal.SIGTERM)
                assert await server.process.wait() == 0
                cluster.set_metrics_server(None)
            output = server.text
            secrets = [
                cluster.admin_token,
                cluster.metrics_server_token,
                cluster.viewer_token,
                cluster.nobody_token,
                bogus,
            ]
            key_lines = [
                line
                for key in sorted(cluster.pki.directory.glob("*.key"))
                for line in key.read_text().splitlines()
                if len(line) > 16 and "PRIVATE KEY" not in line
            ]
    assert key_lines, "the simulator's private keys were found"
    for secret in secrets:
        assert secret not in output
    for line in key_lines:
        assert line not in output
    assert "PRIVATE KEY" not in output
    assert "Traceback" not in output
    # -v=10 really logged what each level adds: requests served (3), requests sent (6),
    # connection traces (8).
    assert '"HTTP" verb="GET" URI="/apis/metrics.k8s.io/v1beta1/nodes"' in output
    assert "resp=401" in output and "resp=403" in output
    assert "HTTP Request: GET https://127.0.0.1:" in output
    assert "send_request_headers.started" in output
    for line in server.lines:
        assert KLOG_LINE.match(line) or line.startswith(("\t", " >")), line


async def test_json_log_lines(tmp_path: Path) -> None:
    config = ClusterConfig(nodes=2, pods_per_node=2, faults={"node-1": HttpStatus(403)})
    argv_extra = ("--logging-format=json", "-v=3")
    with trio.fail_after(60):
        async with (
            open_cluster(config) as cluster,
            server_process(daemon_argv(cluster, tmp_path, *argv_extra)) as server,
        ):
            port = await server.port()
            await server.wait_line("Metrics are ready to serve")
            async with client_for(cluster, port, cluster.admin_token) as client:
                assert (await client.get(f"{PREFIX}/nodes")).status_code == 200
            await server.wait_line(r'"msg":"HTTP"')
            # Run as its own process, the daemon freezes its start-up heap once settled.
            await server.wait_line("Start-up heap frozen")
            async with client_for(cluster, port, cluster.admin_token) as client:
                assert (await client.get(f"{PREFIX}/nodes")).status_code == 200
            server.process.send_signal(signal.SIGTERM)
            assert await server.process.wait() == 0
    entries = [json.loads(line) for line in server.lines if line]
    for entry in entries:
        assert list(entry)[:3] == ["ts", "caller", "msg"], entry
        assert entry["ts"] > 1e12  # milliseconds
        assert re.fullmatch(r"[\w.]+\.py:\d+", entry["caller"]), entry
        # Only error entries go without "v" (zapr adds it to info entries).
        assert ("v" in entry) == (entry["msg"] != "Failed to scrape node"), entry
    failure = next(e for e in entries if e["msg"] == "Failed to scrape node")
    assert list(failure)[3:] == ["err", "node", "reason"]
    assert failure["node"] == "node-1" and failure["reason"] == "http_403"
    assert "HTTP 403" in failure["err"]
    request = next(e for e in entries if e["msg"] == "HTTP" and e["URI"] == f"{PREFIX}/nodes")
    assert (request["verb"], request["resp"], request["v"]) == ("GET", 200, 3)
    report = next(e for e in entries if e["msg"].startswith("first scrape:"))
    assert report["msg"] == "first scrape: scraped 1/2 nodes; 1 failed: 1× HTTP 403 (node-1)"
    frozen = next(e for e in entries if e["msg"] == "Start-up heap frozen for the GC")
    assert entries.index(frozen) > entries.index(report)
    assert int(frozen["objects"]) > 10_000  # imports alone are tens of thousands
    assert "system:metrics-server" in report["fix"] and report["v"] == 0


class HeldTokenReview:
    """A plain-HTTP TokenReview endpoint that answers only when released: a way to hold a
    request in flight inside the metrics server for as long as a test wants."""

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.release = trio.Event()
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            length = int(match.group(1)) if match else 0
            while len(body) < length:
                body += await stream.receive_some(65536)
            self.arrived.set()
            await self.release.wait()
            reply = json.dumps(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "status": {
                        "authenticated": True,
                        "user": {
                            "username": "kubernetes-admin",
                            "groups": ["system:masters", "system:authenticated"],
                        },
                    },
                }
            ).encode()
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(reply), reply)
            )

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: held\n  cluster:\n    server: http://127.0.0.1:{self.port}\n"
            "contexts:\n- name: held\n  context:\n    cluster: held\n    user: held\n"
            "current-context: held\nusers:\n- name: held\n  user:\n    token: unused\n"
        )
        return path


@asynccontextmanager
async def held_server(
    cluster: Cluster, tmp_path: Path, grace: str
) -> AsyncIterator[tuple[HeldTokenReview, ServerProcess, int]]:
    """A metrics server subprocess whose bearer-token reviews wait for `review.release`."""
    review = HeldTokenReview()
    async with trio.open_nursery() as nursery:
        await nursery.start(review.run)
        argv = daemon_argv(
            cluster,
            tmp_path,
            "--authentication-skip-lookup",
            "--authentication-kubeconfig",
            str(review.kubeconfig(tmp_path / "held.kubeconfig")),
            "--authorization-kubeconfig",
            str(cluster.metrics_server_kubeconfig_path),
            "--shutdown-grace-period",
            grace,
        )
        async with server_process(argv) as server:
            yield review, server, await server.port()
        nursery.cancel_scope.cancel()


async def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path: Path) -> None:
    result: list[httpx.Response] = []
    answered = trio.Event()
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=2, pods_per_node=2)) as cluster,
            held_server(cluster, tmp_path, "30s") as (review, server, port),
            client_for(cluster, port, "held-token") as client,
            trio.open_nursery() as nursery,
        ):

            async def in_flight() -> None:
                result.append(await client.get(PREFIX))
                answered.set()

            nursery.start_soon(in_flight)
            await review.arrived.wait()
            server.process.send_signal(signal.SIGTERM)
            await server.wait_line("Shutting down: readyz now fails")
            # New connections are not served (refused, or closed unanswered if they were
            # accepted as the listener closed) while the request in flight is still open.
            while True:
                try:
                    async with client_for(cluster, port, None) as fresh:
                        await fresh.get("/livez")
                except httpx.TransportError:
                    break
                await trio.sleep(0.05)
            assert server.process.returncode is None
            review.release.set()
            await answered.wait()
            assert await server.process.wait() == 0
    assert len(result) == 1 and result[0].status_code == 200
    assert result[0].json()["kind"] == "APIResourceList"
    assert "Traceback" not in server.text
    assert '"Shutting down: readyz now fails" reason="SIGTERM"' in server.text
    assert '"Stopped"' in server.lines[-1]


async def test_sigterm_exits_0_when_the_grace_period_runs_out(tmp_path: Path) -> None:
    """A request that never finishes: with --shutdown-grace-period=1s the process waits the
    grace period for it, then cancels it and exits 0 (the README: "then the process exits
    0"), without a traceback, within the grace period plus a few seconds."""
    grace = 1.0
    outcome: list[BaseException | httpx.Response] = []
    ended = trio.Event()
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster,
            held_server(cluster, tmp_path, "1s") as (review, server, port),
            client_for(cluster, port, "held-token") as client,
            trio.open_nursery() as nursery,
        ):

            async def in_flight() -> None:
                try:
                    outcome.append(await client.get(PREFIX))
                except httpx.HTTPError as exc:
                    outcome.append(exc)
                ended.set()

            nursery.start_soon(in_flight)
            await review.arrived.wait()  # held inside the server; never released
            signalled = trio.current_time()
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(grace + 5):
                status = await server.process.wait()
            elapsed = trio.current_time() - signalled
            with trio.fail_after(5):
                await ended.wait()
            assert not review.release.is_set()
    assert status == 0, server.text
    # It did wait for the request: the grace period starts after the signal arrives.
    assert elapsed >= grace - 0.05, elapsed
    assert len(outcome) == 1
    answered = outcome[0]
    assert not (isinstance(answered, httpx.Response) and answered.status_code == 200), answered
    assert "Traceback" not in server.text
    assert '"Shutting down: readyz now fails" reason="SIGTERM"' in server.text
    assert 'gracePeriod="1s"' in server.text
    assert '"Stopped"' in server.lines[-1]


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    failed = trio.Event()
    with trio.fail_after(60):
        async with (
            open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster,
            held_server(cluster, tmp_path, "60s") as (review, server, port),
            client_for(cluster, port, "held-token") as client,
            trio.open_nursery() as nursery,
        ):

            async def in_flight() -> None:
                # The server goes away under it; that is the point.
                with pytest.raises(httpx.HTTPError):
                    await client.get(PREFIX)
                failed.set()

            nursery.start_soon(in_flight)
            await review.arrived.wait()
            server.process.send_signal(signal.SIGINT)
            await server.wait_line("Shutting down: readyz now fails")
            # The held request would keep it draining for the whole 60 s grace period.
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await server.process.wait() == 1
            await failed.wait()
    assert "Traceback" not in server.text
    assert '"Received a second signal; exiting at once" signal="SIGTERM"' in server.text


async def test_signal_during_startup_exits_0(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster:
            # Start-up reads extension-apiserver-authentication first; make that list hang.
            cluster.slow_lists(60)
            async with server_process(daemon_argv(cluster, tmp_path)) as server:
                await server.wait_line("Starting metrics-server")
                server.process.send_signal(signal.SIGTERM)
                with trio.fail_after(5):
                    assert await server.process.wait() == 0
    assert "Traceback" not in server.text
    assert '"Received a signal during start-up; exiting" signal="SIGTERM"' in server.text
    assert not any("serving securely" in line for line in server.lines)
