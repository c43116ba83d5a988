"""Mixed-query load generator, run as its own process: `python -m tests.soak.load --plan P`.

Open loop: request i is due at start + i / rate whatever happened to earlier ones, and its
latency is measured from that due time, so a server that falls behind shows up as latency
(and as requests that never got a connection in time) rather than as a politely lower rate.
The mix is HPA- and kubectl-shaped: the node list, a pod list by namespace and label
selector, one pod by name, and /readyz. Every answer must be a 200 with the expected kind;
anything else is an error, counted by kind and cause. Results go to stdout as one JSON
object (and to --out).

The plan is a JSON file written by the driver (`tests.soak.loadrun`): the server's URL, the
CA file, a bearer token, and the namespaces, selectors and pod names that exist.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

PREFIX = "/apis/metrics.k8s.io/v1beta1"
REQUEST_TIMEOUT = 5.0
"""Seconds a request may take once a connection has picked it up."""
MIX = (("nodes", 30), ("pods_selector", 30), ("pod_get", 25), ("readyz", 15))
"""Request kinds and their weights."""
EXPECTED = {
    "nodes": b'"kind":"NodeMetricsList"',
    "pods_selector": b'"kind":"PodMetricsList"',
    "pod_get": b'"kind":"PodMetrics"',
    "readyz": b"ok",
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; NaN without values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[min(rank, len(ordered) - 1)]


def summary(latencies: list[float]) -> dict[str, float]:
    """Percentiles in milliseconds."""
    out = {f"p{q:g}": percentile(latencies, q) * 1000 for q in (50, 90, 95, 99, 99.9)}
    out["max"] = max(latencies, default=math.nan) * 1000
    return {k: round(v, 2) for k, v in out.items()}


@dataclass(slots=True)
class Plan:
    url: str
    ca_file: str
    token: str
    pods: list[tuple[str, str]]
    """(namespace, name) of pods that are served throughout the run."""
    selectors: list[tuple[str, str]]
    """(namespace, label selector) pairs that match at least one served pod."""

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        return cls(
            url=raw["url"],
            ca_file=raw["ca_file"],
            token=raw["token"],
            pods=[(ns, name) for ns, name in raw["pods"]],
            selectors=[(ns, sel) for ns, sel in raw["selectors"]],
        )


@dataclass(slots=True)
class Results:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    """Per kind: seconds from due time to the complete answer."""
    service: list[float] = field(default_factory=list)
    """Seconds from the request being sent to the complete answer."""
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    """The first few error descriptions."""
    sent: int = 0

    def error(self, kind: str, cause: str, detail: str) -> None:
        key = f"{kind}:{cause}"
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.samples) < 20:
            self.samples.append(f"{key}: {detail[:300]}")


def build_paths(plan: Plan, count: int, seed: int) -> list[tuple[str, str]]:
    """(kind, path) for each of `count` requests, drawn from the mix."""
    rng = random.Random(seed)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    out = []
    for kind in rng.choices(kinds, weights, k=count):
        if kind == "nodes":
            path = f"{PREFIX}/nodes"
        elif kind == "pods_selector":
            ns, selector = rng.choice(plan.selectors)
            path = f"{PREFIX}/namespaces/{ns}/pods?labelSelector={quote(selector)}"
        elif kind == "pod_get":
            ns, name = rng.choice(plan.pods)
            path = f"{PREFIX}/namespaces/{ns}/pods/{name}"
        else:
            path = "/readyz"
        out.append((kind, path))
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection over TLS, one request at a time.

    Hand-written rather than httpx: at hundreds of requests per second httpx's per-request
    overhead made the generator, not the server, the bottleneck (measured: ~210/s max).
    """

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, token: str) -> None:
        self._host, self._port, self._ctx = host, port, ctx
        self._head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._buffer = b""

    async def _connect(self) -> trio.SSLStream[trio.SocketStream]:
        raw = await trio.open_tcp_stream(self._host, self._port)
        stream = trio.SSLStream(raw, self._ctx, server_hostname=self._host, https_compatible=True)
        await stream.do_handshake()
        self._stream, self._buffer = stream, b""
        return stream

    async def close(self) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
            self._stream = None

    async def _fill(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self._buffer += data

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET `path`; reconnects once if a kept-alive connection died."""
        for attempt in (1, 2):
            reused = self._stream is not None
            stream = self._stream or await self._connect()
            try:
                await stream.send_all(f"GET {path} HTTP/1.1\r\n{self._head}\r\n".encode())
                return await self._response(stream)
            except (ConnectionError, trio.BrokenResourceError) as exc:
                await self.close()
                if not reused or attempt == 2:
                    raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _response(self, stream: trio.SSLStream[trio.SocketStream]) -> tuple[int, bytes]:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            await self._fill(stream)
        head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4 :]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self._buffer) < length:
                await self._fill(stream)
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked(stream)
        else:
            raise ConnectionError(f"answer without length: {head[:200]}")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _chunked(self, stream: trio.SSLStream[trio.SocketStream]) -> bytes:
        parts = []
        while True:
            while (end := self._buffer.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(self._buffer[:end].split(b";")[0], 16)
            while len(self._buffer) < end + 2 + size + 2:
                await self._fill(stream)
            parts.append(self._buffer[end + 2 : end + 2 + size])
            self._buffer = self._buffer[end + 2 + size + 2 :]
            if size == 0:
                return b"".join(parts)


async def run(plan: Plan, rate: float, duration: float, connections: int, seed: int) -> Any:
    """Send `rate` × `duration` requests on schedule; return the results as a dict."""
    ctx = ssl.create_default_context(cafile=plan.ca_file)
    url = httpx.URL(plan.url)
    host, port = url.host, url.port or 443
    count = int(rate * duration)
    paths = build_paths(plan, count, seed)
    results = Results()
    # Due requests queue here while every connection is busy; the wait counts as latency.
    send, receive = trio.open_memory_channel[tuple[str, str, float]](count)
    pool = [Connection(host, port, ctx, plan.token) for _ in range(connections)]
    # Warm the connections and the server's authentication caches off the clock.
    for conn in pool:
        await conn.get("/readyz")

    async def worker(conn: Connection) -> None:
        async for kind, path, due in receive:
            sent = trio.current_time()
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    status, body = await conn.get(path)
            except (OSError, ConnectionError, trio.TooSlowError, ValueError) as exc:
                await conn.close()
                results.error(kind, type(exc).__name__, f"{path}: {exc!r}")
                continue
            done = trio.current_time()
            if status != 200:
                results.error(kind, f"http_{status}", f"{path}: {body[:300]!r}")
            elif EXPECTED[kind] not in body[:200]:
                results.error(kind, "body", f"{path}: {body[:200]!r}")
            else:
                results.latencies.setdefault(kind, []).append(done - due)
                results.service.append(done - sent)

    start = trio.current_time()
    wall_start = time.time()
    cpu_start = time.process_time()
    async with trio.open_nursery() as nursery:
        for conn in pool:
            nursery.start_soon(worker, conn)
        async with send:
            for i, (kind, path) in enumerate(paths):
                due = start + i / rate
                await trio.sleep_until(due)
                send.send_nowait((kind, path, due))
                results.sent += 1
    elapsed = trio.current_time() - start
    cpu = time.process_time() - cpu_start
    for conn in pool:
        await conn.close()
    everything = [v for values in results.latencies.values() for v in values]
    return {
        "rate_target": rate,
        "duration_target": duration,
        "connections": connections,
        "started": wall_start,
        "elapsed": round(elapsed, 3),
        "generator_cpu_percent": round(100 * cpu / elapsed, 1) if elapsed else 0.0,
        "sent": results.sent,
        "ok": len(everything),
        "achieved_rate": round(len(everything) / elapsed, 1) if elapsed else 0.0,
        "errors": sum(results.errors.values()),
        "errors_by_cause": results.errors,
        "error_samples": results.samples,
        "latency_ms": summary(everything),
        "service_ms": summary(results.service),
        "latency_ms_by_kind": {k: summary(v) for k, v in sorted(results.latencies.items())},
        "requests_by_kind": {k: len(v) for k, v in sorted(results.latencies.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--plan", type=Path, required=True, help="JSON plan from the driver")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.connections <= 0:
        parser.error("--rate, --duration and --connections must be positive")
    report = trio.run(
        run, Plan.load(args.plan), args.rate, args.duration, args.connections, args.seed
    )
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
