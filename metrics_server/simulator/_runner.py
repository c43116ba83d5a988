"""The `metrics-server-sim` runner: a cluster, optionally this project's metrics server as a
subprocess wired to it through the aggregation proxy, optional churn, and the kubectl demo.

Everything runs in one nursery owned by `run`; the metrics server subprocess is stopped with
SIGTERM and killed after a grace period however the runner ends.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from metrics_server.simulator._cluster import Cluster, ClusterConfig, run_cluster

__all__ = ["Options", "metrics_server_argv", "parse_args", "run"]

READY_TIMEOUT = 90.0
READY_POLL = 0.5
STOP_GRACE = 10.0
KUBECTL_TIMEOUT = 60.0
CHURN_INTERVAL = 5.0
LOG_TAIL_LINES = 40
REPORT_TIMEOUT = 30.0
REPORT_MARK = "first scrape: "

METRICS_SERVER_AUTH_ARGS: tuple[str, ...] = (
    "--requestheader-client-ca-file", "{front_proxy_ca}",
    "--requestheader-allowed-names", "front-proxy-client",
    "--authentication-kubeconfig", "{kubeconfig}",
    "--authorization-kubeconfig", "{kubeconfig}",
)
"""The delegated-authentication flags (front-proxy CA, TokenReview and SubjectAccessReview)."""

METRICS_SERVER_EXTRA_ARGS: tuple[str, ...] = METRICS_SERVER_AUTH_ARGS
"""Appended to the metrics server's command line ({front_proxy_ca} and {kubeconfig} are filled
in). The one place to adjust; `()` runs the metrics server without delegated auth."""


class SimulatorError(Exception):
    """The runner could not bring the metrics server up, or the demo failed."""


@dataclass(frozen=True, slots=True)
class Options:
    config: ClusterConfig
    kubeconfig_out: Path | None
    metrics_server: bool
    metric_resolution: str
    churn: bool
    duration: float | None
    demo: bool
    kubectl: Path | None
    """Resolved before trio starts (it may download)."""


def _duration(text: str) -> float:
    """Go-style durations (`1s`, `500ms`, `1m30s`) or plain seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    total, number, i = 0.0, "", 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in units else ch
        if unit not in units or not number:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: missing unit")
    return total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="metrics-server-sim",
        description="Run a simulated Kubernetes cluster (fake apiserver and kubelets) and, "
        "by default, this metrics server against it.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--pods-per-node", type=int, default=10, help="pods per node (default 10)")
    p.add_argument("--kubelet-refresh", type=_duration, default=1.0,
                   help="kubelet sample interval (default 1s)")
    p.add_argument("--seed", type=int, default=0, help="seed for names and ground truth")
    p.add_argument("--workdir", type=Path, default=None,
                   help="directory for PEMs, kubeconfigs and logs (default: a temporary one)")
    p.add_argument("--kubeconfig-out", type=Path, default=None,
                   help="also write the admin kubeconfig here")
    p.add_argument("--apiserver-port", type=int, default=0, help="0 = ephemeral (default)")
    p.add_argument("--no-metrics-server", action="store_true",
                   help="run the cluster only")
    p.add_argument("--metric-resolution", default="15s",
                   help="passed to the metrics server (default 15s)")
    p.add_argument("--churn", action="store_true", help="add and remove nodes and pods over time")
    p.add_argument("--duration", type=float, default=None,
                   help="exit after this many seconds (default: until Ctrl-C)")
    p.add_argument("--demo", action="store_true",
                   help="run kubectl top against the cluster, print it next to the truth, exit")
    p.add_argument("--no-memory-wobble", action="store_true",
                   help="keep memory constant (it moves slowly by default)")
    p.add_argument("--kubelet-processes", type=int, default=1,
                   help="processes serving the kubelets (default 1); more than one puts "
                   "node-i's kubelet on a fixed port, --kubelet-port-base + i")
    p.add_argument("--kubelet-port-base", type=int, default=0,
                   help="first fixed kubelet port (default: ephemeral ports with one "
                   "process, 20000 with more)")
    args = p.parse_args(argv)
    if args.kubelet_processes < 1:
        p.error("--kubelet-processes must be at least 1")
    if args.kubelet_processes > 1 and not args.kubelet_port_base:
        args.kubelet_port_base = 20000
    if args.kubelet_port_base and not 1024 <= args.kubelet_port_base <= 65535 - args.nodes:
        p.error(f"--kubelet-port-base {args.kubelet_port_base}: the {args.nodes} ports from "
                "it must lie within 1024-65535")
    return args


def options_from(args: argparse.Namespace, kubectl: Path | None) -> Options:
    config = ClusterConfig(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        kubelet_refresh=args.kubelet_refresh,
        seed=args.seed,
        workdir=args.workdir,
        apiserver_port=args.apiserver_port,
        memory_wobble=not args.no_memory_wobble,
        kubelet_port_base=args.kubelet_port_base,
        kubelet_processes=args.kubelet_processes,
    )
    return Options(
        config=config,
        kubeconfig_out=args.kubeconfig_out,
        metrics_server=not args.no_metrics_server,
        metric_resolution=args.metric_resolution,
        churn=args.churn,
        duration=args.duration,
        demo=args.demo,
        kubectl=kubectl,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def metrics_server_argv(cluster: Cluster, port: int, resolution: str) -> list[str]:
    """The metrics server's command line for this cluster."""
    values = {
        "front_proxy_ca": str(cluster.front_proxy_ca_file),
        "kubeconfig": str(cluster.metrics_server_kubeconfig_path),
    }
    return [
        sys.executable, "-m", "metrics_server",
        "--kubeconfig", str(cluster.metrics_server_kubeconfig_path),
        "--secure-port", str(port),
        "--bind-address", "127.0.0.1",
        "--tls-cert-file", str(cluster.metrics_server_cert_file),
        "--tls-private-key-file", str(cluster.metrics_server_key_file),
        "--metric-resolution", resolution,
        "--kubelet-use-node-status-port",
        "--kubelet-preferred-address-types", "InternalIP",
        "--kubelet-certificate-authority", str(cluster.kubelet_ca_file),
        *(arg.format(**values) for arg in METRICS_SERVER_EXTRA_ARGS),
    ]


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


async def _wait_ready(url: str, ca_file: Path, process: trio.Process, log: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(verify=context, timeout=5.0) as client:
        with trio.move_on_after(READY_TIMEOUT):
            while True:
                if process.returncode is not None:
                    raise SimulatorError(
                        f"metrics server exited with {process.returncode}:\n{_tail(log)}")
                try:
                    response = await client.get(url + "/readyz")
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(READY_POLL)
    raise SimulatorError(f"metrics server not ready within {READY_TIMEOUT:.0f}s:\n{_tail(log)}")


REPORT_LINE = re.compile(r'"((?:[^"\\]|\\.)*)"(?: fix="((?:[^"\\]|\\.)*)")?$')


async def _startup_report(log: Path) -> str | None:
    """The metrics server's first-scrape summary from its log, without klog's header and
    quoting; the fixes (if any scrapes failed) on a second line."""
    with trio.move_on_after(REPORT_TIMEOUT):
        while True:
            text = await trio.Path(log).read_text(errors="replace")
            for line in text.splitlines():
                if REPORT_MARK in line:
                    body = line.split("] ", 1)[-1]
                    match = REPORT_LINE.match(body)
                    if match is None:
                        return body
                    summary, fix = (g and g.replace('\\"', '"') for g in match.groups())
                    return f"{summary}\n  fix: {fix}" if fix else summary
            await trio.sleep(READY_POLL)
    return None


async def run_metrics_server(
    cluster: Cluster,
    resolution: str,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the metrics server until cancelled; `started(url)` once its /readyz says ok."""
    port = _free_port()
    argv = metrics_server_argv(cluster, port, resolution)
    log_path = cluster.workdir / "metrics-server.log"
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"https://127.0.0.1:{port}"
        await _wait_ready(url, cluster.ca_file, process, log_path)
        task_status.started(url)
        code = await process.wait()
        raise SimulatorError(f"metrics server exited with {code}:\n{_tail(log_path)}")
    finally:
        with trio.move_on_after(STOP_GRACE + 5) as cleanup:
            cleanup.shield = True
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(STOP_GRACE):
                    await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _churn(cluster: Cluster, seed: int) -> None:
    rng = random.Random(f"churn/{seed}")
    serial = 0
    while True:
        await trio.sleep(CHURN_INTERVAL)
        serial += 1
        nodes = cluster.node_names()
        roll = rng.random()
        if roll < 0.1 and len(nodes) > 1:
            cluster.remove_node(rng.choice(nodes))
        elif roll < 0.2:
            cluster.add_node(f"churn-node-{serial}", pods=rng.randrange(1, 5))
        elif roll < 0.6 and nodes:
            app = rng.choice(("web", "api", "batch"))
            cluster.add_pod("default", f"{app}-churn-{serial}", rng.choice(nodes),
                            [app, "sidecar"][: rng.randrange(1, 3)], {"app": app})
        else:
            pods = cluster.pod_keys()
            if pods:
                cluster.remove_pod(*rng.choice(pods))


def _cores(nanocores: int) -> str:
    return f"{math.ceil(nanocores / 1e6)}m"


def _mib(memory: int) -> str:
    return f"{memory // (1 << 20)}Mi"


async def _kubectl(options: Options, cluster: Cluster, *args: str) -> str:
    assert options.kubectl is not None
    argv = [str(options.kubectl), "--kubeconfig", str(cluster.kubeconfig_path),
            "--cache-dir", str(cluster.workdir / "kube-cache"), *args]
    print("$ kubectl " + " ".join(args), flush=True)
    with trio.fail_after(KUBECTL_TIMEOUT):
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                        check=False)
    out = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise SimulatorError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{out}")
    return out


def _side_by_side(left: str, right: list[str]) -> str:
    lines = left.rstrip("\n").splitlines()
    width = max((len(line) for line in lines), default=0) + 4
    rows = max(len(lines), len(right))
    lines += [""] * (rows - len(lines))
    right = right + [""] * (rows - len(right))
    return "\n".join(f"{a:<{width}}| {b}" for a, b in zip(lines, right, strict=True))


async def _demo(options: Options, cluster: Cluster) -> None:
    truth = [f"{'TRUTH NODE':<24}{'CPU':>10}{'MEMORY':>12}"]
    for name in cluster.node_names():
        cpu, memory = cluster.truth_node(name)
        truth.append(f"{name:<24}{_cores(cpu):>10}{_mib(memory):>12}")
    print(_side_by_side(await _kubectl(options, cluster, "top", "nodes"), truth), flush=True)
    print(flush=True)

    truth = [f"{'TRUTH NAMESPACE/POD':<48}{'CPU':>8}{'MEMORY':>10}"]
    multi: tuple[str, str] | None = None
    for ns, name in cluster.pod_keys():
        containers = cluster.truth_pod(ns, name)
        if len(containers) > 1 and multi is None:
            multi = (ns, name)
        cpu = sum(c for c, _ in containers.values())
        memory = sum(m for _, m in containers.values())
        truth.append(f"{ns + '/' + name:<48}{_cores(cpu):>8}{_mib(memory):>10}")
    print(_side_by_side(await _kubectl(options, cluster, "top", "pods", "-A"), truth), flush=True)
    print(flush=True)

    ns, name = multi or cluster.pod_keys()[0]
    truth = [f"{'TRUTH CONTAINER':<24}{'CPU':>8}{'MEMORY':>10}"]
    for container, (cpu, memory) in sorted(cluster.truth_pod(ns, name).items()):
        truth.append(f"{container:<24}{_cores(cpu):>8}{_mib(memory):>10}")
    out = await _kubectl(options, cluster, "top", "pod", name, "-n", ns, "--containers")
    print(_side_by_side(out, truth), flush=True)


async def _signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("\nstopping…", file=sys.stderr, flush=True)
            cancel.cancel()
            return


async def run(options: Options) -> None:
    """Run the cluster (and metrics server, churn, demo) until done or interrupted."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, nursery.cancel_scope)
        cluster: Cluster = await nursery.start(run_cluster, options.config)
        # The world is built and lives as long as this process: keep the cyclic GC from
        # walking its millions of objects over and over (1 s pauses at 5,000 nodes).
        gc.freeze()
        if options.kubeconfig_out is not None:
            shutil.copyfile(cluster.kubeconfig_path, options.kubeconfig_out)
        kubeconfig = options.kubeconfig_out or cluster.kubeconfig_path
        print(f"apiserver:  {cluster.apiserver_url}", flush=True)
        print(f"workdir:    {cluster.workdir}", flush=True)
        print(f"kubeconfig: {kubeconfig}", flush=True)
        print(f"nodes: {len(cluster.node_names())}, pods: {len(cluster.pod_keys())}", flush=True)
        if options.metrics_server:
            print("starting the metrics server…", flush=True)
            url: str = await nursery.start(run_metrics_server, cluster,
                                           options.metric_resolution)
            cluster.set_metrics_server(url, cluster.ca_file)
            print(f"metrics server ready at {url} (log: "
                  f"{cluster.workdir / 'metrics-server.log'})", flush=True)
            report = await _startup_report(cluster.workdir / "metrics-server.log")
            print(f"metrics server: {report or 'no first-scrape report in its log yet'}",
                  flush=True)
        if options.churn:
            nursery.start_soon(_churn, cluster, options.config.seed)
        if options.demo:
            await _demo(options, cluster)
            nursery.cancel_scope.cancel()
            return
        print("try:", flush=True)
        for args in ("top nodes", "top pods -A", "get nodes"):
            print(f"  kubectl --kubeconfig {kubeconfig} {args}", flush=True)
        if options.duration is not None:
            await trio.sleep(options.duration)
            nursery.cancel_scope.cancel()
