"""Kubelet address and port choice (SPEC §3)."""

from __future__ import annotations

import pytest

from metrics_server.models import NodeInfo
from metrics_server.scraper.addresses import AddressError, kubelet_url

ADDRS = (("Hostname", "n1"), ("InternalIP", "10.0.0.5"), ("ExternalIP", "1.2.3.4"))


def node(
    addresses: tuple[tuple[str, str], ...] = ADDRS, port: int = 0, path: str | None = None
) -> NodeInfo:
    return NodeInfo("n1", {}, addresses, port, path)


def test_first_preferred_type_wins() -> None:
    assert kubelet_url(node(), ["InternalIP", "Hostname"], 10250, False) == (
        "https://10.0.0.5:10250/metrics/resource"
    )
    assert kubelet_url(node(), ["ExternalDNS", "Hostname"], 10250, False) == (
        "https://n1:10250/metrics/resource"
    )


def test_node_status_port_only_when_enabled_and_set() -> None:
    assert ":4000/" in kubelet_url(node(port=4000), ["InternalIP"], 10250, True)
    assert ":10250/" in kubelet_url(node(port=4000), ["InternalIP"], 10250, False)
    assert ":10250/" in kubelet_url(node(port=0), ["InternalIP"], 10250, True)


def test_ipv6_is_bracketed() -> None:
    url = kubelet_url(node((("InternalIP", "fd00::5"),)), ["InternalIP"], 10250, False)
    assert url == "https://[fd00::5]:10250/metrics/resource"


def test_annotation_overrides_path() -> None:
    url = kubelet_url(node(path="/custom/metrics"), ["InternalIP"], 10250, False)
    assert url.endswith(":10250/custom/metrics")


def test_no_matching_address_names_node_and_types() -> None:
    with pytest.raises(
        AddressError, match=r"node n1 has no address of type InternalDNS.*Hostname=n1"
    ):
        kubelet_url(node(), ["InternalDNS"], 10250, False)
