"""The kubelet fault matrix as one scenario: one cluster, one daemon, one faulty node per row
plus healthy nodes; run once, recorded, and asserted row by row in test_kubelet_faults.

Timeline (resolution 10 s, kubelet timeout 1 s): every node is scraped at once; each faulty
node's name puts its scheduled scrape 2.5-5 s into the period, so every fault has failed
twice within ~5 s. Then all faults heal and each node must be served again after its next
scheduled scrape (~15 s). Healthy nodes are scraped throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import trio

from metrics_server.simulator import (
    ClusterConfig,
    Fault,
    Garbage,
    Hang,
    HttpStatus,
    Huge,
    NoIPSAN,
    Refuse,
    Slow,
    Trickle,
    Truncated,
    WrongCA,
    open_cluster,
)
from tests.faults._observe import (
    ApiProbe,
    LogRecords,
    ScrapeLog,
    failure_counters,
    name_in_phase,
    rss_kib,
)
from tests.harness import direct_client, running_daemon

RESOLUTION = 10.0
KUBELET_TIMEOUT = 1.0
PHASE_WINDOW = (2.5, 5.0)
HEALTHY = ("healthy-a", "healthy-b", "healthy-c")
FAULT_WINDOW_LIMIT = 15.0
RECOVERY_LIMIT = 25.0


@dataclass(frozen=True, slots=True)
class KubeletRow:
    id: str
    fault: Fault
    reason: str
    """The `reason` label the failure must be counted under."""


ROWS = (
    KubeletRow("hang-after-accept", Hang(), "timeout"),
    KubeletRow("hang-before-tls", Hang(before_handshake=True), "timeout"),
    KubeletRow("slow-past-deadline", Slow(3.0), "timeout"),
    KubeletRow("trickle", Trickle(chunk=64, interval=0.5), "timeout"),
    KubeletRow("http-500", HttpStatus(500), "http_500"),
    KubeletRow("http-401", HttpStatus(401), "http_401"),
    KubeletRow("http-403", HttpStatus(403), "http_403"),
    KubeletRow("garbage", Garbage(), "no_metrics"),
    KubeletRow("truncated", Truncated(), "protocol"),
    KubeletRow("huge-100mb", Huge(), "body_too_large"),
    KubeletRow("wrong-ca", WrongCA(), "tls_unknown_ca"),
    KubeletRow("no-ip-san", NoIPSAN(), "tls_no_ip_san"),
    KubeletRow("refuse", Refuse(), "connect"),
)


@dataclass(slots=True)
class KubeletRun:
    node_of: dict[str, str]
    """Row id → the node that has its fault."""
    logs: LogRecords
    scrapes: ScrapeLog
    api: ApiProbe
    started: float = 0.0
    faulty_until: float = 0.0
    """When every faulty node had failed twice; the faults healed right after."""
    ended: float = 0.0
    state_while_faulty: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    """Node → (failures, last reason) when the faults healed."""
    counters_while_faulty: dict[tuple[str, str], float] = field(default_factory=dict)
    served_again: dict[str, float] = field(default_factory=dict)
    """Node → when it was served again after its fault healed."""
    hwm_kib_before: int = 0
    hwm_kib_after: int = 0
    huge_failures_measured: int = 0
    """Failures of the 100 MB node between the two peak-RSS readings."""


async def run_kubelet_matrix(workdir: Path, logs: LogRecords) -> KubeletRun:
    node_of = {
        row.id: name_in_phase(row.id, *PHASE_WINDOW, resolution=RESOLUTION) for row in ROWS
    }
    faults = {node_of[row.id]: row.fault for row in ROWS}
    config = ClusterConfig(nodes=0, kubelet_refresh=0.5, faults=faults)
    run = KubeletRun(node_of=node_of, logs=logs, scrapes=ScrapeLog(), api=ApiProbe())
    with trio.fail_after(FAULT_WINDOW_LIMIT + RECOVERY_LIMIT + 20):
        async with open_cluster(config) as cluster:
            for name in HEALTHY:
                cluster.add_node(name, pods=3)
            for name in node_of.values():
                cluster.add_node(name, pods=2)
            extra = ["--kubelet-request-timeout", f"{KUBELET_TIMEOUT:g}s"]
            async with (
                running_daemon(cluster, workdir, extra) as d,
                direct_client(cluster, d) as client,
                trio.open_nursery() as nursery,
            ):
                assert d.options.metric_resolution == RESOLUTION * 1e9
                for name in node_of.values():
                    # The names were chosen with the manager's own formula.
                    assert PHASE_WINDOW[0] <= d.manager.phase(name) < PHASE_WINDOW[1]
                run.started = trio.current_time()
                nursery.start_soon(run.scrapes.run, d)
                nursery.start_soon(run.api.run, client)
                faulty = list(node_of.values())
                huge = node_of["huge-100mb"]

                def failed(node: str, times: int) -> bool:
                    state = d.manager.nodes.get(node)
                    return state is not None and state.failures >= times

                with trio.fail_after(FAULT_WINDOW_LIMIT):
                    await d.wait_for(lambda: failed(huge, 1))
                run.hwm_kib_before = rss_kib("VmHWM")
                huge_before = d.manager.nodes[huge].failures
                # A fault that is not detected fails its own row, not the whole run.
                with trio.move_on_after(FAULT_WINDOW_LIMIT):
                    await d.wait_for(lambda: all(failed(n, 2) for n in faulty))
                run.hwm_kib_after = rss_kib("VmHWM")
                run.huge_failures_measured = d.manager.nodes[huge].failures - huge_before
                for node in faulty:
                    state = d.manager.nodes[node]
                    reason = state.last_error.reason if state.last_error else None
                    run.state_while_faulty[node] = (state.failures, reason)
                run.counters_while_faulty = failure_counters(
                    (await client.get("/metrics")).text
                )
                run.faulty_until = trio.current_time()
                for node in faulty:
                    cluster.clear_fault(node)
                pending = set(faulty)
                with trio.move_on_after(RECOVERY_LIMIT):
                    while pending:
                        for node in [n for n in pending if d.store.node_usage(n)]:
                            run.served_again[node] = trio.current_time()
                            pending.discard(node)
                        await d.changes.park()
                run.scrapes.record(d)
                run.ended = trio.current_time()
                nursery.cancel_scope.cancel()
    return run
