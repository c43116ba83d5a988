"""OpenAPI documents for metrics.k8s.io/v1beta1: Swagger 2.0 on /openapi/v2 and OpenAPI 3.0 on
/openapi/v3/apis/metrics.k8s.io/v1beta1, with the /openapi/v3 index pointing at it by hash.

Both are generated from one description of the schemas, named as Kubernetes names them
(`io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics`, `io.k8s.apimachinery.pkg.apis.meta.v1.
ObjectMeta`, …) and tagged with `x-kubernetes-group-version-kind`, which is how kube-apiserver
merges them into its own documents and how `kubectl explain` finds a kind. Built once at import;
each document's ETag is the quoted upper-case hex SHA-512 of its JSON, as kube-openapi does.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from metrics_server import __version__
from metrics_server.api.discovery import GROUP, VERSION, etag
from metrics_server.api.negotiate import RESOURCE_MEDIA_TYPES

__all__ = ["GROUP_VERSION_PATH", "V2", "V2_ETAG", "V3", "V3_ETAG", "V3_HASH", "V3_INDEX"]

GROUP_VERSION_PATH: Final = f"apis/{GROUP}/{VERSION}"
"""The key of our document in the /openapi/v3 index."""

_METRICS: Final = "io.k8s.metrics.pkg.apis.metrics.v1beta1."
_META: Final = "io.k8s.apimachinery.pkg.apis.meta.v1."
_QUANTITY: Final = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_PREFIX: Final = f"/apis/{GROUP}/{VERSION}"


def _gvk(kind: str, group: str = GROUP, version: str = VERSION) -> list[dict[str, str]]:
    return [{"group": group, "kind": kind, "version": version}]


class _Refs:
    """Builds references and schemas for one OpenAPI version."""

    def __init__(self, v3: bool) -> None:
        self.v3 = v3
        self.prefix = "#/components/schemas/" if v3 else "#/definitions/"

    def ref(self, name: str, description: str = "", default: Any = None) -> dict[str, Any]:
        if not self.v3:
            out: dict[str, Any] = {"$ref": self.prefix + name}
            if description:
                out["description"] = description
            return out
        if not description and default is None:
            return {"$ref": self.prefix + name}
        # OpenAPI 3.0 ignores siblings of $ref, so Kubernetes wraps it in allOf.
        out = {"allOf": [{"$ref": self.prefix + name}]}
        if default is not None:
            out["default"] = default
        if description:
            out["description"] = description
        return out

    def type_meta(self) -> dict[str, Any]:
        return {
            "apiVersion": _string(
                "The versioned schema of this representation of an object, e.g. "
                f"{GROUP}/{VERSION}."
            ),
            "kind": _string("The kind of this object, e.g. NodeMetrics."),
        }

    def metrics_object(
        self, kind: str, what: str, extra: dict[str, Any], required: list[str]
    ) -> dict[str, Any]:
        return {
            "description": what,
            "type": "object",
            "required": required,
            "properties": {
                **self.type_meta(),
                "metadata": self.ref(
                    _META + "ObjectMeta",
                    "Standard object metadata: name, namespace (pods), labels, and "
                    "creationTimestamp (the time of the request).",
                    {},
                ),
                "timestamp": self.ref(
                    _META + "Time", "When the most recent sample was taken.", {}
                ),
                "window": self.ref(
                    _META + "Duration",
                    "The interval the usage was averaged over: [timestamp-window, timestamp].",
                ),
                **extra,
            },
            "x-kubernetes-group-version-kind": _gvk(kind),
        }

    def usage(self, what: str) -> dict[str, Any]:
        return {
            "description": what,
            "type": "object",
            "additionalProperties": self.ref(_QUANTITY, default={}),
        }

    def metrics_list(self, kind: str, item: str) -> dict[str, Any]:
        return {
            "description": f"A list of {item} objects.",
            "type": "object",
            "required": ["items"],
            "properties": {
                **self.type_meta(),
                "metadata": self.ref(_META + "ListMeta", "Standard list metadata.", {}),
                "items": {
                    "description": f"The {item} objects, sorted.",
                    "type": "array",
                    "items": self.ref(_METRICS + item, default={}),
                },
            },
            "x-kubernetes-group-version-kind": _gvk(kind),
        }

    def schemas(self) -> dict[str, Any]:
        string_map = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
        quantity: dict[str, Any] = {
            "description": "A fixed-point number in Kubernetes quantity notation, e.g. "
            '"250m" (a quarter of a core), "311155148n" (nanocores) or "2881016Ki" (bytes).',
        }
        if self.v3:
            quantity["oneOf"] = [{"type": "string"}, {"type": "number"}]
        else:
            quantity["type"] = "string"
        return {
            _METRICS + "ContainerMetrics": {
                "description": "Resource usage of one container.",
                "type": "object",
                "required": ["name", "usage"],
                "properties": {
                    "name": _string("The container's name, as in pod.spec.containers.", ""),
                    "usage": self.usage(
                        "Usage by resource: cpu (cores, averaged over the window) and memory "
                        "(working set bytes)."
                    ),
                },
            },
            _METRICS + "NodeMetrics": self.metrics_object(
                "NodeMetrics",
                "Resource usage of a node.",
                {
                    "usage": self.usage(
                        "Usage by resource: cpu (cores, averaged over the window) and memory "
                        "(working set bytes)."
                    )
                },
                ["timestamp", "window", "usage"],
            ),
            _METRICS + "NodeMetricsList": self.metrics_list("NodeMetricsList", "NodeMetrics"),
            _METRICS + "PodMetrics": self.metrics_object(
                "PodMetrics",
                "Resource usage of a pod's containers.",
                {
                    "containers": {
                        "description": "Usage of every container, measured over one window.",
                        "type": "array",
                        "items": self.ref(_METRICS + "ContainerMetrics", default={}),
                    }
                },
                ["timestamp", "window", "containers"],
            ),
            _METRICS + "PodMetricsList": self.metrics_list("PodMetricsList", "PodMetrics"),
            _QUANTITY: quantity,
            _META + "Time": {
                "description": "An RFC 3339 date and time in UTC with whole seconds, e.g. "
                '"2019-05-26T10:54:52Z".',
                "type": "string",
                "format": "date-time",
            },
            _META + "Duration": {
                "description": 'A Go duration string, e.g. "15.692s" or "1m0s".',
                "type": "string",
            },
            _META + "ObjectMeta": {
                "description": "Metadata of an object.",
                "type": "object",
                "properties": {
                    "name": _string("The object's name, unique within its namespace."),
                    "namespace": _string("The object's namespace; empty for cluster objects."),
                    "uid": _string("A unique identifier; not set for metrics."),
                    "resourceVersion": _string("An opaque version; not set for metrics."),
                    "creationTimestamp": self.ref(
                        _META + "Time", "For metrics: the time of the request."
                    ),
                    "labels": {
                        **string_map,
                        "description": "The labels of the node or pod the metrics are for.",
                    },
                    "annotations": {
                        **string_map,
                        "description": "Annotations; not set for metrics.",
                    },
                },
            },
            _META + "ListMeta": {
                "description": "Metadata of a list.",
                "type": "object",
                "properties": {
                    "resourceVersion": _string("An opaque version; not set for metrics."),
                    "continue": _string("A continue token; metrics lists are never chunked."),
                },
            },
            _META + "Status": {
                "description": "The result of a failed request.",
                "type": "object",
                "properties": {
                    **self.type_meta(),
                    "metadata": self.ref(_META + "ListMeta", "Standard list metadata.", {}),
                    "status": _string('"Success" or "Failure".'),
                    "message": _string("A human-readable description of the failure."),
                    "reason": _string('A machine-readable reason, e.g. "NotFound".'),
                    "details": self.ref(_META + "StatusDetails", "Data about the reason."),
                    "code": {
                        "description": "The HTTP status code.",
                        "type": "integer",
                        "format": "int32",
                    },
                },
                "x-kubernetes-group-version-kind": _gvk("Status", "", "v1"),
            },
            _META + "StatusDetails": {
                "description": "Details of a failure.",
                "type": "object",
                "properties": {
                    "name": _string("The name of the object the failure is about."),
                    "group": _string("Its API group."),
                    "kind": _string("Its kind or resource."),
                },
            },
            _META + "APIGroup": {
                "description": "An API group and its versions.",
                "type": "object",
                "required": ["name", "versions"],
                "properties": {
                    **self.type_meta(),
                    "name": _string("The group's name.", ""),
                    "versions": {
                        "type": "array",
                        "items": self.ref(_META + "GroupVersionForDiscovery", default={}),
                    },
                    "preferredVersion": self.ref(
                        _META + "GroupVersionForDiscovery", "The preferred version.", {}
                    ),
                },
                "x-kubernetes-group-version-kind": _gvk("APIGroup", "", "v1"),
            },
            _META + "GroupVersionForDiscovery": {
                "description": "A group version.",
                "type": "object",
                "required": ["groupVersion", "version"],
                "properties": {
                    "groupVersion": _string('"group/version".', ""),
                    "version": _string("The version alone.", ""),
                },
            },
            _META + "APIResourceList": {
                "description": "The resources of a group version.",
                "type": "object",
                "required": ["groupVersion", "resources"],
                "properties": {
                    **self.type_meta(),
                    "groupVersion": _string('"group/version".', ""),
                    "resources": {
                        "type": "array",
                        "items": self.ref(_META + "APIResource", default={}),
                    },
                },
                "x-kubernetes-group-version-kind": _gvk("APIResourceList", "", "v1"),
            },
            _META + "APIResource": {
                "description": "A resource of a group version.",
                "type": "object",
                "required": ["name", "singularName", "namespaced", "kind", "verbs"],
                "properties": {
                    "name": _string("The plural resource name.", ""),
                    "singularName": _string("The singular name (empty for metrics).", ""),
                    "namespaced": {"type": "boolean", "default": False},
                    "kind": _string("The kind.", ""),
                    "verbs": {"type": "array", "items": {"type": "string", "default": ""}},
                },
            },
        }


def _string(description: str, default: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "type": "string"}
    if default is not None:
        out["default"] = default
    return out


_COMMON_QUERY: Final = (
    ("pretty", "If 'true', the output is indented.", "string"),
)
_LIST_QUERY: Final = (
    ("labelSelector", "Only objects whose labels match this selector.", "string"),
    ("fieldSelector", "Only objects whose fields match (metadata.name, metadata.namespace).",
     "string"),
    ("limit", "Accepted and ignored: metrics lists are never chunked.", "integer"),
    ("continue", "Accepted and ignored.", "string"),
    ("resourceVersion", "Accepted and ignored.", "string"),
)

# (path, operation id, action, kind, response kind, description, path parameters)
_OPERATIONS: Final = (
    (f"{_PREFIX}/nodes", "listMetricsV1beta1NodeMetrics", "list", "NodeMetrics",
     "NodeMetricsList", "list NodeMetrics", ()),
    (f"{_PREFIX}/nodes/{{name}}", "readMetricsV1beta1NodeMetrics", "get", "NodeMetrics",
     "NodeMetrics", "read the specified NodeMetrics", ("name",)),
    (f"{_PREFIX}/pods", "listMetricsV1beta1PodMetricsForAllNamespaces", "list", "PodMetrics",
     "PodMetricsList", "list PodMetrics in all namespaces", ()),
    (f"{_PREFIX}/namespaces/{{namespace}}/pods", "listMetricsV1beta1NamespacedPodMetrics",
     "list", "PodMetrics", "PodMetricsList", "list PodMetrics in a namespace", ("namespace",)),
    (f"{_PREFIX}/namespaces/{{namespace}}/pods/{{name}}",
     "readMetricsV1beta1NamespacedPodMetrics", "get", "PodMetrics", "PodMetrics",
     "read the specified PodMetrics", ("namespace", "name")),
)
_PATH_PARAMETER_TEXT: Final = {
    "name": "The name of the node or pod.",
    "namespace": "The namespace of the pods.",
}
_TAG: Final = "metrics_v1beta1"


def _parameter(refs: _Refs, name: str, where: str, text: str, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": where, "description": text}
    if where == "path":
        out["required"] = True
    if refs.v3:
        out["schema"] = {"type": kind, "uniqueItems": True}
    else:
        out["type"] = kind
        out["uniqueItems"] = True
    return out


def _response(refs: _Refs, schema: dict[str, Any], media_types: tuple[str, ...]) -> dict[str, Any]:
    if refs.v3:
        return {"description": "OK", "content": {m: {"schema": schema} for m in media_types}}
    return {"description": "OK", "schema": schema}


def _paths(refs: _Refs) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, op_id, action, kind, response, text, path_params in _OPERATIONS:
        operation: dict[str, Any] = {
            "description": text,
            "operationId": op_id,
            "tags": [_TAG],
            "responses": {
                "200": _response(refs, refs.ref(_METRICS + response), RESOURCE_MEDIA_TYPES),
                "401": {"description": "Unauthorized"},
            },
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": _gvk(kind)[0],
        }
        if not refs.v3:
            operation["consumes"] = ["*/*"]
            operation["produces"] = list(RESOURCE_MEDIA_TYPES)
            operation["schemes"] = ["https"]
        query = _LIST_QUERY if action == "list" else ()
        parameters = [
            _parameter(refs, p, "path", _PATH_PARAMETER_TEXT[p], "string") for p in path_params
        ]
        parameters += [
            _parameter(refs, name, "query", text, kind)
            for name, text, kind in (*query, *_COMMON_QUERY)
        ]
        paths[path] = {"get": operation, "parameters": parameters}
    for path, op_id, text, schema in (
        (f"/apis/{GROUP}/", "getMetricsAPIGroup", "get information of a group", "APIGroup"),
        (f"{_PREFIX}/", "getMetricsV1beta1APIResources", "get available resources",
         "APIResourceList"),
    ):
        operation = {
            "description": text,
            "operationId": op_id,
            "tags": ["metrics" if schema == "APIGroup" else _TAG],
            "responses": {
                "200": _response(refs, refs.ref(_META + schema), ("application/json",)),
                "401": {"description": "Unauthorized"},
            },
        }
        if not refs.v3:
            operation["consumes"] = ["application/json"]
            operation["produces"] = ["application/json"]
            operation["schemes"] = ["https"]
        paths[path] = {"get": operation}
    return paths


_INFO: Final = {"title": "metrics-server", "version": f"v{__version__}"}
_SECURITY_SCHEME: Final = {
    "description": "A bearer token, as 'Bearer <token>' in the Authorization header.",
    "type": "apiKey",
    "name": "authorization",
    "in": "header",
}


def _v2() -> dict[str, Any]:
    refs = _Refs(v3=False)
    return {
        "swagger": "2.0",
        "info": _INFO,
        "paths": _paths(refs),
        "definitions": refs.schemas(),
        "securityDefinitions": {"BearerToken": _SECURITY_SCHEME},
        "security": [{"BearerToken": []}],
    }


def _v3() -> dict[str, Any]:
    refs = _Refs(v3=True)
    return {
        "openapi": "3.0.0",
        "info": _INFO,
        "paths": _paths(refs),
        "components": {
            "schemas": refs.schemas(),
            "securitySchemes": {"BearerToken": _SECURITY_SCHEME},
        },
        "security": [{"BearerToken": []}],
    }


V2: Final = orjson.dumps(_v2())
V2_ETAG: Final = etag(V2)
V3: Final = orjson.dumps(_v3())
"""The OpenAPI 3.0 document of metrics.k8s.io/v1beta1."""
V3_ETAG: Final = etag(V3)
V3_HASH: Final = V3_ETAG.strip('"')
"""The `hash` query parameter that pins V3: its ETag without quotes."""
V3_INDEX: Final = orjson.dumps(
    {
        "paths": {
            GROUP_VERSION_PATH: {
                "serverRelativeURL": f"/openapi/v3/{GROUP_VERSION_PATH}?hash={V3_HASH}"
            }
        }
    }
)
"""/openapi/v3: where each group version's document is, with its hash for caching."""
