"""Tests of the store's SPEC §4 rules, one rule per test, with hand-computed values."""

from __future__ import annotations

import pytest

from metrics_server.models import (
    ContainerUsage,
    MetricsPoint,
    NodeMetricsBatch,
    NodeUsage,
    PodUsage,
    ResourceUsage,
    metrics_point,
)
from metrics_server.storage.store import MetricsStore

S = 1_000_000_000  # ns per second
RES = 60 * S
POD = ("ns", "p")


def pt(ts: float, cpu: float, mem: int = 100, start: float = 0) -> MetricsPoint:
    """A point at `ts` seconds with `cpu` core-seconds used since `start` seconds."""
    return metrics_point(
        start_time=int(start * S), timestamp=int(ts * S), cumulative_cpu=int(cpu * S), memory=mem
    )


def node_batch(point: MetricsPoint | None) -> NodeMetricsBatch:
    return NodeMetricsBatch(node=point)


def pod_batch(
    containers: dict[str, MetricsPoint],
    node: MetricsPoint | None = None,
    key: tuple[str, str] = POD,
) -> NodeMetricsBatch:
    return NodeMetricsBatch(node=node, pods={key: containers})


# --- node rule ---------------------------------------------------------------------------


def test_first_node_point_has_no_usage() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    assert store.node_usage("n1") is None


def test_later_node_point_moves_last_to_prev() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10, mem=1000)))
    store.store_node("n1", node_batch(pt(115, 13, mem=2000)))
    # 3 core-seconds over 15 s = 0.2 cores.
    assert store.node_usage("n1") == NodeUsage(
        timestamp=115 * S, window=15 * S, usage=ResourceUsage(cpu=200_000_000, memory=2000)
    )


def test_node_point_not_later_keeps_prev_that_is_older() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    # Not later than 115 but later than the prev at 100: prev stays the point at 100.
    store.store_node("n1", node_batch(pt(110, 15, mem=7)))
    # 5 core-seconds over 10 s = 0.5 cores.
    assert store.node_usage("n1") == NodeUsage(
        timestamp=110 * S, window=10 * S, usage=ResourceUsage(cpu=500_000_000, memory=7)
    )


def test_repeated_node_point_keeps_serving() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    store.store_node("n1", node_batch(pt(115, 13)))
    usage = store.node_usage("n1")
    assert usage is not None
    assert (usage.window, usage.usage.cpu) == (15 * S, 200_000_000)


def test_node_point_not_later_drops_prev_that_is_not_older() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    store.store_node("n1", node_batch(pt(100, 10)))  # equal to prev: not strictly older
    assert store.node_usage("n1") is None
    # The point at 100 is now last, so the next later one is measured against it.
    store.store_node("n1", node_batch(pt(120, 12)))
    usage = store.node_usage("n1")
    assert usage is not None
    assert (usage.window, usage.usage.cpu) == (20 * S, 100_000_000)


def test_cpu_rate_truncates() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch((0, 10 * S, 1000, 1)))
    store.store_node("n1", node_batch((0, 13 * S, 1010, 1)))
    # 10 ns of CPU over 3 s = 3.33 nanocores, truncated to 3.
    usage = store.node_usage("n1")
    assert usage is not None
    assert usage.usage.cpu == 3


def test_node_cpu_went_down_is_skipped() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 9)))
    assert store.node_usage("n1") is None
    assert store.nodes_with_usage() == 0
    assert store.counts() == (1, 0)  # it still has a prev point


def test_node_start_time_went_down_is_skipped() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10, start=50)))
    store.store_node("n1", node_batch(pt(115, 13, start=40)))
    assert store.node_usage("n1") is None


def test_batch_without_node_point_forgets_node() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    store.store_node("n1", node_batch(None))
    assert store.node_usage("n1") is None
    store.store_node("n1", node_batch(pt(130, 16)))
    assert store.node_usage("n1") is None


# --- container rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age_s", "fresh"),
    [
        (10, True),  # lower bound is inclusive
        (30, True),
        (59.999, True),
        (9.999, False),
        (60, False),  # upper bound (the resolution) is exclusive
        (0, False),  # started at the sample itself
    ],
)
def test_fresh_container_is_served_after_one_scrape(age_s: float, fresh: bool) -> None:
    store = MetricsStore(RES)
    start = 1000.0
    store.store_node("n1", pod_batch({"c": pt(start + age_s, 6, mem=55, start=start)}))
    usage = store.pod_usage(*POD)
    if not fresh:
        assert usage is None
        return
    window = int(age_s * S)
    assert usage == PodUsage(
        timestamp=int((start + age_s) * S),
        window=window,
        containers=(ContainerUsage("c", ResourceUsage(cpu=6 * S * S // window, memory=55)),),
    )


def test_fresh_container_at_30s() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"c": pt(130, 6, start=100)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    assert usage.containers[0].usage.cpu == 200_000_000  # 6 core-seconds over 30 s


def test_container_without_restart_uses_node_rule() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"c": pt(1000, 10, start=0)}))
    assert store.pod_usage(*POD) is None
    store.store_node("n1", pod_batch({"c": pt(1015, 13, start=0)}))
    assert store.pod_usage(*POD) == PodUsage(
        timestamp=1015 * S,
        window=15 * S,
        containers=(ContainerUsage("c", ResourceUsage(cpu=200_000_000, memory=100)),),
    )
    # Not later than last, later than prev: prev at 1000 is kept.
    store.store_node("n1", pod_batch({"c": pt(1010, 15, start=0)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    assert (usage.window, usage.containers[0].usage.cpu) == (10 * S, 500_000_000)


@pytest.mark.parametrize(("start_s", "restarted"), [(1000, True), (1005, True), (999.5, False)])
def test_container_restart_has_no_prev(start_s: float, restarted: bool) -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"c": pt(1000, 10, start=0)}))
    # Starting at or after the old last sample (1000 s) is a restart; old enough (>= 60 s)
    # at the new sample that the fresh-container rule does not apply either.
    store.store_node("n1", pod_batch({"c": pt(1070, 12, start=start_s)}))
    usage = store.pod_usage(*POD)
    if restarted:
        assert usage is None
        assert store.counts() == (0, 0)
    else:
        assert usage is not None
        assert usage.window == 70 * S


def test_container_cpu_went_down_is_skipped_but_pod_is_served() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"a": pt(1000, 10), "b": pt(1000, 20)}))
    store.store_node("n1", pod_batch({"a": pt(1015, 13), "b": pt(1015, 19)}))
    assert store.pod_usage(*POD) == PodUsage(
        timestamp=1015 * S,
        window=15 * S,
        containers=(ContainerUsage("a", ResourceUsage(cpu=200_000_000, memory=100)),),
    )


def test_container_start_time_went_down_is_skipped() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"a": pt(1000, 10, start=500), "b": pt(1000, 1)}))
    # Start 400 is before the old last sample, so not a restart, but earlier than prev's 500.
    store.store_node("n1", pod_batch({"a": pt(1015, 13, start=400), "b": pt(1015, 4)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    assert [c.name for c in usage.containers] == ["b"]


def test_pod_whose_only_container_is_skipped_is_not_served() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"a": pt(1000, 10)}))
    store.store_node("n1", pod_batch({"a": pt(1015, 9)}))
    assert store.pod_usage(*POD) is None
    assert store.counts() == (0, 1)


def test_pod_served_only_when_every_container_has_prev() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"a": pt(1000, 10)}))
    # "b" appears 5 s after its start: too young for the fresh rule, and new, so no prev.
    store.store_node("n1", pod_batch({"a": pt(1015, 13), "b": pt(1015, 1, start=1010)}))
    assert store.pod_usage(*POD) is None
    assert store.counts() == (0, 1)
    store.store_node("n1", pod_batch({"a": pt(1030, 16), "b": pt(1030, 4, start=1010)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    assert [(c.name, c.usage.cpu) for c in usage.containers] == [
        ("a", 200_000_000),
        ("b", 200_000_000),
    ]


def test_pod_timestamp_and_window_are_the_earliest_containers() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"a": pt(1000, 10), "z": pt(990, 10)}))
    store.store_node("n1", pod_batch({"a": pt(1015, 13), "z": pt(1012, 12)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    # "z" has the earliest last timestamp (1012 s); its window is 1012 − 990 = 22 s.
    assert (usage.timestamp, usage.window) == (1012 * S, 22 * S)
    assert [c.name for c in usage.containers] == ["a", "z"]


def test_pods_absent_from_new_batch_are_forgotten() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"c": pt(130, 6, start=100)}))
    assert store.pod_usage(*POD) is not None
    store.store_node("n1", node_batch(pt(200, 1)))
    assert store.pod_usage(*POD) is None
    assert store.counts() == (0, 0)


# --- nodes and pods together -------------------------------------------------------------


def test_drop_node_removes_node_and_its_pods() -> None:
    store = MetricsStore(RES)
    other = ("ns", "other")
    store.store_node("n1", pod_batch({"c": pt(1000, 10)}, node=pt(1000, 10)))
    store.store_node("n1", pod_batch({"c": pt(1015, 13)}, node=pt(1015, 13)))
    store.store_node("n2", pod_batch({"c": pt(130, 6, start=100)}, key=other))
    assert store.node_usage("n1") is not None
    assert store.pod_usage(*POD) is not None
    store.drop_node("n1")
    assert store.node_usage("n1") is None
    assert store.pod_usage(*POD) is None
    assert store.pod_usage(*other) is not None
    assert store.counts() == (0, 1)
    store.drop_node("n1")  # dropping an unknown node is harmless
    # Back after two good scrapes.
    store.store_node("n1", pod_batch({"c": pt(1030, 16)}, node=pt(1030, 16)))
    assert store.node_usage("n1") is None
    store.store_node("n1", pod_batch({"c": pt(1045, 19)}, node=pt(1045, 19)))
    assert store.node_usage("n1") is not None
    assert store.pod_usage(*POD) is not None


def test_pod_moves_to_the_node_that_reported_it_last() -> None:
    store = MetricsStore(RES)
    store.store_node("a", pod_batch({"c": pt(1000, 10)}))
    # Same pod key from another node: it moves, and (as upstream keys points by pod only)
    # the earlier point is its prev.
    store.store_node("b", pod_batch({"c": pt(1020, 14)}))
    usage = store.pod_usage(*POD)
    assert usage is not None
    assert (usage.window, usage.containers[0].usage.cpu) == (20 * S, 200_000_000)
    # A later scrape of "a" without the pod does not take it away from "b".
    store.store_node("a", node_batch(None))
    assert store.pod_usage(*POD) == usage
    store.drop_node("a")
    assert store.pod_usage(*POD) == usage
    assert store.counts() == (0, 1)
    store.drop_node("b")
    assert store.pod_usage(*POD) is None
    assert store.counts() == (0, 0)


def test_moved_pod_is_removed_from_its_old_node() -> None:
    store = MetricsStore(RES)
    store.store_node("a", pod_batch({"c": pt(130, 6, start=100)}))
    store.store_node("b", pod_batch({"c": pt(145, 9, start=100)}))
    assert store.counts() == (0, 1)  # counted once, on "b"
    store.drop_node("b")
    # "a" no longer holds it either.
    assert store.pod_usage(*POD) is None
    assert store.counts() == (0, 0)


def test_ready_needs_a_node_prev_and_a_pod_prev() -> None:
    store = MetricsStore(RES)
    assert not store.ready()
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    assert not store.ready()  # node prev only
    store.drop_node("n1")
    store.store_node("n2", pod_batch({"c": pt(130, 6, start=100)}))
    assert not store.ready()  # pod prev only
    store.store_node("n1", node_batch(pt(100, 10)))
    store.store_node("n1", node_batch(pt(115, 13)))
    assert store.ready()
    store.drop_node("n2")
    assert not store.ready()


def test_ready_counts_prev_points_even_without_usage() -> None:
    store = MetricsStore(RES)
    store.store_node("n1", pod_batch({"c": pt(1000, 10)}, node=pt(1000, 10)))
    store.store_node("n1", pod_batch({"c": pt(1015, 9)}, node=pt(1015, 9)))
    assert store.node_usage("n1") is None
    assert store.pod_usage(*POD) is None
    assert store.ready()


def test_counts_and_nodes_with_usage() -> None:
    store = MetricsStore(RES)
    store.store_node(
        "n1",
        NodeMetricsBatch(
            node=pt(1000, 10),
            pods={
                ("ns", "p1"): {"a": pt(1000, 1), "b": pt(1000, 1)},
                ("ns", "p2"): {"a": pt(1000, 1)},
            },
        ),
    )
    store.store_node("n2", node_batch(pt(1000, 10)))
    assert store.counts() == (0, 0)
    store.store_node(
        "n1",
        NodeMetricsBatch(
            node=pt(1015, 13),
            pods={
                ("ns", "p1"): {"a": pt(1015, 2), "b": pt(1015, 2)},
                ("ns", "p2"): {"a": pt(1015, 2)},
            },
        ),
    )
    store.store_node("n2", node_batch(pt(1015, 9)))  # CPU went down: prev but no usage
    assert store.counts() == (2, 3)
    assert store.nodes_with_usage() == 1
    store.drop_node("n1")
    assert store.counts() == (1, 0)
    assert store.nodes_with_usage() == 0
