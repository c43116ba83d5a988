"""Whole-process benchmark: a simulated cluster, this metrics server and a query load, each in
its own process; the metrics server's own CPU and RSS are read from /proc. Run it from the
repository root as `python -m tests.bench.harness` (or `nox -s bench`).

For each size (`--sizes 0x0,100x70,1000x30,5000x30`, nodes x pods per node) the harness
starts the simulator (`metrics-server-sim --no-metrics-server`), then the metrics server,
and measures, all against the same clock:

- start-up: process start until every node is served by the node list;
- an idle window (`--window` s, scraping only): CPU (utime + stime deltas of
  /proc/<pid>/stat) and RSS (VmRSS of /proc/<pid>/status) sampled each second; scrapes per
  node per period from the self-metrics; metric age (now − item timestamp) of every node
  served, sampled every few seconds;
- a load window: `--qps` HPA-style queries per second from a separate process
  (tests/bench/load.py), their latency and the age of the metrics they return;
- one cluster-wide pod list: its time, and the RSS before it and at its peak.

The simulator's CPU is reported too: when it saturates a core, the kubelets answer late and
the figures measure the machine, not the metrics server. The first size is the baseline for
RSS growth (normally 0 nodes). Prints a table and writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.bench.load import client, percentile, rfc3339_seconds

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = 1 / 1024
UPSTREAM_MCPU_PER_NODE = 1.0
UPSTREAM_MIB_PER_NODE = 2.0
SIM_READY_TIMEOUT = 600.0
STARTUP_TIMEOUT = 300.0
STOP_GRACE = 10.0
NODE_POLL = 0.2
AGE_POLL = 5.0


# ---- /proc ------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * PAGE_MIB
    return math.nan


@dataclass
class Samples:
    """CPU and RSS of a set of processes, sampled over one window."""

    times: list[float] = field(default_factory=list)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    rss: dict[int, list[float]] = field(default_factory=dict)

    def take(self, pids: list[int]) -> None:
        self.times.append(time.monotonic())
        for pid in pids:
            try:
                self.cpu.setdefault(pid, []).append(cpu_seconds(pid))
                self.rss.setdefault(pid, []).append(rss_mib(pid))
            except OSError:
                self.cpu.setdefault(pid, []).append(math.nan)
                self.rss.setdefault(pid, []).append(math.nan)

    def cores(self, pid: int) -> float:
        cpu = self.cpu[pid]
        return (cpu[-1] - cpu[0]) / (self.times[-1] - self.times[0])

    def cores_sum(self, pids: list[int]) -> float:
        return sum(self.cores(pid) for pid in pids)

    def cores_max(self, pids: list[int]) -> float:
        return max(self.cores(pid) for pid in pids)

    def rss_mean(self, pid: int) -> float:
        values = self.rss[pid]
        return sum(values) / len(values)

    def rss_max(self, pid: int) -> float:
        return max(self.rss[pid])


async def sample(samples: Samples, pids: list[int], seconds: float, every: float = 1.0) -> None:
    start = trio.current_time()
    samples.take(pids)
    n = 1
    while trio.current_time() - start < seconds:
        await trio.sleep_until(start + n * every)
        samples.take(pids)
        n += 1


# ---- processes --------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the simulator and its kubelet shard processes)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def stop(process: trio.Process) -> None:
    with trio.move_on_after(STOP_GRACE + 5) as scope:
        scope.shield = True
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_for_simulator(sim: trio.Process, workdir: Path) -> None:
    """Until the simulator has built its world (it writes workloads.json last)."""
    with trio.fail_after(SIM_READY_TIMEOUT):
        while not (workdir / "workloads.json").exists():
            if sim.returncode is not None:
                raise RuntimeError(f"simulator exited: see {workdir / 'sim.log'}")
            await trio.sleep(0.2)


def metrics_server_argv(workdir: Path, port: int, resolution: str) -> list[str]:
    pki = workdir / "pki"
    kubeconfig = str(workdir / "metrics-server.kubeconfig")
    return [
        sys.executable, "-m", "metrics_server",
        "--kubeconfig", kubeconfig,
        "--secure-port", str(port),
        "--bind-address", "127.0.0.1",
        "--cert-dir", str(workdir / "certs"),
        "--tls-cert-file", str(pki / "metrics-server.crt"),
        "--tls-private-key-file", str(pki / "metrics-server.key"),
        "--metric-resolution", resolution,
        "--kubelet-use-node-status-port",
        "--kubelet-preferred-address-types", "InternalIP",
        "--kubelet-certificate-authority", str(pki / "kubelet-ca.crt"),
        "--requestheader-client-ca-file", str(pki / "front-proxy-ca.crt"),
        "--requestheader-allowed-names", "front-proxy-client",
        "--authentication-kubeconfig", kubeconfig,
        "--authorization-kubeconfig", kubeconfig,
    ]


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"duration like 15s expected, got {text!r}")
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


# ---- one size ---------------------------------------------------------------------------------


@dataclass
class Size:
    nodes: int
    pods_per_node: int

    @classmethod
    def parse(cls, text: str) -> Size:
        nodes, _, pods = text.partition("x")
        return cls(int(nodes), int(pods or 0))

    def __str__(self) -> str:
        return f"{self.nodes}x{self.pods_per_node}"


def _counter(text: str, name: str, labels: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _self_metrics(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics")
    response.raise_for_status()
    return response.text


async def _served_nodes(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    try:
        response = await http.get("/apis/metrics.k8s.io/v1beta1/nodes")
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _node_ages(http: httpx.AsyncClient, seconds: float, out: dict[str, Any]) -> None:
    """Every AGE_POLL s: how many nodes are served and how old their metrics are."""
    ages: list[float] = []
    counts: list[int] = []
    start = trio.current_time()
    while trio.current_time() - start < seconds:
        items = await _served_nodes(http)
        now = time.time()
        counts.append(len(items))
        ages.extend(now - rfc3339_seconds(item["timestamp"]) for item in items)
        await trio.sleep(AGE_POLL)
    out["served_nodes_min"] = min(counts, default=0)
    out["node_age_s"] = {
        "p50": percentile(ages, 50), "p99": percentile(ages, 99), "max": max(ages, default=0.0)
    }


def kubelet_processes(size: Size, args: argparse.Namespace) -> int:
    """Simulator processes for the kubelets: one per started 2,000 nodes unless given."""
    if args.kubelet_processes:
        return int(args.kubelet_processes)
    return 1 + size.nodes // 2000


async def measure_size(
    size: Size, args: argparse.Namespace, base: Path
) -> list[dict[str, Any]]:
    """Start one simulated cluster and measure each metrics server variant against it."""
    workdir = base / str(size)
    workdir.mkdir(parents=True)
    sim_log = (workdir / "sim.log").open("wb")
    sim_argv = [
        sys.executable, "-m", "metrics_server.simulator", "--no-metrics-server",
        "--nodes", str(size.nodes), "--pods-per-node", str(size.pods_per_node),
        "--kubelet-refresh", str(args.kubelet_refresh), "--workdir", str(workdir),
        "--kubelet-processes", str(kubelet_processes(size, args)),
    ]
    sim_started = time.monotonic()
    sim = await trio.lowlevel.open_process(sim_argv, stdout=sim_log, stderr=subprocess.STDOUT)
    results = []
    try:
        await wait_for_simulator(sim, workdir)
        sim_start = time.monotonic() - sim_started
        sim_pids = process_tree(sim.pid)
        for variant, src in args.variants:
            print(f"   {variant} ...", flush=True)
            result: dict[str, Any] = {
                "variant": variant, "nodes": size.nodes, "pods_per_node": size.pods_per_node,
                "sim_start_s": sim_start, "sim_processes": len(sim_pids),
                "sim_rss_mib": sum(rss_mib(p) for p in sim_pids),
            }
            await measure_metrics_server(result, size, args, workdir, sim_pids, src)
            results.append(result)
    finally:
        await stop(sim)
        sim_log.close()
    return results


async def measure_metrics_server(
    result: dict[str, Any],
    size: Size,
    args: argparse.Namespace,
    workdir: Path,
    sim_pids: list[int],
    src: str | None,
) -> None:
    """Run one metrics server (from `src` when given) against the cluster and measure it."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    ms_log = (workdir / f"metrics-server-{result['variant']}.log").open("wb")
    sim_cpu0 = sum(cpu_seconds(p) for p in sim_pids)
    t0 = time.monotonic()
    # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH: without
    # cwd=src the "older checkout" would silently be this one.
    ms = await trio.lowlevel.open_process(
        metrics_server_argv(workdir, port, args.resolution),
        stdout=ms_log, stderr=subprocess.STDOUT, env=env, cwd=src or None,
    )
    pids = [ms.pid, *sim_pids]
    try:
        async with client(url, workdir / "pki", connections=4) as http:
            # Start-up: process start until the node list holds every node. A server that
            # never gets there is still measured, so a saturated size yields figures too.
            served = 0
            with trio.move_on_after(args.startup_timeout) as startup:
                while True:
                    asked = time.monotonic()
                    served = len(await _served_nodes(http))
                    if served >= size.nodes:
                        break
                    if ms.returncode is not None:
                        raise RuntimeError(f"metrics server exited: see {ms_log.name}")
                    # A list of 5,000 nodes is not free: keep our polling under ~20% of it.
                    await trio.sleep(max(NODE_POLL, 4 * (time.monotonic() - asked)))
            result["startup_s"] = None if startup.cancelled_caught else time.monotonic() - t0
            result["startup_served_nodes"] = served
            if startup.cancelled_caught:
                print(f"   start-up: {served}/{size.nodes} nodes served after "
                      f"{args.startup_timeout:g} s; measuring anyway", flush=True)
            # CPU both sides spent getting there: near 2 × startup_s the machine is the limit.
            result["startup_cpu_s"] = cpu_seconds(ms.pid)
            result["startup_sim_cpu_s"] = sum(cpu_seconds(p) for p in sim_pids) - sim_cpu0
            result["rss_at_startup_mib"] = rss_mib(ms.pid)
            # Past the quick start-up re-scrapes, every node is on its own phase.
            await trio.sleep(max(args.warmup - (time.monotonic() - t0), 0))

            idle = Samples()
            ages: dict[str, Any] = {}
            before = await _self_metrics(http)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample, idle, pids, args.window)
                nursery.start_soon(_node_ages, http, args.window, ages)
            after = await _self_metrics(http)
            ok = _counter(after, "metrics_server_kubelet_request_total", 'success="true"') - \
                _counter(before, "metrics_server_kubelet_request_total", 'success="true"')
            failed = _counter(after, "metrics_server_kubelet_request_total", 'success="false"') - \
                _counter(before, "metrics_server_kubelet_request_total", 'success="false"')
            dur_sum = _counter(after, "metrics_server_kubelet_request_duration_seconds_sum") - \
                _counter(before, "metrics_server_kubelet_request_duration_seconds_sum")
            dur_n = _counter(after, "metrics_server_kubelet_request_duration_seconds_count") - \
                _counter(before, "metrics_server_kubelet_request_duration_seconds_count")
            window = idle.times[-1] - idle.times[0]
            periods = window / parse_duration(args.resolution)
            result["idle"] = {
                "window_s": window,
                "cpu_cores": idle.cores(ms.pid),
                "rss_mean_mib": idle.rss_mean(ms.pid),
                "rss_max_mib": idle.rss_max(ms.pid),
                "sim_cpu_cores": idle.cores_sum(sim_pids),
                "sim_cpu_cores_max_process": idle.cores_max(sim_pids),
                "scrapes_ok": ok,
                "scrapes_failed": failed,
                "scrapes_per_node_per_period": ok / periods / size.nodes if size.nodes else 0.0,
                "scrape_mean_ms": dur_sum / dur_n * 1000 if dur_n else math.nan,
                **ages,
            }

            if args.qps > 0 and size.pods_per_node > 0:
                loaded = Samples()
                out = workdir / f"load-{result['variant']}.json"
                load_argv = [
                    sys.executable, "-m", "tests.bench.load", "--url", url,
                    "--workdir", str(workdir), "--rate", str(args.qps),
                    "--duration", str(args.window), "--out", str(out),
                ]
                load = await trio.lowlevel.open_process(load_argv)
                try:
                    await sample(loaded, [*pids, load.pid], args.window)
                    with trio.fail_after(args.window + 60):
                        await load.wait()
                finally:
                    await stop(load)
                result["load"] = {
                    "cpu_cores": loaded.cores(ms.pid),
                    "rss_max_mib": loaded.rss_max(ms.pid),
                    "sim_cpu_cores": loaded.cores_sum(sim_pids),
                    "load_cpu_cores": loaded.cores(load.pid),
                    **json.loads(out.read_text()),
                }

            if args.list_all and size.pods_per_node > 0:
                result["list_all"] = await _list_all(http, ms.pid)
        result["rss_end_mib"] = rss_mib(ms.pid)
    finally:
        await stop(ms)
        ms_log.close()


async def _list_all(http: httpx.AsyncClient, pid: int) -> dict[str, Any]:
    """One cluster-wide pod list: seconds to the last byte, RSS before and at its peak."""
    before = rss_mib(pid)
    peak = before
    done = trio.Event()

    async def watch_rss() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mib(pid))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_rss)
        started = time.monotonic()
        response = await http.get("/apis/metrics.k8s.io/v1beta1/pods", timeout=60)
        seconds = time.monotonic() - started
        done.set()
    items = len(response.json()["items"]) if response.status_code == 200 else 0
    return {
        "seconds": seconds, "status": response.status_code, "items": items,
        "bytes": len(response.content), "rss_before_mib": before, "rss_peak_mib": peak,
    }


# ---- report -----------------------------------------------------------------------------------


def per_node(results: list[dict[str, Any]]) -> None:
    """Add per-node figures and ratios to upstream's published sizing; the first result with 0
    nodes is the RSS baseline."""
    for r in results:
        if r["nodes"] == 0 or "error" in r:
            continue
        base = next(
            (b for b in results
             if b["nodes"] == 0 and b["variant"] == r["variant"] and "error" not in b),
            None,
        )
        base_rss = base["idle"]["rss_mean_mib"] if base else 0.0
        idle = r["idle"]
        mcpu = idle["cpu_cores"] * 1000
        growth = idle["rss_mean_mib"] - base_rss
        r["summary"] = {
            "mcpu": mcpu,
            "mcpu_per_node": mcpu / r["nodes"],
            "rss_mib": idle["rss_mean_mib"],
            "rss_growth_mib": growth if base else None,
            "rss_growth_per_node_mib": growth / r["nodes"] if base else None,
            "cpu_ratio_to_upstream": mcpu / r["nodes"] / UPSTREAM_MCPU_PER_NODE,
            "rss_ratio_to_upstream": (growth / r["nodes"] / UPSTREAM_MIB_PER_NODE)
            if base else None,
            "sim_saturated": idle.get("sim_cpu_cores_max_process", idle["sim_cpu_cores"]) > 0.9,
        }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'variant':>8} {'size':>10} {'mCPU':>7} {'mCPU/node':>9} {'RSS MiB':>8} {'MiB/node':>8} "
        f"{'start s':>7} {'scr/per':>7} {'age p99':>7} {'q p99ms':>7} {'list s':>6} "
        f"{'list RSS':>9} {'sim CPU':>7}"
    )
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append(f"{r['variant']:>8} {r['nodes']:>5}x{r['pods_per_node']:<4} "
                         f"failed: {r['error']}")
            continue
        idle = r["idle"]
        s = r.get("summary", {})
        load = r.get("load", {})
        lst = r.get("list_all", {})

        def f(v: Any, spec: str) -> str:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                width = "".join(c for c in spec.split(".", maxsplit=1)[0] if c.isdigit())
                return "-".rjust(int(width or 1))
            return format(v, spec)

        lines.append(
            f"{r['variant']:>8} {r['nodes']:>5}x{r['pods_per_node']:<4} "
            f"{f(idle['cpu_cores'] * 1000, '7.1f')} "
            f"{f(s.get('mcpu_per_node'), '9.4f')} {f(idle['rss_mean_mib'], '8.1f')} "
            f"{f(s.get('rss_growth_per_node_mib'), '8.4f')} {f(r.get('startup_s'), '7.2f')} "
            f"{f(idle.get('scrapes_per_node_per_period'), '7.3f')} "
            f"{f(idle.get('node_age_s', {}).get('p99'), '7.2f')} "
            f"{f(load.get('latency_ms', {}).get('p99'), '7.1f')} {f(lst.get('seconds'), '6.2f')} "
            f"{f(lst.get('rss_before_mib'), '4.0f')}>{f(lst.get('rss_peak_mib'), '<4.0f')} "
            f"{f(idle['sim_cpu_cores'], '7.2f')}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="ms-bench-"))
    results = []
    try:
        for size in args.sizes:
            print(f"== {size} ...", flush=True)
            try:
                measured = await measure_size(size, args, base)
            except (RuntimeError, trio.TooSlowError, OSError) as exc:
                print(f"   {size} failed: {exc!r}", flush=True)
                measured = [{"variant": v, "nodes": size.nodes,
                             "pods_per_node": size.pods_per_node, "error": repr(exc)}
                            for v, _ in args.variants]
            for r in measured:
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "load"}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=lambda t: [Size.parse(s) for s in t.split(",")],
                   default=[Size(0, 0), Size(100, 70), Size(1000, 30)],
                   help="comma-separated NODESxPODS (default 0x0,100x70,1000x30)")
    p.add_argument("--resolution", default="15s", help="--metric-resolution (default 15s)")
    p.add_argument("--kubelet-refresh", type=float, default=1.0)
    p.add_argument("--kubelet-processes", type=int, default=0,
                   help="simulator processes serving kubelets (default: 1 + nodes // 2000)")
    p.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT,
                   help="seconds to wait for every node to be served before measuring anyway")
    p.add_argument("--warmup", type=float, default=30.0,
                   help="seconds after start before measuring (default 30)")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds of each measurement window (default 60)")
    p.add_argument("--qps", type=float, default=200.0, help="HPA-style queries per second")
    p.add_argument("--no-list-all", dest="list_all", action="store_false")
    p.add_argument("--compare", metavar="SRC", default=None,
                   help="also measure the metrics server from this checkout (e.g. a git "
                   "worktree of an older commit) against the same clusters")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    p.add_argument("--keep", action="store_true", help="keep work directories and logs")
    p.add_argument("--check", type=Path, default=None,
                   help="recorded results (JSON); fail if a per-node figure is 3x worse")
    args = p.parse_args(argv)
    args.variants = [("current", None)]
    if args.compare:
        args.variants.insert(0, ("compare", args.compare))
    return args


def check(results: list[dict[str, Any]], recorded_path: Path, factor: float = 3.0) -> list[str]:
    """Gross regressions against recorded figures (by the nearest recorded node count)."""
    recorded = [
        r for r in json.loads(recorded_path.read_text())["results"]
        if r["nodes"] and "error" not in r
    ]
    problems = []
    for r in results:
        if "error" in r:
            problems.append(f"{r['nodes']} nodes: {r['error']}")
            continue
        if not r["nodes"] or r["variant"] != "current":
            continue
        ref = min(recorded, key=lambda x: abs(x["nodes"] - r["nodes"]))
        for key in ("mcpu_per_node", "rss_growth_per_node_mib"):
            got, want = r["summary"].get(key), ref["summary"].get(key)
            if got is not None and want and got > factor * max(want, 0.0):
                problems.append(f"{r['nodes']} nodes: {key} {got:.4f} > {factor}x {want:.4f}")
        if r["startup_s"] is None:
            problems.append(f"{r['nodes']} nodes: only {r['startup_served_nodes']} served "
                            f"when the start-up limit ran out")
        elif ref.get("startup_s") and r["startup_s"] > factor * ref["startup_s"] + 5:
            problems.append(f"{r['nodes']} nodes: start-up {r['startup_s']:.1f}s "
                            f"> {factor}x {ref['startup_s']:.1f}s")
        if r["idle"]["scrapes_per_node_per_period"] < 0.9:
            problems.append(f"{r['nodes']} nodes: only "
                            f"{r['idle']['scrapes_per_node_per_period']:.2f} scrapes/node/period")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = trio.run(run, args)
    per_node(results)
    print(table(results))
    doc = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": sys.platform},
        "args": {k: (str(v) if not isinstance(v, (int, float, bool)) else v)
                 for k, v in vars(args).items()},
        "results": results,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    if args.check is not None:
        problems = check(results, args.check)
        for problem in problems:
            print(f"REGRESSION: {problem}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
