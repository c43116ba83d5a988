"""CPU per kubelet GET, by client, against a simulator running as its own process.

Each variant scrapes every simulated kubelet in turn, `--rounds` times over kept-alive
connections, and divides this process's CPU time (user + system, `time.process_time`) by the
number of GETs; each figure is the best of 3 interleaved repeats. The kubelets' CPU is the
simulator's, so it is not counted.

- `transport`: `KubeletTransport.scrape` as the daemon runs it (one httpx client per node,
  each on its own `KubeletConnection`, asking for gzip); `transport-identity`: the same
  without gzip; `httpcore`: the same client on httpx's default transport (httpcore), as the
  daemon had it before.
- `shared-pool`: one httpx client (httpcore) whose pool holds a connection per node.
- `tls-floor`: a bare HTTP/1.1 GET written on a `trio.SSLStream` and read to the end of the
  body: what TLS and the socket calls cost with no client library at all.
- `decode+store`: `decode` and `MetricsStore.store_node` of the bodies fetched, for scale.

`python -m tests.bench.bench_client [--nodes 50] [--pods 30] [--rounds 20] [--json]`
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from metrics_server.cli import KubeletOptions
from metrics_server.kube import credentials
from metrics_server.kube.cache import node_info
from metrics_server.models import NodeInfo
from metrics_server.scraper.addresses import kubelet_url
from metrics_server.scraper.decode import decode
from metrics_server.scraper.kubelet import KubeletTransport
from metrics_server.storage.store import MetricsStore
from tests.bench.harness import wait_for_simulator

REPEATS = 3


async def _nodes(access: credentials.ClusterAccess) -> list[NodeInfo]:
    token = await access.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(verify=access.ssl_context(), headers=headers) as http:
        response = await http.get(f"{access.host}/api/v1/nodes")
        response.raise_for_status()
        infos = [node_info(item) for item in response.json()["items"]]
    return [info for info in infos if info is not None]


async def _cpu_per_call(
    calls: list[Callable[[], Awaitable[Any]]], rounds: int
) -> float:
    """Milliseconds of this process's CPU per call, after one warm-up round."""
    for call in calls:
        await call()
    started = time.process_time()
    for _ in range(rounds):
        for call in calls:
            await call()
    return (time.process_time() - started) * 1000 / (rounds * len(calls))


class _RawGet:
    """A keep-alive HTTP/1.1 GET on one TLS stream: just enough to read a kubelet's answer."""

    def __init__(self, host: str, port: int, path: str, ctx: ssl.SSLContext, token: str) -> None:
        self._addr = (host, port)
        self._ctx = ctx
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/plain\r\n{auth}\r\n"
        ).encode()
        self._stream: trio.SSLStream[trio.SocketStream] | None = None
        self._buffer = b""

    async def get(self) -> bytes:
        if self._stream is None:
            sock = await trio.open_tcp_stream(*self._addr)
            self._stream = trio.SSLStream(sock, self._ctx, server_hostname=self._addr[0])
            await self._stream.do_handshake()
        await self._stream.send_all(self._request)
        head = await self._until(b"\r\n\r\n")
        headers = head.lower()
        if b"transfer-encoding: chunked" in headers:
            parts = []
            while True:
                size = int((await self._until(b"\r\n")).split(b";")[0], 16)
                parts.append(await self._exactly(size + 2))
                if size == 0:
                    break
            return b"".join(p[:-2] for p in parts)
        length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
        return await self._exactly(length)

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(65536)
        if not data:
            raise EOFError("kubelet closed the connection")
        self._buffer += data

    async def _until(self, marker: bytes) -> bytes:
        while (at := self._buffer.find(marker)) < 0:
            await self._fill()
        out, self._buffer = self._buffer[:at], self._buffer[at + len(marker):]
        return out

    async def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()


async def measure(workdir: Path, rounds: int) -> dict[str, float]:
    pki = workdir / "pki"
    access = credentials.load(str(workdir / "metrics-server.kubeconfig"))
    options = KubeletOptions(
        preferred_address_types=("InternalIP",),
        use_node_status_port=True,
        certificate_authority=str(pki / "kubelet-ca.crt"),
    )
    transport = KubeletTransport(options, access)
    nodes = await _nodes(access)
    urls = [kubelet_url(n, options.preferred_address_types, 10250, True) for n in nodes]
    out: dict[str, float] = {"nodes": len(nodes), "rounds": rounds}

    bodies: list[bytes] = []

    def transport_calls(clients: list[httpx.AsyncClient]) -> list[Callable[[], Awaitable[Any]]]:
        def call_for(i: int) -> Callable[[], Awaitable[Any]]:
            async def call() -> None:
                response = await transport.scrape(clients[i], nodes[i].name, urls[i], None)
                if len(bodies) < len(nodes):
                    bodies.append(response.body)
            return call
        return [call_for(i) for i in range(len(nodes))]

    gzip_clients = [transport.client() for _ in nodes]
    plain_clients = [transport.client() for _ in nodes]
    for c in plain_clients:
        c.headers["Accept-Encoding"] = "identity"
    # httpx's own transport (httpcore), one client per node as before KubeletConnection.
    httpcore_clients = [
        httpx.AsyncClient(
            verify=transport._ssl,
            auth=c.auth, headers=c.headers, timeout=c.timeout,
            limits=httpx.Limits(max_connections=1, keepalive_expiry=None),
        )
        for c in gzip_clients
    ]
    variants = {
        "transport_ms": transport_calls(gzip_clients),
        "transport_identity_ms": transport_calls(plain_clients),
        "httpcore_ms": transport_calls(httpcore_clients),
    }
    # Interleaved repeats, best of each: the variants share the machine's noise.
    figures: dict[str, list[float]] = {key: [] for key in variants}
    for _ in range(REPEATS):
        for key, calls in variants.items():
            figures[key].append(await _cpu_per_call(calls, rounds))
    out.update({key: min(values) for key, values in figures.items()})
    for c in gzip_clients + plain_clients + httpcore_clients:
        await c.aclose()

    async with transport.client() as proto:
        pooled = httpx.AsyncClient(
            verify=transport._ssl,
            auth=proto.auth,
            limits=httpx.Limits(max_connections=len(nodes), keepalive_expiry=None),
            headers=proto.headers,
        )

    def pooled_call(i: int) -> Callable[[], Awaitable[Any]]:
        async def call() -> None:
            response = await pooled.get(urls[i])
            response.raise_for_status()
        return call

    async with pooled:
        out["shared_pool_ms"] = min([
            await _cpu_per_call([pooled_call(i) for i in range(len(nodes))], rounds)
            for _ in range(REPEATS)
        ])

    token = await access.token() or ""
    raw = []
    for url in urls:
        hostport, _, path = url.removeprefix("https://").partition("/")
        host, _, port = hostport.rpartition(":")
        raw.append(_RawGet(host, int(port), "/" + path, transport._ssl, token))
    out["tls_floor_ms"] = min(
        [await _cpu_per_call([r.get for r in raw], rounds) for _ in range(REPEATS)]
    )
    for r in raw:
        await r.aclose()

    store = MetricsStore(15 * 10**9)
    now = time.time_ns()

    async def decode_store() -> None:
        for i, body in enumerate(bodies):
            store.store_node(f"n{i}", decode(body, now))

    took = []
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(rounds):
            await decode_store()
        took.append((time.process_time() - started) * 1000 / (rounds * len(bodies)))
    out["decode_store_ms"] = min(took)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ms-bench-client-") as tmp:
        workdir = Path(tmp)
        argv = [
            sys.executable, "-m", "metrics_server.simulator", "--no-metrics-server",
            "--nodes", str(args.nodes), "--pods-per-node", str(args.pods),
            "--workdir", str(workdir),
        ]
        with (workdir / "sim.log").open("wb") as log:
            sim = await trio.lowlevel.open_process(argv, stdout=log, stderr=subprocess.STDOUT)
            try:
                await wait_for_simulator(sim, workdir)
                return await measure(workdir, args.rounds)
            finally:
                sim.terminate()
                with trio.move_on_after(10):
                    await sim.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--pods", type=int, default=30)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = trio.run(main_async, args)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['nodes']} kubelets x {args.pods} pods, {args.rounds} rounds; "
          "CPU of this process per GET:")
    floor = out["tls_floor_ms"]
    keys = ("transport_ms", "transport_identity_ms", "httpcore_ms", "shared_pool_ms",
            "tls_floor_ms", "decode_store_ms")
    for key in keys:
        print(f"  {key[:-3]:18s} {out[key]:7.3f} ms  ({out[key] / floor:.2f}x tls-floor)")


if __name__ == "__main__":
    main()
