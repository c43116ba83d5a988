"""docs/install.md refers to things that exist and covers the troubleshooting it promises."""

from __future__ import annotations

import re

from tests.deploy.conftest import REPO

DOC = (REPO / "docs" / "install.md").read_text()


def test_referenced_repository_paths_exist() -> None:
    paths = set(re.findall(r"(?<![\w/.])((?:manifests|charts)/[\w./-]*\w)", DOC))
    assert {
        "manifests/components.yaml",
        "manifests/high-availability.yaml",
        "charts/metrics-server",
        "manifests/overlays/test",
        "manifests/render.sh",
    } <= paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, missing


def test_troubleshooting_covers_the_known_failure_modes() -> None:
    for needle in (
        "kubectl get apiservice v1beta1.metrics.k8s.io -o yaml",
        "/readyz?verbose",
        "logs deploy/metrics-server",
        "doesn't contain any IP SANs",
        "FailedDiscoveryCheck",
        "metrics not available yet",
        "Probes failing",
        "missing from `kubectl top`",
        "--kubelet-tls-server-name-from-node",
    ):
        assert needle in DOC, needle
    for check in (
        "metric-storage-ready",
        "metric-informer-sync",
        "metadata-informer-sync",
        "metric-collection-timely",
    ):
        assert f"`{check}`" in DOC, check


def test_platform_notes() -> None:
    for platform in ("**kind.**", "**minikube.**", "**EKS.**", "**GKE (and AKS).**"):
        assert platform in DOC, platform
    assert "serverTLSBootstrap" in DOC
