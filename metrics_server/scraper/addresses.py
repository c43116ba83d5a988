"""Which address and port to dial for a node's kubelet (SPEC §3); pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from metrics_server.models import NodeInfo

DEFAULT_METRICS_PATH = "/metrics/resource"


class AddressError(Exception):
    """The node has no address of the preferred types."""


def kubelet_url(
    node: NodeInfo,
    preferred_types: Sequence[str],
    default_port: int,
    use_node_status_port: bool,
) -> str:
    """`https://host:port/path` for the node's kubelet resource metrics."""
    host = pick_address(node, preferred_types)
    port = node.kubelet_port if use_node_status_port and node.kubelet_port else default_port
    path = node.metrics_path or DEFAULT_METRICS_PATH
    if not path.startswith("/"):
        path = "/" + path
    return f"https://{_bracket(host)}:{port}{path}"


def pick_address(node: NodeInfo, preferred_types: Sequence[str]) -> str:
    for wanted in preferred_types:
        for kind, address in node.addresses:
            if kind == wanted and address:
                return address
    have = ", ".join(f"{k}={a}" for k, a in node.addresses) or "none"
    raise AddressError(
        f"node {node.name} has no address of type {', '.join(preferred_types)} "
        f"(it has: {have}); see --kubelet-preferred-address-types"
    )


def _bracket(host: str) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]"
    except ValueError:
        pass
    return host
