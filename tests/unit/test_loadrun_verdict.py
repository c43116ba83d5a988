"""The load session's verdict: it fails on errors, on falling behind, and on scrapes failing."""

from __future__ import annotations

from typing import Any

from tests.soak.loadrun import failures


def _report(**changes: Any) -> dict[str, Any]:
    server = {"scrapes_ok_during_load": 120, "scrapes_failed_during_load": 0, "log_problems": []}
    server.update(changes.pop("server", {}))
    report: dict[str, Any] = {"errors": 0, "achieved_rate": 499.1, "rate_target": 500.0}
    report.update(changes)
    report["server"] = server
    return report


def test_a_clean_run_passes() -> None:
    assert failures(_report()) == []


def test_each_shortfall_is_named() -> None:
    assert failures(_report(errors=3)) == ["3 API errors"]
    assert "under 95% of the 500/s" in failures(_report(achieved_rate=400.0))[0]
    assert failures(_report(server={"scrapes_ok_during_load": 0})) == [
        "no kubelet scrape succeeded during the load"
    ]
    assert failures(_report(server={"scrapes_failed_during_load": 2})) == [
        "2 kubelet scrapes failed during the load"
    ]
    assert len(failures(_report(errors=1, achieved_rate=1.0))) == 2
