"""The kube-apiserver fault matrix as one scenario; asserted row by row in
test_apiserver_faults.

One cluster and one daemon go through the faults in turn: watches dropped mid-stream, a
dropped watch whose history expired (410 Gone, relist), lists failing with 500, lists taking
seconds, and the apiserver going down and coming back. Each row injects its fault, then
creates a marker pod (and the 500 row a node) that can only reach the daemon's caches
through a watch or list that survived the fault, and records a `Window`. Throughout, the
node list and /readyz are polled and every scrape and cache size is recorded.

Finally the apiserver goes down and a second daemon starts without it (the CA files given
as flags, so no ConfigMap lookup is needed): not ready, with the reason on /readyz?verbose,
retrying with backoff; the apiserver comes up and the daemon gets ready.

The watch logger is at DEBUG throughout, so the tests see the repeated attempts that must
stay below WARNING. Memory: the daemon shares this process with the simulator and the
kubelet matrix, so a row's bound is on this process's resident and peak memory (VmRSS,
VmHWM) before and after it; a fault that made the daemon hold on to data would show there.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from metrics_server.daemon import Daemon
from metrics_server.simulator import Cluster, ClusterConfig, open_cluster
from tests.faults._observe import (
    PREFIX,
    ApiProbe,
    LogRecords,
    ScrapeLog,
    debug_logs,
    rss_kib,
    watch_restarts,
)
from tests.harness import direct_client, running_daemon

MARKER_LIMIT = 25.0
"""Seconds for a marker to reach the caches after a fault (watch backoff included)."""
DOWN_SECONDS = 3.0


@dataclass(slots=True)
class Window:
    """What one row did and saw."""

    start: float = 0.0
    end: float = 0.0
    marker_seconds: float | None = None
    """Fault to marker in the daemon's caches; None if it never arrived."""
    restarts_before: dict[tuple[str, str], float] = field(default_factory=dict)
    restarts_after: dict[tuple[str, str], float] = field(default_factory=dict)
    watch_attempts: int = 0
    """Restarts of the two watches during the window (from WatchStats)."""
    rss_kib: tuple[int, int] = (0, 0)
    """This process's VmRSS before and after the row."""
    hwm_kib: tuple[int, int] = (0, 0)
    """This process's VmHWM (peak resident memory) before and after the row."""
    notes: dict[str, object] = field(default_factory=dict)

    def restarts(self, resource: str, reason: str) -> float:
        key = (resource, reason)
        return self.restarts_after.get(key, 0) - self.restarts_before.get(key, 0)


@dataclass(slots=True)
class DownAtStart:
    readyz_status: int = 0
    readyz_text: str = ""
    livez_status: int = 0
    livez_text: str = ""
    attempts_in_window: int = 0
    window: float = 0.0
    ready_after_up: float | None = None
    readyz_after: int = 0
    restarts: dict[tuple[str, str], float] = field(default_factory=dict)
    """`metrics_server_watch_restarts_total` once the apiserver is back (/metrics needs it
    to review the token), counting every failed attempt of the down period."""
    stats_restarts: dict[str, int] = field(default_factory=dict)
    """The watches' own restart counts at that moment, by resource."""
    started: float = 0.0
    ended: float = 0.0
    """The second daemon's lifetime, to tell its log lines from the first's."""


@dataclass(slots=True)
class ApiserverRun:
    logs: LogRecords
    scrapes: ScrapeLog = field(default_factory=ScrapeLog)
    api: ApiProbe = field(default_factory=ApiProbe)
    readyz: ApiProbe = field(default_factory=lambda: ApiProbe(path="/readyz"))
    caches: list[tuple[float, int, int]] = field(default_factory=list)
    """(trio time, nodes cached, pods cached) after every change."""
    windows: dict[str, Window] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    nodes_at_start: int = 0
    pods_at_start: int = 0
    down_at_start: DownAtStart = field(default_factory=DownAtStart)

    def min_caches(self, window: Window) -> tuple[int, int]:
        seen = [(n, p) for t, n, p in self.caches if window.start <= t <= window.end]
        return min(n for n, _ in seen), min(p for _, p in seen)


class _Scenario:
    def __init__(
        self, cluster: Cluster, d: Daemon, client: httpx.AsyncClient, run: ApiserverRun
    ) -> None:
        self.cluster, self.d, self.client, self.run = cluster, d, client, run
        self.serial = 0

    async def metrics(self) -> dict[tuple[str, str], float]:
        return watch_restarts((await self.client.get("/metrics")).text)

    def marker(self) -> Callable[[], bool]:
        """Change a pod and a node; true once both watches have delivered the change, so a
        row does not end while one watch is still catching up (which would blur the next)."""
        self.serial += 1
        name, value = f"marker-{self.serial}", str(self.serial)
        self.cluster.add_pod("default", name, "node-0", containers={"app": (10**7, 1 << 24)})
        self.cluster.set_node_labels("node-2", {"marker": value})

        def arrived() -> bool:
            node = self.d.nodes.get("node-2")
            return (
                self.d.pods.get("default", name) is not None
                and node is not None
                and node.labels.get("marker") == value
            )

        return arrived

    async def arrives(self, predicate: Callable[[], bool], since: float) -> float | None:
        with trio.move_on_after(MARKER_LIMIT):
            await self.d.wait_for(predicate)
            return trio.current_time() - since
        return None

    async def row(self, name: str, body: Callable[[Window], Awaitable[None]]) -> None:
        d = self.d
        window = Window(start=trio.current_time(), restarts_before=await self.metrics())
        attempts = d.node_watch.restarts + d.pod_watch.restarts
        rss, hwm = rss_kib("VmRSS"), rss_kib("VmHWM")
        await body(window)
        window.watch_attempts = d.node_watch.restarts + d.pod_watch.restarts - attempts
        window.restarts_after = await self.metrics()
        window.rss_kib, window.hwm_kib = (rss, rss_kib("VmRSS")), (hwm, rss_kib("VmHWM"))
        window.end = trio.current_time()
        self.run.windows[name] = window

    def relist_with_marker(self) -> Callable[[], bool]:
        """Drop the watches, then create the marker and forget the history while the daemon
        backs off: it resumes from a resourceVersion that is now too old, gets 410, and can
        only learn of the marker by listing again."""
        self.cluster.drop_watches()
        arrived = self.marker()
        self.cluster.expire_history()
        return arrived

    async def watch_drop(self, window: Window) -> None:
        # Twice: the second reconnect must not wait longer than the first.
        seconds = []
        for _ in range(2):
            began = trio.current_time()
            self.cluster.drop_watches()
            seconds.append(await self.arrives(self.marker(), began))
        window.notes["each_marker_seconds"] = seconds
        window.marker_seconds = trio.current_time() - window.start

    async def gone(self, window: Window) -> None:
        window.marker_seconds = await self.arrives(self.relist_with_marker(), window.start)

    async def lists_fail(self, window: Window) -> None:
        self.cluster.fail_lists(count=3, status=500)
        self.cluster.add_node("node-late", pods=1)
        arrived = self.relist_with_marker()
        window.marker_seconds = await self.arrives(
            lambda: arrived() and "node-late" in self.d.manager.nodes, window.start
        )
        window.notes["failed_lists_left"] = self.cluster.apiserver.list_faults.remaining
        self.cluster.clear_list_faults()

    async def lists_slow(self, window: Window) -> None:
        self.cluster.slow_lists(2.0)
        window.marker_seconds = await self.arrives(self.relist_with_marker(), window.start)
        self.cluster.slow_lists(0)

    async def down_and_up(self, window: Window) -> None:
        cluster = self.cluster
        cluster.apiserver_down()
        await trio.sleep(DOWN_SECONDS / 2)
        # A token nobody used yet: it cannot be reviewed, so it must not get in.
        ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
        headers = {"Authorization": f"Bearer {cluster.viewer_token}"}
        async with httpx.AsyncClient(
            base_url=self.client.base_url, verify=ctx, headers=headers, timeout=5
        ) as fresh:
            began = trio.current_time()
            denied = await fresh.get(f"{PREFIX}/nodes")
            window.notes["fresh_token_status"] = denied.status_code
            window.notes["fresh_token_seconds"] = trio.current_time() - began
            window.notes["fresh_token_body"] = denied.text[:300]
            await trio.sleep(DOWN_SECONDS / 2)
            window.notes["up_at"] = trio.current_time()
            cluster.apiserver_up()
            window.marker_seconds = await self.arrives(self.marker(), window.start)
            # A failed review is not remembered: the same token works once reviews do.
            allowed = await fresh.get(f"{PREFIX}/nodes")
            window.notes["fresh_token_status_after"] = allowed.status_code


async def _record_caches(d: Daemon, run: ApiserverRun) -> None:
    while True:
        run.caches.append((trio.current_time(), len(d.nodes), len(d.pods)))
        await d.changes.park()


def _static_auth_flags(cluster: Cluster) -> list[str]:
    """Authentication settings as flags, so start-up needs no ConfigMap from the apiserver."""
    return [
        "--client-ca-file", str(cluster.pki.client_ca_file),
        "--requestheader-client-ca-file", str(cluster.front_proxy_ca_file),
        "--requestheader-allowed-names", "front-proxy-client",
        "--requestheader-username-headers", "X-Remote-User",
        "--requestheader-group-headers", "X-Remote-Group",
        "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
    ]


async def _down_at_start(cluster: Cluster, workdir: Path, result: DownAtStart) -> None:
    cluster.apiserver_down()
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    result.started = trio.current_time()
    async with (
        running_daemon(cluster, workdir, _static_auth_flags(cluster), aggregate=False) as d,
        # Anonymous, as the kubelet's probes are.
        httpx.AsyncClient(base_url=f"https://127.0.0.1:{d.port}", verify=ctx, timeout=5) as probe,
        direct_client(cluster, d) as client,
    ):
        began = trio.current_time()
        # Watch restarts wake nobody; this window is what the backoff is judged over.
        await trio.sleep(DOWN_SECONDS)
        result.window = trio.current_time() - began
        result.attempts_in_window = d.node_watch.restarts
        readyz = await probe.get("/readyz", params={"verbose": "1"})
        result.readyz_status, result.readyz_text = readyz.status_code, readyz.text
        livez = await probe.get("/livez", params={"verbose": "1"})
        result.livez_status, result.livez_text = livez.status_code, livez.text
        up = trio.current_time()
        cluster.apiserver_up()
        with trio.move_on_after(MARKER_LIMIT):
            # Ready as /readyz sees it: metrics to serve and both lists in. The pod watch
            # may still be in a longer backoff step when the first scrape makes the store
            # ready, so `d.ready` alone would race it.
            await d.wait_for(
                lambda: d.ready.is_set() and d.node_watch.synced and d.pod_watch.synced
            )
            result.ready_after_up = trio.current_time() - up
        result.readyz_after = (await probe.get("/readyz")).status_code
        result.stats_restarts = {"nodes": d.node_watch.restarts, "pods": d.pod_watch.restarts}
        result.restarts = watch_restarts((await client.get("/metrics")).text)
    result.ended = trio.current_time()


async def run_apiserver_matrix(workdir: Path, logs: LogRecords) -> ApiserverRun:
    config = ClusterConfig(nodes=3, pods_per_node=4, kubelet_refresh=0.5)
    with trio.fail_after(150), debug_logs("metrics_server.kube.watch"):
        run = ApiserverRun(logs=logs)
        async with open_cluster(config) as cluster:
            ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
            async with (
                running_daemon(cluster, workdir / "main") as d,
                direct_client(cluster, d) as client,
                httpx.AsyncClient(base_url=f"https://127.0.0.1:{d.port}", verify=ctx) as anon,
            ):
                with trio.fail_after(20):
                    await d.wait_for(lambda: d.store.nodes_with_usage() == 3)
                run.nodes_at_start, run.pods_at_start = len(d.nodes), len(d.pods)
                async with trio.open_nursery() as nursery:
                    run.started = trio.current_time()
                    nursery.start_soon(run.scrapes.run, d)
                    nursery.start_soon(run.api.run, client)
                    nursery.start_soon(run.readyz.run, anon)
                    nursery.start_soon(_record_caches, d, run)
                    scenario = _Scenario(cluster, d, client, run)
                    await scenario.row("watch-drop", scenario.watch_drop)
                    await scenario.row("watch-410-gone", scenario.gone)
                    await scenario.row("list-500", scenario.lists_fail)
                    await scenario.row("list-slow", scenario.lists_slow)
                    await scenario.row("apiserver-down-and-up", scenario.down_and_up)
                    run.scrapes.record(d)
                    run.ended = trio.current_time()
                    nursery.cancel_scope.cancel()
            await _down_at_start(cluster, workdir / "second", run.down_at_start)
    return run
