"""Fixtures for the deployment tests: the real kubectl and helm binaries, and rendering."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CHART = REPO / "charts" / "metrics-server"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes tens of seconds (still part of the normal suite)"
    )


@pytest.fixture(scope="session")
def kubectl() -> Path:
    from metrics_server.simulator.kubectl import kubectl_path

    return kubectl_path()


@pytest.fixture(scope="session")
def helm() -> Path:
    from metrics_server.simulator.kubectl import helm_path

    return helm_path()


def run(argv: Iterable[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Runs a command, failing the test with its stderr when it exits non-zero."""
    argv = [str(a) for a in argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def write_values(path: Path, values: dict[str, Any]) -> None:
    """Writes a Helm values file. JSON (a subset of YAML) so that every string stays a
    string: PyYAML would write `y` unquoted, which Helm's YAML 1.1 parser reads as true."""
    path.write_text(json.dumps(values, indent=2))


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{meta['name']}"


def canonical(obj: dict[str, Any]) -> str:
    """A stable identity for an object's content (to validate each distinct object once)."""
    return json.dumps(obj, sort_keys=True)


@pytest.fixture(scope="session")
def helm_template(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """Renders the chart with values (a dict); returns its objects. Results are cached."""
    cache: dict[str, list[dict[str, Any]]] = {}
    tmp = tmp_path_factory.mktemp("helm-values")

    def render(
        values: dict[str, Any] | None = None,
        *,
        release: str = "metrics-server",
        namespace: str = "kube-system",
    ) -> list[dict[str, Any]]:
        ident = canonical({"v": values or {}, "r": release, "n": namespace})
        if ident not in cache:
            vals = tmp / f"values-{len(cache)}.yaml"
            write_values(vals, values or {})
            out = run(
                [helm, "template", release, CHART, "--namespace", namespace, "--values", vals]
            ).stdout
            cache[ident] = load_all(out)
        return cache[ident]

    return render
