"""Discovery documents: legacy (/apis, /apis/metrics.k8s.io and its version) and aggregated
(APIGroupDiscoveryList, apidiscovery.k8s.io v2 and v2beta1, on /apis), plus /version.

Every document is built once; the aggregated ones carry an ETag (hex SHA-512 of the JSON, as
kube-apiserver computes it) so that the aggregator and clients can revalidate cheaply.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from typing import Any, Final

import orjson

from metrics_server import __version__

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"

# (resource, kind, namespaced) as upstream registers them; singular names are empty upstream.
_RESOURCES: Final = (("nodes", "NodeMetrics", False), ("pods", "PodMetrics", True))
_VERBS: Final = ("get", "list")

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
                "name": name,
                "singularName": "",
                "namespaced": namespaced,
                "kind": kind,
                "verbs": list(_VERBS),
            }
            for name, kind, namespaced in _RESOURCES
        ],
    }
)


def _aggregated(version: str) -> dict[str, Any]:
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": GROUP, "creationTimestamp": None},
                "versions": [
                    {
                        "version": VERSION,
                        "resources": [
                            {
                                "resource": name,
                                "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
                                "scope": "Namespaced" if namespaced else "Cluster",
                                "singularResource": "",
                                "verbs": list(_VERBS),
                            }
                            for name, kind, namespaced in _RESOURCES
                        ],
                        "freshness": "Current",
                    }
                ],
            }
        ],
    }


AGGREGATED: Final = {version: orjson.dumps(_aggregated(version)) for version in ("v2", "v2beta1")}
"""APIGroupDiscoveryList JSON by apidiscovery.k8s.io version."""


def etag(body: bytes) -> str:
    """The quoted ETag of a document: upper-case hex SHA-512, as Kubernetes computes it."""
    return '"' + hashlib.sha512(body).hexdigest().upper() + '"'


AGGREGATED_ETAGS: Final = {version: etag(body) for version, body in AGGREGATED.items()}


def _platform() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return f"{sys.platform}/{arch}"


VERSION_INFO: Final = orjson.dumps(
    {
        "major": __version__.split(".")[0],
        "minor": __version__.split(".")[1],
        "gitVersion": f"v{__version__}",
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": f"python{platform.python_version()}",
        "compiler": sys.implementation.name,
        "platform": _platform(),
    }
)
"""/version: a version.Info (the Python version stands in for goVersion)."""
