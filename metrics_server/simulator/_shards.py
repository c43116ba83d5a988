"""Kubelet shard processes: more kubelets than one simulator process can serve.

One Python process serving 5,000 TLS kubelets saturates a core, and then the figures measure
the simulator. With `ClusterConfig.kubelet_processes = K` the main process serves node-i's
kubelet when i mod K is 0 and starts K - 1 children (`python -m
metrics_server.simulator._shards SPEC SHARD`) for the rest. Every kubelet listens on
127.0.0.1:(port base + i), so the apiserver can advertise ports before the children bind them.

A child rebuilds its nodes and pods from the seed exactly as the main process does (pods are
generated per node, so its share needs no knowledge of the others), serves them with the main
process's kubelet CA and token, writes one line "ready" on stdout once it listens, and runs
until it is stopped or its stdin (a pipe from the simulator) ends. Ground-truth rates are
identical; creation timestamps can differ by the seconds between the processes' starts.
Faults can only be set on kubelets of the main process.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import trio
import trustme

from metrics_server.simulator._certs import PKI
from metrics_server.simulator._kubelet import FakeKubelet
from metrics_server.simulator._world import World, populate_node

__all__ = ["ShardSpec", "serve_shard", "shard_pki", "start_kubelet_shards"]

READY_LINE = b"ready\n"
READY_TIMEOUT = 300.0
"""Building 2,500 nodes of 30 pods takes a child ~10 s on an idle core; far more on a busy one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSpec:
    """What a child needs to rebuild and serve its share; written as JSON beside the PKI."""

    nodes: int
    pods_per_node: int
    seed: int
    kubelet_refresh: float
    memory_wobble: bool
    port_base: int
    processes: int
    token: str
    kubelet_ca_cert: str = ""
    kubelet_ca_key: str = ""


async def start_kubelet_shards(
    spec: ShardSpec, pki: PKI, workdir: Path, nursery: trio.Nursery
) -> None:
    """Start shards 1..K-1 in `nursery` and return once each listens."""
    ca_key = workdir / "pki" / "kubelet-ca.key"
    pki.kubelet_ca.private_key_pem.write_to_path(str(ca_key))
    ca_key.chmod(0o600)
    spec_path = workdir / "kubelet-shards.json"
    full = ShardSpec(
        **{**asdict(spec), "kubelet_ca_cert": str(pki.kubelet_ca_file),
           "kubelet_ca_key": str(ca_key)}
    )
    spec_path.write_text(json.dumps(asdict(full)))
    spec_path.chmod(0o600)
    async with trio.open_nursery() as starting:
        for shard in range(1, spec.processes):
            starting.start_soon(_start_one, nursery, spec_path, shard)


async def _start_one(nursery: trio.Nursery, spec_path: Path, shard: int) -> None:
    argv = [sys.executable, "-m", "metrics_server.simulator._shards", str(spec_path), str(shard)]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    )
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(READY_TIMEOUT):
        while not seen.endswith(READY_LINE):
            chunk = await process.stdout.receive_some(64)
            if not chunk:
                raise RuntimeError(f"kubelet shard {shard} exited before it was ready")
            seen += chunk


def shard_pki(spec: ShardSpec, shard: int) -> PKI:
    """A PKI whose kubelet CA is the main process's (the other CAs go unused)."""
    ca = trustme.CA.from_pem(
        Path(spec.kubelet_ca_cert).read_bytes(), Path(spec.kubelet_ca_key).read_bytes()
    )
    return PKI(Path(spec.kubelet_ca_key).parent / f"shard-{shard}", kubelet_ca=ca)


async def serve_shard(spec: ShardSpec, shard: int, pki: PKI) -> None:
    """The child: serve node-i for every i with i mod processes == shard, until killed."""
    async with trio.open_nursery() as nursery:
        kubelets: list[FakeKubelet] = []

        def start(node_name: str) -> None:
            index = int(node_name.rsplit("-", 1)[1])
            kubelet = FakeKubelet(
                node_name, world, pki, token=spec.token, nursery=nursery,
                port=spec.port_base + index,
            )
            kubelet.start()
            kubelets.append(kubelet)

        world = World(
            seed=spec.seed, clock=time.time, refresh=spec.kubelet_refresh,
            wobble=spec.memory_wobble, history_limit=1,
            on_node_added=lambda node: start(node.name),
        )
        for i in range(shard, spec.nodes, spec.processes):
            populate_node(world, f"node-{i}", None, spec.pods_per_node, initial=True)
        gc.freeze()  # the world is built; see run_cluster
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.buffer.flush()
        # The simulator holds our stdin open: end of file means it is gone, however it ended.
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            while await stdin.receive_some(4096):
                pass
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m metrics_server.simulator._shards SPEC.json SHARD", file=sys.stderr)
        return 2
    spec = ShardSpec(**json.loads(Path(argv[0]).read_text()))
    shard = int(argv[1])
    try:
        trio.run(serve_shard, spec, shard, shard_pki(spec, shard))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
