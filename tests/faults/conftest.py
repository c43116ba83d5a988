"""The two fault matrices (kubelets, kube-apiserver) run once per session, side by side in
one trio run; each is a whole simulated cluster and daemon. Tests assert on what they
recorded."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.faults._apiserver_matrix import ApiserverRun, run_apiserver_matrix
from tests.faults._kubelet_matrix import KubeletRun, run_kubelet_matrix
from tests.faults._observe import LogRecords


@dataclass(slots=True)
class Matrices:
    kubelet: KubeletRun | None = None
    apiserver: ApiserverRun | None = None


async def _run_both(workdir: Path) -> Matrices:
    out = Matrices()

    async def kubelet(logs: LogRecords) -> None:
        out.kubelet = await run_kubelet_matrix(workdir / "kubelet", logs)

    async def apiserver(logs: LogRecords) -> None:
        out.apiserver = await run_apiserver_matrix(workdir / "apiserver", logs)

    # One log collector for both: the scenarios tell their records apart by node name
    # and by logger, and one handler avoids two contexts juggling the logger's level.
    with LogRecords() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kubelet, logs)
            nursery.start_soon(apiserver, logs)
    return out


@pytest.fixture(scope="session")
def matrices(tmp_path_factory: pytest.TempPathFactory) -> Matrices:
    with warnings.catch_warnings():
        # As for httpx's in pyproject.toml: a watch stream cut mid-iteration (a 410 event,
        # a dropped connection) leaves httpcore's nested async generators for trio to
        # finalize, which it reports. They hold nothing by then; the response is closed.
        warnings.filterwarnings(
            "ignore", message="Async generator 'httpcore\\.", category=ResourceWarning
        )
        return trio.run(_run_both, tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def kubelet_run(matrices: Matrices) -> KubeletRun:
    assert matrices.kubelet is not None
    return matrices.kubelet


@pytest.fixture(scope="session")
def apiserver_run(matrices: Matrices) -> ApiserverRun:
    assert matrices.apiserver is not None
    return matrices.apiserver
