"""The fault scenarios run once per session (each is a whole simulated cluster and daemon);
the tests assert on what they recorded."""

from __future__ import annotations

import pytest
import trio

from tests.faults._kubelet_matrix import KubeletRun, run_kubelet_matrix


@pytest.fixture(scope="session")
def kubelet_run(tmp_path_factory: pytest.TempPathFactory) -> KubeletRun:
    return trio.run(run_kubelet_matrix, tmp_path_factory.mktemp("kubelet-faults"))
