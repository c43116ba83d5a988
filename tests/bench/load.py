"""HPA-style query load against a metrics server, run as its own process by the harness.

Open loop: request i is due at start + i / rate, whatever happened to earlier ones, so a slow
server shows up as latency instead of as a lower request rate. Each request lists the pods of
one replica set (`/namespaces/{ns}/pods?labelSelector=app=…,pod-template-hash=…`, ~10 pods),
as the HPA controller does. Authenticates like kube-apiserver's aggregator (front-proxy client
certificate and X-Remote-User). Writes one JSON object of results.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import ssl
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

ADMIN_HEADERS = {"X-Remote-User": "kubernetes-admin", "X-Remote-Group": "system:masters"}
CONNECTIONS = 16
REQUEST_TIMEOUT = 10.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def client(url: str, pki: Path, connections: int = CONNECTIONS) -> httpx.AsyncClient:
    """A client authenticated as the aggregator forwarding for the cluster admin."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "front-proxy-client.crt"), str(pki / "front-proxy-client.key"))
    return httpx.AsyncClient(
        base_url=url,
        verify=ctx,
        headers=ADMIN_HEADERS,
        timeout=REQUEST_TIMEOUT,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def rfc3339_seconds(text: str) -> float:
    """Seconds since the epoch of a metav1 timestamp (`2024-01-02T03:04:05Z`)."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone


def _paths(workloads: list[Any], seed: int) -> list[str]:
    rng = random.Random(seed)
    groups = [g for g in workloads if g[2] >= 2]
    rng.shuffle(groups)
    out = []
    for namespace, labels, _ in groups:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        out.append(
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
            f"?labelSelector={quote(selector)}"
        )
    return out


async def run_load(
    http: httpx.AsyncClient, paths: list[str], rate: float, duration: float
) -> dict[str, Any]:
    """Send `rate` requests per second for `duration` seconds; latency and freshness figures."""
    latencies: list[float] = []
    ages: list[float] = []
    items: list[int] = []
    errors: dict[str, int] = {}
    late = 0

    async def one(path: str, due: float) -> None:
        nonlocal late
        started = trio.current_time()
        if started - due > 0.05:
            late += 1
        try:
            response = await http.get(path)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        latencies.append(trio.current_time() - due)
        if response.status_code != 200:
            errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
            return
        now = time.time()
        body = response.json()
        items.append(len(body["items"]))
        ages.extend(now - rfc3339_seconds(item["timestamp"]) for item in body["items"])

    total = int(rate * duration)
    start = trio.current_time() + 0.1
    with trio.move_on_after(duration + REQUEST_TIMEOUT + 5):
        async with trio.open_nursery() as nursery:
            for i in range(total):
                due = start + i / rate
                await trio.sleep_until(due)
                nursery.start_soon(one, paths[i % len(paths)], due)
    ms = [v * 1000 for v in latencies]
    return {
        "requests": total,
        "completed": len(latencies),
        "errors": errors,
        "late_starts": late,
        "rate": rate,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p90": percentile(ms, 90),
            "p99": percentile(ms, 99),
            "max": max(ms, default=math.nan),
        },
        "items_mean": sum(items) / len(items) if items else 0.0,
        "age_s": {"p50": percentile(ages, 50), "p99": percentile(ages, 99),
                  "max": max(ages, default=math.nan)},
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workloads = json.loads((args.workdir / "workloads.json").read_text())
    paths = _paths(workloads, args.seed)
    if not paths:
        raise SystemExit("no workloads with at least two pods")
    async with client(args.url, args.workdir / "pki") as http:
        # Open the keep-alive connections before the clock starts.
        async with trio.open_nursery() as nursery:
            for path in paths[:CONNECTIONS]:
                nursery.start_soon(http.get, path)
        return await run_load(http, paths, args.rate, args.duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="the simulator's workdir")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = trio.run(main_async, args)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
