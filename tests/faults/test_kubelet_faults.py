"""Kubelet fault matrix, one test per row: each misbehaving kubelet fails alone, is counted and
logged once, costs no memory, never slows the API or the other nodes, and recovers.

The scenario (tests/faults/_kubelet_matrix.py) runs once for all rows; see its docstring.
"""

from __future__ import annotations

import itertools
import re

import pytest

from metrics_server.scraper.nodes import QUICK_RESCRAPE_SECONDS
from tests.faults._kubelet_matrix import (
    HEALTHY,
    KUBELET_TIMEOUT,
    RESOLUTION,
    ROWS,
    KubeletRow,
    KubeletRun,
)
from tests.faults._observe import API_DEADLINE

SCHEDULE_SLACK = 1.5
"""Seconds a scheduled scrape may start late (a busy test machine)."""
HUGE_HWM_LIMIT_KIB = 30 * 1024
"""Peak RSS growth allowed while 100 MB bodies are refused (far below one body)."""


def _mentions(message: str, node: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(node)}(?![\w-])", message) is not None


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_fault_is_isolated_counted_logged_once_and_heals(
    row: KubeletRow, kubelet_run: KubeletRun
) -> None:
    run = kubelet_run
    node = run.node_of[row.id]

    # The fault is classified and counted under its reason, in the node's series.
    failures, reason = run.state_while_faulty[node]
    assert reason == row.reason
    assert failures >= 2
    assert run.counters_while_faulty.get((node, row.reason), 0) >= 2, run.counters_while_faulty

    # Logged once for the change to failing and once for the recovery, not per attempt.
    failed_lines = [m for m in run.logs.matching("failed to scrape node") if _mentions(m, node)]
    assert len(failed_lines) == 1, failed_lines
    recovered_lines = [m for m in run.logs.matching("works again") if _mentions(m, node)]
    assert len(recovered_lines) == 1, recovered_lines

    # Healed, the node is served again after its next scheduled scrape and one quick one.
    assert node in run.served_again
    assert run.served_again[node] - run.faulty_until < RESOLUTION + QUICK_RESCRAPE_SECONDS[0] + 1

    # Meanwhile every healthy node kept its schedule and never failed.
    for healthy in HEALTHY:
        samples = run.scrapes.samples[healthy]
        assert all(s.reason is None for s in samples), samples
        during = run.scrapes.starts(healthy, run.started, run.faulty_until)
        assert len(during) >= 2, f"{healthy} was not scraped while {row.id} failed"
        starts = run.scrapes.starts(healthy)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps) <= RESOLUTION + SCHEDULE_SLACK, gaps

    # And the API answered every poll promptly, with every healthy node, throughout.
    assert not run.api.failures
    assert len(run.api.answers) >= 10
    for began, took, status, names in run.api.answers:
        assert status == 200 and took < API_DEADLINE
        if began > run.started + 3:  # healthy nodes have a rate after two quick scrapes
            assert set(HEALTHY) <= names, (began, names)
        if began < run.faulty_until:
            assert node not in names


def test_failing_scrapes_take_no_longer_than_the_deadline(kubelet_run: KubeletRun) -> None:
    """Hung, slow and trickling kubelets are cut at --kubelet-request-timeout."""
    run = kubelet_run
    for row in ROWS:
        if row.reason != "timeout":
            continue
        samples = run.scrapes.samples[run.node_of[row.id]]
        for sample in samples:
            if sample.reason == "timeout" and sample.last_start is not None:
                assert sample.t - sample.last_start < KUBELET_TIMEOUT + 0.5


def test_huge_bodies_are_never_buffered(kubelet_run: KubeletRun) -> None:
    run = kubelet_run
    assert run.huge_failures_measured >= 1
    growth = run.hwm_kib_after - run.hwm_kib_before
    assert growth < HUGE_HWM_LIMIT_KIB, f"peak RSS grew {growth} KiB while refusing 100 MB bodies"
