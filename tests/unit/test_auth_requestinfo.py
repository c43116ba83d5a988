"""RequestInfo parsing, table-driven against upstream requestinfo.go behaviour."""

from __future__ import annotations

import pytest

from metrics_server.auth.requestinfo import exact_field_match, parse_request_info

M = "/apis/metrics.k8s.io/v1beta1"
FS = "fieldSelector=metadata.name"


@pytest.mark.parametrize(
    ("method", "path", "query", "expect"),
    [
        ("GET", f"{M}/nodes", "", (True, "list", "", "nodes", "")),
        ("GET", f"{M}/nodes/n1", "", (True, "get", "", "nodes", "n1")),
        ("GET", f"{M}/pods", "", (True, "list", "", "pods", "")),
        ("GET", f"{M}/namespaces/default/pods", "", (True, "list", "default", "pods", "")),
        ("GET", f"{M}/namespaces/default/pods/p", "", (True, "get", "default", "pods", "p")),
        ("GET", f"{M}/nodes", "watch=true", (True, "watch", "", "nodes", "")),
        ("GET", f"{M}/nodes", "watch", (True, "watch", "", "nodes", "")),
        ("GET", f"{M}/nodes", "watch=0", (True, "list", "", "nodes", "")),
        ("GET", f"{M}/nodes", "watch=false", (True, "list", "", "nodes", "")),
        ("GET", f"{M}/watch/nodes", "", (True, "watch", "", "nodes", "")),
        (
            "GET",
            f"{M}/nodes",
            "fieldSelector=metadata.name%3Dn1",
            (True, "list", "", "nodes", "n1"),
        ),
        (
            "GET",
            f"{M}/nodes",
            "fieldSelector=metadata.name%3D%3Dn1",
            (True, "list", "", "nodes", "n1"),
        ),
        ("GET", f"{M}/nodes", "fieldSelector=metadata.name!%3Dn1", (True, "list", "", "nodes", "")),
        ("GET", f"{M}/nodes", "fieldSelector=metadata.name%3D..", (True, "list", "", "nodes", "")),
        ("HEAD", f"{M}/nodes/n1", "", (True, "get", "", "nodes", "n1")),
        ("POST", f"{M}/nodes", "", (True, "create", "", "nodes", "")),
        ("DELETE", f"{M}/nodes", "", (True, "deletecollection", "", "nodes", "")),
        (
            "GET",
            "/api/v1/namespaces/kube-system",
            "",
            (True, "get", "kube-system", "namespaces", "kube-system"),
        ),
        ("GET", "/apis/metrics.k8s.io/v1beta1", "", (False, "get", "", "", "")),
        ("GET", "/apis/metrics.k8s.io", "", (False, "get", "", "", "")),
        ("GET", "/apis", "", (False, "get", "", "", "")),
        ("GET", "/metrics", "", (False, "get", "", "", "")),
        ("GET", "/openapi/v2", "", (False, "get", "", "", "")),
        ("POST", "/healthz", "", (False, "post", "", "", "")),
    ],
)
def test_parse(method: str, path: str, query: str, expect: tuple[bool, str, str, str, str]) -> None:
    info = parse_request_info(method, path, query.encode())
    assert (info.is_resource_request, info.verb, info.namespace, info.resource, info.name) == expect
    if info.is_resource_request and path.startswith(M):
        assert (info.api_group, info.api_version) == ("metrics.k8s.io", "v1beta1")


def test_subresource_and_status() -> None:
    info = parse_request_info("GET", "/api/v1/namespaces/ns/pods/p/log")
    assert (info.resource, info.name, info.subresource) == ("pods", "p", "log")
    info = parse_request_info("PUT", "/api/v1/namespaces/ns/status")
    assert (info.resource, info.name, info.subresource) == ("namespaces", "ns", "status")


def test_field_selector_parsing() -> None:
    assert exact_field_match("metadata.name=a,metadata.namespace=b", "metadata.name") == "a"
    assert exact_field_match("metadata.name=a\\,b", "metadata.name") == "a,b"
    assert exact_field_match("garbage", "metadata.name") is None
    assert exact_field_match("", "metadata.name") is None
