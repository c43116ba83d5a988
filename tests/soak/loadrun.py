"""Load run: a simulated cluster (this process), the metrics server (a child process) and the
load generator (`tests.soak.load`, another child process), while scraping goes on.

    python -m tests.soak.loadrun --rate 500 --duration 60 --out load.json   # `nox -s load`

Prints the generator's figures (achieved rate, errors, latency percentiles) plus the server's
RSS and CPU over the run and how many kubelet scrapes happened meanwhile, and writes them as
JSON. `run_load` is what the test suite's smoke variant calls.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from metrics_server.simulator import ClusterConfig, open_cluster
from tests.soak.server import REPO, ServerProcess, metrics_server_process

SCRAPES = re.compile(
    r'^metrics_server_kubelet_request_total\{success="(true|false)"\} (\S+)$', re.M
)


async def scrape_counts(server: ServerProcess) -> dict[str, float]:
    """Kubelet requests so far, by success, from the server's /metrics."""
    async with server.client() as client:
        text = (await client.get("/metrics")).text
    return {ok: float(value) for ok, value in SCRAPES.findall(text)}


async def served_pods(server: ServerProcess) -> list[dict[str, Any]]:
    async with server.client() as client:
        response = await client.get("/apis/metrics.k8s.io/v1beta1/pods")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def write_plan(server: ServerProcess, pods: list[dict[str, Any]], path: Path) -> None:
    """What the generator may ask for: pods served now, and selectors that match them."""
    keys = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods)
    selectors = set()
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        ns = pod["metadata"]["namespace"]
        if "app" in labels and "pod-template-hash" in labels:
            # What the HPA sends for a Deployment's replica set.
            selectors.add(
                (ns, f"app={labels['app']},pod-template-hash={labels['pod-template-hash']}")
            )
        if "app" in labels:
            selectors.add((ns, f"app in ({labels['app']},none),tier"))
    plan = {
        "url": server.url,
        "ca_file": str(server.ca_file),
        "token": server.token,
        "pods": keys,
        "selectors": sorted(selectors),
    }
    path.write_text(json.dumps(plan))


async def run_load(
    *,
    rate: float,
    duration: float,
    connections: int = 32,
    nodes: int = 20,
    pods_per_node: int = 10,
    workdir: Path,
) -> dict[str, Any]:
    """One load run; returns the generator's report with the server's figures added."""
    config = ClusterConfig(nodes=nodes, pods_per_node=pods_per_node, kubelet_refresh=1.0)
    async with (
        open_cluster(config) as cluster,
        metrics_server_process(cluster, workdir / "server") as server,
    ):
        await server.wait_ready()
        expected = sum(len(cluster.pod_keys(n)) for n in cluster.node_names())
        # Another process: nothing to wait on but its answers.
        with trio.fail_after(30):
            while True:
                pods = await served_pods(server)
                if len(pods) >= expected:
                    break
                await trio.sleep(0.5)
        plan = workdir / "plan.json"
        write_plan(server, pods, plan)
        before = await scrape_counts(server)
        rss_start, cpu_start = server.rss_kib(), server.cpu_seconds()
        rss_max = rss_start
        driver_cpu_start = time.process_time()
        argv = [
            sys.executable, "-m", "tests.soak.load", "--plan", str(plan), "--rate", str(rate),
            "--duration", str(duration), "--connections", str(connections),
        ]
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def sample_rss() -> None:
                nonlocal rss_max
                while not done.is_set():
                    rss_max = max(rss_max, server.rss_kib())
                    with trio.move_on_after(1):
                        await done.wait()

            nursery.start_soon(sample_rss)
            with trio.fail_after(duration + 60):
                generator = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, cwd=REPO, check=False
                )
            done.set()
        if generator.returncode != 0:
            raise RuntimeError(
                f"load generator failed ({generator.returncode}):\n"
                f"{generator.stderr.decode(errors='replace')[-3000:]}"
            )
        report: dict[str, Any] = json.loads(generator.stdout)
        after = await scrape_counts(server)
        cpu = server.cpu_seconds() - cpu_start
        driver_cpu = time.process_time() - driver_cpu_start
        report["server"] = {
            "nodes": nodes,
            "pods": expected,
            "rss_kib_start": rss_start,
            "rss_kib_end": server.rss_kib(),
            "rss_kib_max": rss_max,
            "cpu_seconds": round(cpu, 2),
            "cpu_percent": round(100 * cpu / report["elapsed"], 1),
            "simulator_cpu_percent": round(100 * driver_cpu / report["elapsed"], 1),
            "scrapes_ok_during_load": after.get("true", 0) - before.get("true", 0),
            "scrapes_failed_during_load": after.get("false", 0) - before.get("false", 0),
            "log_problems": server.log_problems(),
        }
        return report


def print_report(report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    srv = report["server"]
    print(
        f"load: {report['ok']}/{report['sent']} ok at {report['achieved_rate']}/s "
        f"(target {report['rate_target']:g}/s for {report['duration_target']:g}s), "
        f"errors {report['errors']}\n"
        f"latency ms: p50 {lat['p50']} p90 {lat['p90']} p95 {lat['p95']} p99 {lat['p99']} "
        f"max {lat['max']}\n"
        f"server: {srv['nodes']} nodes, {srv['pods']} pods; RSS {srv['rss_kib_start'] // 1024}"
        f" → {srv['rss_kib_end'] // 1024} MiB (max {srv['rss_kib_max'] // 1024}); "
        f"CPU {srv['cpu_percent']}% of a core (generator {report['generator_cpu_percent']}%, "
        f"simulator {srv['simulator_cpu_percent']}%); scrapes during load: "
        f"{srv['scrapes_ok_during_load']:g} ok, {srv['scrapes_failed_during_load']:g} failed"
    )
    for kind, figures in report["latency_ms_by_kind"].items():
        print(f"  {kind:14} p50 {figures['p50']:8} p95 {figures['p95']:8} p99 {figures['p99']:8}")
    for sample in report["error_samples"]:
        print(f"  error: {sample}")


def failures(report: dict[str, Any], *, min_rate_fraction: float = 0.95) -> list[str]:
    """Why this run does not count as passed (empty: it passed)."""
    srv = report["server"]
    why = []
    if report["errors"]:
        why.append(f"{report['errors']} API errors")
    if report["achieved_rate"] < min_rate_fraction * report["rate_target"]:
        why.append(
            f"achieved {report['achieved_rate']}/s, under {min_rate_fraction:.0%} of the "
            f"{report['rate_target']:g}/s asked for"
        )
    if srv["scrapes_ok_during_load"] <= 0:
        why.append("no kubelet scrape succeeded during the load")
    if srv["scrapes_failed_during_load"] > 0:
        why.append(f"{srv['scrapes_failed_during_load']:g} kubelet scrapes failed during the load")
    if srv["log_problems"]:
        why.append(f"server log problems: {srv['log_problems']}")
    return why


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--pods-per-node", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("load.json"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ms-load-") as tmp:
        report = trio.run(
            lambda: run_load(
                rate=args.rate,
                duration=args.duration,
                connections=args.connections,
                nodes=args.nodes,
                pods_per_node=args.pods_per_node,
                workdir=Path(tmp),
            )
        )
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"written to {args.out}")
    why = failures(report)
    for reason in why:
        print(f"FAILED: {reason}")
    return 1 if why else 0


if __name__ == "__main__":
    sys.exit(main())
