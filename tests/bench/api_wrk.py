"""API latency under HPA-style load, measured with `wrk` (C, Debian package `wrk`), so the load
generator costs the 2-core machine little and the figures are the server's.

    python -m tests.bench.api_wrk --nodes 100 --pods-per-node 70 --rounds 2   # `nox -s bench-api`

One simulated cluster (its own process); then, for each round and each variant, a fresh
metrics server (wired as in a cluster: delegated authentication and authorization against the
simulator) and `wrk` with `--connections` connections, each sending a namespace + label
selector query (~10 pods) with the admin's bearer token and a random think time between
requests (exponential, mean `--think-ms`; ~200 queries/s with 5 connections). Every query is
authenticated by TokenReview and authorized by SubjectAccessReview, both cached for the
variant's TTLs. Variants:

- `default`: upstream's 10 s caches;
- `long-cache`: both caches 1 h, so no review ever expires during a run — the difference
  between the two is what cache expiry costs the tail.

Prints wrk's p50/p90/p99 and the server's CPU per variant and round, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from tests.bench.harness import (
    STARTUP_TIMEOUT,
    _served_nodes,
    cpu_seconds,
    free_port,
    metrics_server_argv,
    stop,
    wait_for_simulator,
)
from tests.bench.load import client

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "long-cache": [
        "--authentication-token-webhook-cache-ttl", "1h",
        "--authorization-webhook-cache-authorized-ttl", "1h",
    ],
}
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
LATENCY_LINE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
REQUESTS_LINE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
NON_2XX_LINE = re.compile(r"Non-2xx or 3xx responses: (\d+)")
SOCKET_ERRORS_LINE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def hpa_paths(workloads: list[Any], count: int, seed: int = 7) -> list[str]:
    """Queries for replica sets of the simulated world, like the HPA controller sends."""
    groups = [g for g in workloads if g[2] >= 2]
    random.Random(seed).shuffle(groups)
    return [
        f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector="
        + quote(",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        for ns, labels, _ in groups[:count]
    ]


def wrk_script(paths: list[str], token: str, think_ms: int) -> str:
    listed = ",\n".join(f"  {json.dumps(p)}" for p in paths)
    return (
        f"local paths = {{\n{listed}\n}}\n"
        "local i = 0\n"
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        'wrk.headers["Accept"] = "application/json"\n'
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
        # Exponential think times (mean think_ms): a fixed delay lines the connections up
        # into bursts that arrive together and so measures the convoy, not the server.
        f"math.randomseed(os.time())\n"
        f"delay = function() return math.floor(-math.log(1 - math.random()) * {think_ms}) end\n"
    )


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk --latency's summary as numbers (milliseconds, requests/s, error counts)."""
    out: dict[str, Any] = {
        f"p{q}_ms": round(float(v) * UNITS[u], 2) for q, v, u in LATENCY_LINE.findall(text)
    }
    rate = REQUESTS_LINE.search(text)
    if rate is None or "p99_ms" not in out:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    out["req_per_s"] = float(rate[1])
    non_2xx = NON_2XX_LINE.search(text)
    sockets = SOCKET_ERRORS_LINE.search(text)
    out["errors"] = (int(non_2xx[1]) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    return out


def admin_token(workdir: Path) -> str:
    match = re.search(r"token: (\S+)", (workdir / "kubeconfig").read_text())
    if match is None:
        raise RuntimeError("no admin token in the simulator's kubeconfig")
    return match[1]


async def one_server(
    args: argparse.Namespace, workdir: Path, variant: str, script: Path, nodes: int
) -> dict[str, Any]:
    port = free_port()
    log = (workdir / f"metrics-server-{variant}.log").open("ab")
    argv = metrics_server_argv(workdir, port, "15s") + VARIANTS[variant]
    server = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        async with client(f"https://127.0.0.1:{port}", workdir / "pki", connections=1) as http:
            with trio.fail_after(STARTUP_TIMEOUT):
                while len(await _served_nodes(http)) < nodes:
                    if server.returncode is not None:
                        raise RuntimeError(f"metrics server exited: see {log.name}")
                    await trio.sleep(0.2)
        # Past the start-up re-scrapes: every node on its own phase, as in steady state.
        await trio.sleep(args.warmup)
        cpu0 = cpu_seconds(server.pid)
        t0 = time.monotonic()
        wrk = await trio.run_process(
            ["wrk", "--latency", f"-t{args.threads}", f"-c{args.connections}",
             f"-d{args.duration}s", "-s", str(script), f"https://127.0.0.1:{port}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        elapsed = time.monotonic() - t0
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk failed: {wrk.stderr.decode(errors='replace')}")
        result = parse_wrk(wrk.stdout.decode())
        result["server_cpu_cores"] = round((cpu_seconds(server.pid) - cpu0) / elapsed, 3)
        return result
    finally:
        await stop(server)
        log.close()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if shutil.which("wrk") is None:
        raise SystemExit("api_wrk: `wrk` is not on PATH (Debian/Ubuntu: apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="ms-api-wrk-"))
    sim_log = (workdir / "sim.log").open("wb")
    sim = await trio.lowlevel.open_process(
        [sys.executable, "-m", "metrics_server.simulator", "--no-metrics-server",
         "--nodes", str(args.nodes), "--pods-per-node", str(args.pods_per_node),
         "--workdir", str(workdir)],
        stdout=sim_log, stderr=subprocess.STDOUT,
    )
    results = []
    try:
        await wait_for_simulator(sim, workdir)
        paths = hpa_paths(json.loads((workdir / "workloads.json").read_text()), 64)
        script = workdir / "hpa.lua"
        script.write_text(wrk_script(paths, admin_token(workdir), args.think_ms))
        for round_ in range(1, args.rounds + 1):
            for variant in args.variants:
                result = await one_server(args, workdir, variant, script, args.nodes)
                result.update(variant=variant, round=round_)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        await stop(sim)
        sim_log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--pods-per-node", type=int, default=70)
    p.add_argument("--connections", type=int, default=5)
    p.add_argument("--think-ms", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--duration", type=int, default=30, help="seconds of load per measurement")
    p.add_argument("--warmup", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", type=lambda t: t.split(","), default=list(VARIANTS))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; known: {sorted(VARIANTS)}")
    results = trio.run(run, args)
    print(f"{'variant':12} {'round':>5} {'req/s':>7} {'p50':>7} {'p90':>7} {'p99':>7} "
          f"{'errors':>6} {'cpu':>6}")
    for r in results:
        print(f"{r['variant']:12} {r['round']:>5} {r['req_per_s']:>7.0f} {r['p50_ms']:>7} "
              f"{r['p90_ms']:>7} {r['p99_ms']:>7} {r['errors']:>6} {r['server_cpu_cores']:>6}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
