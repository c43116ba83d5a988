"""Legacy discovery documents for /apis, /apis/metrics.k8s.io and its version."""

from __future__ import annotations

from typing import Any

import orjson

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"

_VERSION_ENTRY = {"groupVersion": GROUP_VERSION, "version": VERSION}
_GROUP: dict[str, Any] = {
    "name": GROUP,
    "versions": [_VERSION_ENTRY],
    "preferredVersion": _VERSION_ENTRY,
}

API_GROUP_LIST = orjson.dumps({"kind": "APIGroupList", "apiVersion": "v1", "groups": [_GROUP]})
API_GROUP = orjson.dumps({"kind": "APIGroup", "apiVersion": "v1", **_GROUP})
API_RESOURCE_LIST = orjson.dumps(
    {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {
                "name": "nodes",
                "singularName": "",
                "namespaced": False,
                "kind": "NodeMetrics",
                "verbs": ["get", "list"],
            },
            {
                "name": "pods",
                "singularName": "",
                "namespaced": True,
                "kind": "PodMetrics",
                "verbs": ["get", "list"],
            },
        ],
    }
)
