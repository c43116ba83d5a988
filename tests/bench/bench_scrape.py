"""Micro-benchmark of the per-scrape CPU path and per-node memory, without the network.

For a realistic kubelet body (tests/bench/bench_decode.py's generator, 30 and 110 pods) it
times, per node: `decode`, `MetricsStore.store_node` at steady state (every container has a
prev), and both together; and measures with tracemalloc the bytes the store keeps per node
and per pod, and the bytes one kubelet HTTP client (`KubeletTransport.client()`) costs.

`python tests/bench/bench_scrape.py [--compare SRC] [--json]`: with `--compare`, the same
measurement also runs against the metrics_server package found in SRC (e.g. a git worktree of
an older commit) in a subprocess, and both are printed side by side with their ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import timeit
import tracemalloc
from pathlib import Path
from typing import Any

NODES = 200
RESOLUTION_NS = 15 * 10**9


def _bodies(pods: int, count: int) -> list[bytes]:
    """`count` successive bodies of one node, 15 s apart, with CPU counters growing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_decode import kubelet_body

    base = kubelet_body(pods).decode()
    out = []
    for i in range(count):
        shift = i * 15_000
        text = base.replace("1633253812", str(1633253812 + i * 15))
        text = text.replace(" 12.345678", f" {12.345678 + shift / 1000:.6f}")
        out.append(text.encode())
    return out


def measure(pods: int, iterations: int) -> dict[str, float]:
    from metrics_server.scraper.decode import decode
    from metrics_server.storage.store import MetricsStore

    bodies = _bodies(pods, iterations + 2)
    batches = [decode(body, 0) for body in bodies]
    if len(batches[0].pods) != pods:
        raise SystemExit("decoder lost pods")

    decode_s = min(timeit.repeat(lambda: decode(bodies[2], 0), number=iterations, repeat=5))

    def store_all() -> float:
        store = MetricsStore(RESOLUTION_NS)
        store.store_node("n", batches[0])
        store.store_node("n", batches[1])
        timer = timeit.default_timer
        started = timer()
        for batch in batches[2:]:
            store.store_node("n", batch)
        elapsed = timer() - started
        if store.node_usage("n") is None or store.pod_usage(*next(iter(batch.pods))) is None:
            raise SystemExit("store computed nothing")
        return elapsed

    store_s = min(store_all() for _ in range(5))

    # Memory the store keeps for NODES nodes of this size (fresh batches per node, as
    # decoding each node's own body would give).
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    big = MetricsStore(RESOLUTION_NS)
    for n in range(NODES):
        name = f"node-{n}"
        for body in bodies[:2]:
            batch = decode(body.replace(b'pod="', f'pod="{n}-'.encode()), 0)
            big.store_node(name, batch)
    gc.collect()
    store_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {
        "decode_us": decode_s / iterations * 1e6,
        "store_us": store_s / iterations * 1e6,
        "scrape_cpu_us": (decode_s + store_s) / iterations * 1e6,
        "store_kib_per_node": store_bytes / NODES / 1024,
        "store_bytes_per_pod": store_bytes / NODES / pods,
    }


def client_bytes() -> float:
    """Bytes one kubelet client costs (before any connection)."""
    import ssl

    from metrics_server.cli import parse_options
    from metrics_server.kube.credentials import ClusterAccess
    from metrics_server.scraper.kubelet import KubeletTransport

    options = parse_options(["--kubelet-insecure-tls"])
    try:
        access = ClusterAccess(
            host="https://127.0.0.1", ca_file=None, verify=False, cert_file=None,
            key_file=None, tls_server_name=None, _config=None, _token=None,
            _token_read_at=0.0,
        )
        transport = KubeletTransport(options.kubelet, access)
    except (TypeError, ssl.SSLError):
        return float("nan")  # the credentials API changed; not this benchmark's concern
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    clients = [transport.client() for _ in range(NODES)]
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del clients
    return used / NODES


def run_here(iterations: int) -> dict[str, Any]:
    out: dict[str, Any] = {f"{pods}_pods": measure(pods, iterations) for pods in (30, 110)}
    out["client_bytes"] = client_bytes()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--compare", metavar="SRC", default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_here(args.iterations)))
        return 0
    results: dict[str, Any] = {}
    variants = ([("compare", args.compare)] if args.compare else []) + [("current", None)]
    for name, src in variants:
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = src
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--iterations", str(args.iterations)],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )
        results[name] = json.loads(child.stdout)
    if args.json:
        print(json.dumps(results))
        return 0
    for pods in (30, 110):
        key = f"{pods}_pods"
        for metric in ("decode_us", "store_us", "scrape_cpu_us", "store_kib_per_node",
                       "store_bytes_per_pod"):
            row = f"{pods:>3} pods {metric:<20}"
            for name in results:
                row += f" {name}={results[name][key][metric]:9.1f}"
            if "compare" in results:
                ratio = results["current"][key][metric] / results["compare"][key][metric]
                row += f"  ratio={ratio:.2f}"
            print(row)
    print("kubelet client bytes " + " ".join(
        f"{name}={results[name]['client_bytes']:.0f}" for name in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
