"""Soak: a bounded churn run against the metrics server as its own process.

    python -m tests.soak.soak --duration 600 --out soak.json     # `nox -s soak`

For `duration` seconds minus a settle period the simulated cluster churns, one mutation per
`step`: nodes (with pods) are added and removed, pods are added, removed and leave Running,
kubelets flap (refuse, 500, hang, slow, truncated or garbage answers for a few seconds), and
watches are dropped or expired (410). A few "anchor" nodes and their pods are never touched.
Meanwhile a query loop reads the API and a sampler reads the server's RSS, open file
descriptors and `metrics_server_scrape_tasks` every second. Then churn stops, faults heal,
and the served nodes and pods must converge to the cluster's.

`check(report)` lists what went wrong (empty when the soak passed):
- zero API errors (any non-200, exception, or an anchor node or pod missing from an answer);
- RSS after warm-up stays within ±10 % of its post-warm-up level;
- scrape tasks track the node count (never apart for more than a few samples);
- open file descriptors do not grow;
- after the settle period every node and pod is served and no per-node /metrics series is
  left over from a deleted node;
- the server's log holds no traceback, internal error or error line.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from metrics_server.simulator import (
    Cluster,
    ClusterConfig,
    Fault,
    Garbage,
    Hang,
    HttpStatus,
    Refuse,
    Slow,
    Truncated,
    open_cluster,
)
from tests.soak.server import ServerProcess, metrics_server_process

PREFIX = "/apis/metrics.k8s.io/v1beta1"
RSS_TOLERANCE = 0.10
MAX_TASK_MISMATCH_SAMPLES = 4
"""Consecutive 1 s samples the task gauge may lag the node count (a watch reconnecting)."""
FD_SLACK = 16
QUERY_TIMEOUT = 5.0
TASKS = re.compile(r"^metrics_server_scrape_tasks (\S+)$", re.M)
NODE_SERIES = re.compile(r'^metrics_server_\w+\{[^}]*node="([^"]+)"', re.M)


@dataclass(frozen=True, slots=True)
class SoakConfig:
    duration: float = 600.0
    """Seconds in all, settle period included."""
    settle: float = 25.0
    """Seconds at the end without churn, for convergence (two scrapes of every node)."""
    warmup: float = 0.3
    """Fraction of the churn period before RSS is expected to be stable."""
    step: float = 1.0
    """Seconds between mutations."""
    nodes: int = 8
    pods_per_node: int = 8
    anchors: int = 3
    min_nodes: int = 5
    max_nodes: int = 14
    query_interval: float = 0.2
    seed: int = 1


@dataclass(slots=True)
class Sample:
    t: float
    rss_kib: int
    fds: int
    tasks: int
    nodes: int


@dataclass(slots=True)
class SoakReport:
    config: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    queries: int = 0
    api_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    mutations: dict[str, int] = field(default_factory=dict)
    final_nodes_missing: list[str] = field(default_factory=list)
    final_pods_missing: int = 0
    final_pods_expected: int = 0
    leftover_node_series: list[str] = field(default_factory=list)
    log_problems: str = ""
    churn_seconds: float = 0.0
    elapsed: float = 0.0

    def api_error(self, what: str) -> None:
        self.api_errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(what[:400])

    def count(self, mutation: str) -> None:
        self.mutations[mutation] = self.mutations.get(mutation, 0) + 1

    def rss_figures(self) -> dict[str, float]:
        """Start (first sample), post-warm-up baseline, end and extremes after warm-up, KiB."""
        warm = self.config["warmup"] * self.churn_seconds
        after = [s.rss_kib for s in self.samples if s.t >= warm]
        if not self.samples or len(after) < 5:
            return {}
        baseline = statistics.median(after[:5])
        return {
            "start": self.samples[0].rss_kib,
            "baseline": baseline,
            "end": statistics.median(after[-5:]),
            "min_after_warmup": min(after),
            "max_after_warmup": max(after),
        }

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rss_kib"] = self.rss_figures()
        return out


def check(report: SoakReport) -> list[str]:
    """What went wrong in a soak; empty when it passed."""
    problems = []
    if report.api_errors:
        problems.append(
            f"{report.api_errors} API errors in {report.queries} queries: {report.error_samples}"
        )
    if report.queries == 0:
        problems.append("no queries were made")
    rss = report.rss_figures()
    if not rss:
        problems.append("too few RSS samples after warm-up")
    else:
        low, high = rss["baseline"] * (1 - RSS_TOLERANCE), rss["baseline"] * (1 + RSS_TOLERANCE)
        if not low <= rss["min_after_warmup"] <= rss["max_after_warmup"] <= high:
            problems.append(f"RSS left ±{RSS_TOLERANCE:.0%} of its post-warm-up level: {rss}")
    streak = longest = 0
    for sample in report.samples:
        streak = streak + 1 if sample.tasks != sample.nodes else 0
        longest = max(longest, streak)
    if longest > MAX_TASK_MISMATCH_SAMPLES:
        problems.append(f"scrape tasks and nodes disagreed for {longest} samples in a row")
    if report.samples and report.samples[-1].tasks != report.samples[-1].nodes:
        problems.append(f"at the end: {report.samples[-1]}")
    if len(report.samples) >= 2:
        first, last = report.samples[0].fds, report.samples[-1].fds
        if last > first + FD_SLACK:
            problems.append(f"open file descriptors grew from {first} to {last}")
    if report.final_nodes_missing or report.final_pods_missing:
        problems.append(
            f"not served after settling: nodes {report.final_nodes_missing}, "
            f"{report.final_pods_missing} of {report.final_pods_expected} pods"
        )
    if report.leftover_node_series:
        problems.append(f"/metrics keeps series of deleted nodes: {report.leftover_node_series}")
    if report.log_problems:
        problems.append(report.log_problems)
    return problems


class Churn:
    """Random mutations of the cluster, never touching the anchor nodes and pods."""

    FAULTS: tuple[Fault, ...] = (
        Refuse(), HttpStatus(500), Hang(), Slow(3.0), Truncated(), Garbage(),
    )

    def __init__(self, cluster: Cluster, config: SoakConfig, report: SoakReport) -> None:
        self.cluster = cluster
        self.config = config
        self.report = report
        self.rng = random.Random(config.seed)
        names = cluster.node_names()
        self.anchors = set(names[: config.anchors])
        self.anchor_pods = {key for node in self.anchors for key in cluster.pod_keys(node)}
        self.faulty: dict[str, float] = {}
        """Node → trio time its fault is cleared."""
        self.serial = 0

    def movable_nodes(self) -> list[str]:
        return [n for n in self.cluster.node_names() if n not in self.anchors]

    def heal_due(self, now: float) -> None:
        for node, until in list(self.faulty.items()):
            if until <= now:
                del self.faulty[node]
                if node in self.cluster.world.nodes:
                    self.cluster.clear_fault(node)

    def heal_all(self) -> None:
        self.heal_due(float("inf"))

    def step(self) -> None:
        now = trio.current_time()
        self.heal_due(now)
        c, cfg, rng = self.cluster, self.config, self.rng
        nodes = c.node_names()
        movable = self.movable_nodes()
        pods = [k for k in c.pod_keys() if k not in self.anchor_pods]
        actions = ["add_pod", "remove_pod", "pod_done", "flap", "flap"]
        if len(nodes) < cfg.max_nodes:
            actions.append("add_node")
        if len(nodes) > cfg.min_nodes and movable:
            actions.append("remove_node")
        if rng.random() < 0.08:
            actions = ["drop_watches"]
        elif rng.random() < 0.03:
            actions = ["expire_history"]
        action = rng.choice(actions)
        if action == "add_node":
            self.serial += 1
            c.add_node(f"churn-{self.serial}", pods=rng.randrange(0, 10))
        elif action == "remove_node":
            node = rng.choice(movable)
            self.faulty.pop(node, None)
            c.remove_node(node)
        elif action == "add_pod":
            self.serial += 1
            node = rng.choice(nodes)
            containers = [f"c{i}" for i in range(rng.randrange(1, 4))]
            c.add_pod(rng.choice(("default", "app-0", "app-1")), f"churn-{self.serial}", node,
                      containers, labels={"app": rng.choice(("web", "db")), "churn": "yes"})
        elif action in ("remove_pod", "pod_done") and pods:
            ns, name = rng.choice(pods)
            if action == "remove_pod":
                c.remove_pod(ns, name)
            else:
                c.set_pod_phase(ns, name, "Succeeded")
        elif action == "flap":
            healthy = [n for n in movable if n not in self.faulty]
            if healthy:
                node = rng.choice(healthy)
                c.set_fault(node, rng.choice(self.FAULTS))
                self.faulty[node] = now + rng.uniform(2.0, 8.0)
        elif action == "drop_watches":
            c.drop_watches()
        elif action == "expire_history":
            c.expire_history()
            c.drop_watches()
        self.report.count(action)


async def _query(
    client: httpx.AsyncClient, report: SoakReport, path: str, expect: str
) -> dict[str, Any] | None:
    report.queries += 1
    try:
        with trio.fail_after(QUERY_TIMEOUT):
            response = await client.get(path)
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        report.api_error(f"{path}: {exc!r}")
        return None
    if response.status_code != 200:
        report.api_error(f"{path}: HTTP {response.status_code}: {response.text}")
        return None
    if expect == "ok":
        return None
    body: dict[str, Any] = response.json()
    if body.get("kind") != expect:
        report.api_error(f"{path}: kind {body.get('kind')!r}, expected {expect}")
        return None
    return body


async def query_loop(server: ServerProcess, churn: Churn, report: SoakReport) -> None:
    """Lists and gets that must always succeed, and must always show the anchors."""
    anchor_pod = sorted(churn.anchor_pods)[0]
    async with server.client(timeout=QUERY_TIMEOUT) as client:
        while True:
            nodes = await _query(client, report, f"{PREFIX}/nodes", "NodeMetricsList")
            if nodes is not None:
                served = {item["metadata"]["name"] for item in nodes["items"]}
                if not churn.anchors <= served:
                    report.api_error(f"anchor nodes missing: {sorted(churn.anchors - served)}")
            pods = await _query(client, report, f"{PREFIX}/pods", "PodMetricsList")
            if pods is not None:
                served_pods = {
                    (i["metadata"]["namespace"], i["metadata"]["name"]) for i in pods["items"]
                }
                if not churn.anchor_pods <= served_pods:
                    missing = sorted(churn.anchor_pods - served_pods)[:3]
                    report.api_error(f"anchor pods missing: {missing}")
            await _query(
                client, report,
                f"{PREFIX}/namespaces/default/pods?labelSelector=app%20in%20(web,db),churn",
                "PodMetricsList",
            )
            await _query(
                client, report, f"{PREFIX}/namespaces/{anchor_pod[0]}/pods/{anchor_pod[1]}",
                "PodMetrics",
            )
            await _query(client, report, "/readyz", "ok")
            await trio.sleep(churn.config.query_interval)


async def sample_loop(
    server: ServerProcess, cluster: Cluster, report: SoakReport, start: float
) -> None:
    async with server.client(timeout=QUERY_TIMEOUT) as client:
        while True:
            with trio.fail_after(QUERY_TIMEOUT):
                text = (await client.get("/metrics")).text
            match = TASKS.search(text)
            report.samples.append(
                Sample(
                    t=round(trio.current_time() - start, 2),
                    rss_kib=server.rss_kib(),
                    fds=server.open_fds(),
                    tasks=int(float(match.group(1))) if match else -1,
                    nodes=len(cluster.world.nodes),
                )
            )
            await trio.sleep(1.0)


async def converge(server: ServerProcess, cluster: Cluster, report: SoakReport) -> None:
    """After churn: every node and Running pod served; no series of deleted nodes left."""
    expected_pods = {
        pod.key for pod in cluster.world.pods.values() if pod.phase == "Running"
    }
    report.final_pods_expected = len(expected_pods)
    nodes_missing: set[str] = set(cluster.node_names())
    pods_missing: set[tuple[str, str]] = expected_pods
    async with server.client(timeout=QUERY_TIMEOUT) as client:
        with trio.move_on_after(report.config["settle"]):
            while nodes_missing or pods_missing:
                await trio.sleep(1.0)
                nodes = (await client.get(f"{PREFIX}/nodes")).json()["items"]
                pods = (await client.get(f"{PREFIX}/pods")).json()["items"]
                nodes_missing = set(cluster.node_names()) - {i["metadata"]["name"] for i in nodes}
                pods_missing = expected_pods - {
                    (i["metadata"]["namespace"], i["metadata"]["name"]) for i in pods
                }
        text = (await client.get("/metrics")).text
    report.final_nodes_missing = sorted(nodes_missing)
    report.final_pods_missing = len(pods_missing)
    report.leftover_node_series = sorted(set(NODE_SERIES.findall(text)) - set(cluster.world.nodes))


async def run_soak(config: SoakConfig, workdir: Path) -> SoakReport:
    """One soak run; see the module docstring."""
    report = SoakReport(config=asdict(config))
    report.churn_seconds = config.duration - config.settle
    cluster_config = ClusterConfig(
        nodes=config.nodes, pods_per_node=config.pods_per_node, kubelet_refresh=1.0,
        seed=config.seed,
    )
    async with (
        open_cluster(cluster_config) as cluster,
        metrics_server_process(cluster, workdir / "server") as server,
    ):
        await server.wait_ready()
        churn = Churn(cluster, config, report)
        # Start from a cluster that is completely served, so "anchors present" holds at once.
        with trio.fail_after(30):
            async with server.client() as client:
                while True:
                    served = (await client.get(f"{PREFIX}/nodes")).json()["items"]
                    if len(served) >= config.nodes:
                        break
                    await trio.sleep(0.5)
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(query_loop, server, churn, report)
            nursery.start_soon(sample_loop, server, cluster, report, start)
            while trio.current_time() - start < report.churn_seconds:
                churn.step()
                await trio.sleep(config.step)
            churn.heal_all()
            await converge(server, cluster, report)
            nursery.cancel_scope.cancel()
        report.elapsed = round(trio.current_time() - start, 1)
    report.log_problems = server.log_problems()
    return report


def print_report(report: SoakReport) -> None:
    rss = report.rss_figures()
    first, last = report.samples[0], report.samples[-1]
    mib = {k: round(v / 1024, 1) for k, v in rss.items()}
    print(
        f"soak: {report.elapsed}s ({report.churn_seconds:g}s churn), "
        f"{sum(report.mutations.values())} mutations {report.mutations}\n"
        f"queries: {report.queries}, API errors: {report.api_errors}\n"
        f"RSS MiB: {mib}\n"
        f"fds: {first.fds} → {last.fds}; tasks/nodes at end: {last.tasks}/{last.nodes}; "
        f"max nodes {max(s.nodes for s in report.samples)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.duration < 60:
        parser.error("--duration must be at least 60 (warm-up and settling need time)")
    config = SoakConfig(duration=args.duration, seed=args.seed)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ms-soak-") as tmp:
        report = trio.run(run_soak, config, Path(tmp))
    args.out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    print_report(report)
    problems = check(report)
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"{'FAILED' if problems else 'passed'} in {time.time() - started:.0f}s; see {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
