"""The default suite's short variants of `nox -s soak` (~60 s of churn) and `nox -s load`
(10 s of 500 mixed queries/s); the metrics server runs as its own process in both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.soak.loadrun import run_load
from tests.soak.soak import SoakConfig, check, run_soak

LOAD_RATE = 500.0
LOAD_SECONDS = 10.0


@pytest.mark.slow
async def test_soak_60s(tmp_path: Path) -> None:
    config = SoakConfig(duration=60.0, settle=22.0)
    with trio.fail_after(150):
        report = await run_soak(config, tmp_path)
    (tmp_path / "soak.json").write_text(json.dumps(report.as_dict(), indent=2))
    problems = check(report)
    assert not problems, "\n".join(problems)
    assert sum(report.mutations.values()) >= 25  # it really churned
    assert {"add_node", "remove_node", "flap"} <= set(report.mutations)


@pytest.mark.slow
async def test_load_smoke_10s(tmp_path: Path) -> None:
    with trio.fail_after(120):
        report = await run_load(rate=LOAD_RATE, duration=LOAD_SECONDS, workdir=tmp_path)
    (tmp_path / "load.json").write_text(json.dumps(report, indent=2))
    figures = json.dumps({k: report[k] for k in ("sent", "ok", "achieved_rate", "errors",
                                                 "latency_ms", "server")})
    assert report["errors"] == 0, report["error_samples"]
    assert report["ok"] == report["sent"] == int(LOAD_RATE * LOAD_SECONDS), figures
    # The server kept up: everything answered within a little of the sending window.
    assert report["achieved_rate"] >= 0.8 * LOAD_RATE, figures
    server = report["server"]
    assert server["scrapes_ok_during_load"] > 0 and server["scrapes_failed_during_load"] == 0
    assert not server["log_problems"], server["log_problems"]
