"""Benchmark of Metrics API response encoding: a pod list in JSON vs Kubernetes protobuf.

Run `python -m tests.bench.bench_encode [--pods 10000] [--repeat 5] [--json]` from the
repository, or `python tests/bench/bench_encode.py ...` (which puts the repository first on
sys.path). Calls `MetricsAPI.list_pods` directly (no HTTP), for the same pods in one run, and
prints each encoding's response size in bytes, its best and median time over `--repeat` runs,
and protobuf's size and times as ratios of JSON's. Runs alternate between the two encodings
after one untimed warm-up of each. Pods have two containers and four labels, like a typical
workload, and are spread over 100 nodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if not __package__:  # run by path: sys.path[0] is tests/bench, not the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.negotiate import JSON, PROTOBUF, Choice
from metrics_server.models import (
    ContainerUsage,
    NodeInfo,
    NodeUsage,
    PodInfo,
    PodUsage,
    ResourceUsage,
)

_NOW_NS = 1_700_000_000_000_000_000


class _Store:
    def __init__(self, pods: dict[tuple[str, str], PodUsage]) -> None:
        self.pods = pods

    def node_usage(self, name: str) -> NodeUsage | None:
        return None

    def pod_usage(self, namespace: str, name: str) -> PodUsage | None:
        return self.pods.get((namespace, name))


class _Nodes:
    def get(self, name: str) -> NodeInfo | None:
        return None

    def sorted(self) -> list[NodeInfo]:
        return []


class _Pods:
    def __init__(self, infos: list[PodInfo]) -> None:
        self.infos = sorted(infos, key=lambda p: (p.namespace, p.name))

    def get(self, namespace: str, name: str) -> PodInfo | None:
        return None

    def in_namespace(self, namespace: str) -> Iterable[PodInfo]:
        return [p for p in self.infos if p.namespace == namespace]

    def all_sorted(self) -> Iterable[PodInfo]:
        return self.infos


def build_api(count: int) -> MetricsAPI:
    infos = []
    usages = {}
    for i in range(count):
        namespace = f"team-{i % 40:02d}"
        name = f"workload-{i // 3}-7d9f8c6b5-{i:06d}"
        labels = {
            "app": f"workload-{i // 3}",
            "pod-template-hash": "7d9f8c6b5",
            "tier": ("web", "worker", "cache")[i % 3],
            "app.kubernetes.io/part-of": f"team-{i % 40:02d}",
        }
        infos.append(PodInfo(namespace, name, labels))
        containers = tuple(
            ContainerUsage(
                f"container-{c}",
                ResourceUsage(cpu=1_234_567 * (i % 97 + 1) + c, memory=(i % 500 + 10) << 20),
            )
            for c in range(2)
        )
        # Pods on one node (of 100) share the node's sample timestamp and window.
        node = i % 100
        timestamp = _NOW_NS - 7 * 10**9 - node * 137_000_123
        window = 15_000_000_000 + node * 1_234_567
        usages[(namespace, name)] = PodUsage(timestamp, window, containers)
    return MetricsAPI(_Store(usages), _Nodes(), _Pods(infos))


def measure(api: MetricsAPI, choices: dict[str, Choice], repeat: int) -> dict[str, Any]:
    """Size and best and median encode time of each choice, runs interleaved."""
    times: dict[str, list[float]] = {name: [] for name in choices}
    sizes = {name: len(api.list_pods(None, {}, choice)) for name, choice in choices.items()}
    for _ in range(repeat):
        for name, choice in choices.items():
            start = time.perf_counter()
            body = api.list_pods(None, {}, choice)
            times[name].append(time.perf_counter() - start)
            assert len(body) == sizes[name]
    return {
        name: {
            "bytes": sizes[name],
            "best_ms": min(times[name]) * 1000,
            "median_ms": statistics.median(times[name]) * 1000,
        }
        for name in choices
    }


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """protobuf / JSON for size and both times."""
    proto, json_ = results["protobuf"], results["json"]
    return {key: proto[key] / json_[key] for key in ("bytes", "best_ms", "median_ms")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.pods < 1 or args.repeat < 1:
        parser.error("--pods and --repeat must be at least 1")
    api = build_api(args.pods)
    results = measure(api, {"json": Choice(JSON), "protobuf": Choice(PROTOBUF)}, args.repeat)
    ratio = ratios(results)
    if args.json:
        print(
            json.dumps(
                {"pods": args.pods, "repeat": args.repeat, **results, "protobuf/json": ratio}
            )
        )
        return 0
    print(
        f"PodMetricsList of {args.pods} pods (2 containers each), "
        f"{args.repeat} runs of each encoding:"
    )
    for name, r in results.items():
        print(
            f"  {name:9} {r['bytes']:>11,} bytes  {r['best_ms']:8.1f} ms best"
            f"  {r['median_ms']:8.1f} ms median  ({r['best_ms'] * 1000 / args.pods:.1f} µs/pod)"
        )
    print(
        f"  protobuf/json: size {ratio['bytes']:.3f}, best time {ratio['best_ms']:.3f},"
        f" median time {ratio['median_ms']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
