"""Benchmark of the kubelet `/metrics/resource` decoder on realistic bodies.

Run `python tests/bench/bench_decode.py [--json] [--iterations N]`; prints microseconds
per decoded node for a 30-pod and a 110-pod kubelet.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit

from metrics_server.scraper.decode import decode

_TS_MS = 1_633_253_812_125
_HEADERS = {
    "container_cpu_usage_seconds_total": (
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    ),
    "container_memory_working_set_bytes": (
        "[STABLE] Current working set of the container in bytes",
        "gauge",
    ),
    "container_start_time_seconds": (
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
    ),
    "container_swap_usage_bytes": (
        "[ALPHA] Current amount of the container swap usage in bytes",
        "gauge",
    ),
    "node_cpu_usage_seconds_total": (
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    ),
    "node_memory_working_set_bytes": ("[STABLE] Current working set of the node in bytes", "gauge"),
    "node_swap_usage_bytes": ("[ALPHA] Current swap usage of the node in bytes", "gauge"),
    "pod_cpu_usage_seconds_total": (
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    ),
    "pod_memory_working_set_bytes": ("[STABLE] Current working set of the pod in bytes", "gauge"),
    "pod_swap_usage_bytes": ("[ALPHA] Current amount of the pod swap usage in bytes", "gauge"),
    "resource_scrape_error": (
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    ),
}


def kubelet_body(pods: int, containers_per_pod: int = 2) -> bytes:
    """A body shaped like a real kubelet's: sorted series, HELP/TYPE, pod and swap series."""
    containers = [
        (f"ns-{p % 7}", f"workload-{p}-7d9f8c6b5-x{p:04d}", f"container-{c}", p * 10 + c)
        for p in range(pods)
        for c in range(containers_per_pod)
    ]
    sections: dict[str, list[str]] = {name: [] for name in _HEADERS}
    for ns, pod, container, i in containers:
        labels = f'container="{container}",namespace="{ns}",pod="{pod}"'
        sections["container_cpu_usage_seconds_total"].append(
            f"{{{labels}}} {12.345678 + i * 1.5:.6f} {_TS_MS + i}"
        )
        sections["container_memory_working_set_bytes"].append(
            f"{{{labels}}} {(1000 + i) * 12345.0:.6e} {_TS_MS + i}"
        )
        sections["container_start_time_seconds"].append(
            f"{{{labels}}} {1.633252712e9 + i:.9e} {_TS_MS + i}"
        )
        sections["container_swap_usage_bytes"].append(f"{{{labels}}} 0 {_TS_MS + i}")
    for p in range(pods):
        labels = f'namespace="ns-{p % 7}",pod="workload-{p}-7d9f8c6b5-x{p:04d}"'
        sections["pod_cpu_usage_seconds_total"].append(f"{{{labels}}} {30.5 + p:.6f} {_TS_MS}")
        sections["pod_memory_working_set_bytes"].append(f"{{{labels}}} {2.5e7 + p:.6e} {_TS_MS}")
        sections["pod_swap_usage_bytes"].append(f"{{{labels}}} 0 {_TS_MS}")
    sections["node_cpu_usage_seconds_total"].append(f" 357.35491 {_TS_MS}")
    sections["node_memory_working_set_bytes"].append(f" 1.616273408e+09 {_TS_MS}")
    sections["node_swap_usage_bytes"].append(f" 0 {_TS_MS}")
    sections["resource_scrape_error"].append(" 0")

    out: list[str] = []
    for name, (help_text, kind) in _HEADERS.items():
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(name + sample for sample in sections[name])
    return ("\n".join(out) + "\n").encode()


def measure(pods: int, iterations: int) -> float:
    """Best-of-5 microseconds per decode of a `pods`-pod body."""
    body = kubelet_body(pods)
    batch = decode(body, 0)
    if len(batch.pods) != pods or batch.node is None:
        raise SystemExit(f"decoder lost data: {len(batch.pods)} of {pods} pods")
    timer = timeit.Timer(lambda: decode(body, 0))
    best = min(timer.repeat(repeat=5, number=iterations))
    return best / iterations * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--iterations", type=int, default=2000, help="decodes per repeat")
    args = parser.parse_args(argv)
    results = {f"{pods}_pods_us_per_node": measure(pods, args.iterations) for pods in (30, 110)}
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in results.items()}))
    else:
        for pods in (30, 110):
            size = len(kubelet_body(pods))
            us = results[f"{pods}_pods_us_per_node"]
            print(f"decode {pods:>3} pods ({size} bytes): {us:8.1f} µs per node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
