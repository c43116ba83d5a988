"""The scrape manager's phases: node names spread evenly over the period (no thundering herd
at each tick) and each name keeps its slot across restarts and resolutions."""

from __future__ import annotations

from typing import Any, cast

import pytest

from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings

NAMES = {
    "sequential": [f"node-{i}" for i in range(1000)],
    "ec2": [f"ip-10-0-{i // 250}-{i % 250}.ec2.internal" for i in range(1000)],
    "gke": [f"gke-prod-pool-1-{i:04d}" for i in range(1000)],
}


def manager(resolution: float) -> ScrapeManager:
    settings = ScrapeSettings(
        resolution=resolution,
        preferred_address_types=("InternalIP",),
        default_port=10250,
        use_node_status_port=False,
        tls_server_name_from_node=False,
    )
    # phase() reads only the settings; the transport and the sink are never touched.
    return ScrapeManager(settings, cast(Any, None), cast(Any, None))


@pytest.mark.parametrize("kind", sorted(NAMES))
def test_phases_spread_over_the_period(kind: str) -> None:
    names = NAMES[kind]
    period = 15.0
    m = manager(period)
    buckets = [0] * int(period)
    for name in names:
        phase = m.phase(name)
        assert 0.0 <= phase < period, (name, phase)
        buckets[int(phase)] += 1
    share = len(names) / len(buckets)
    # No second of the period gets more than twice its share of the scrapes, and none is
    # left (nearly) empty while others crowd.
    assert max(buckets) <= 2 * share, buckets
    assert min(buckets) >= share / 2, buckets
    # Distinct names get distinct slots (a constant or coarse phase would pass neither).
    assert len({m.phase(n) for n in names}) >= 0.99 * len(names)


def test_phase_is_stable_per_name() -> None:
    names = NAMES["sequential"][:200]
    first, restarted = manager(15.0), manager(15.0)
    before = {n: first.phase(n) for n in names}
    # Another instance (a restarted process), asked in another order, gives the same slots.
    assert {n: restarted.phase(n) for n in reversed(names)} == before
    assert {n: first.phase(n) for n in names} == before
    # A different resolution keeps each node at the same fraction of the period.
    slower = manager(60.0)
    for name in names:
        assert slower.phase(name) / 60.0 == pytest.approx(before[name] / 15.0, abs=1e-12)
