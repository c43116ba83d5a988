"""meta.k8s.io Table and PartialObjectMetadata views of NodeMetrics and PodMetrics.

What `kubectl get nodes.metrics.k8s.io` prints: columns Name, cpu, memory (format quantity)
and Window (format duration), as upstream's table convertor. A pod's cpu and memory are the
sums over its containers; each container quantity has the same scale and format (nanocores
DecimalSI, bytes BinarySI), so Kubernetes' quantity addition is exact integer addition and
the canonical text of the sum is what `Quantity.String()` gives. Unlike upstream, an empty
list still has its columns (upstream sends none, and clients then print no header).

Rows carry the object as `includeObject` says: Metadata (the default) a PartialObjectMetadata,
Object the whole object, None nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from metrics_server.api.status import ApiError, bad_request

__all__ = [
    "COLUMNS",
    "INCLUDE_METADATA",
    "INCLUDE_NONE",
    "INCLUDE_OBJECT",
    "include_object",
    "partial",
    "partial_list",
    "row",
    "table",
]

INCLUDE_METADATA: Final = "Metadata"
INCLUDE_NONE: Final = "None"
INCLUDE_OBJECT: Final = "Object"


def _column(name: str, format_: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "format": format_,
        "description": description,
        "priority": 0,
    }


COLUMNS: Final = (
    _column("Name", "name", "Name of the resource"),
    _column("cpu", "quantity", "CPU usage in cores (summed over containers for pods)"),
    _column("memory", "quantity", "Memory working set (summed over containers for pods)"),
    _column("Window", "duration", "Interval the usage was measured over"),
)


def include_object(query: Mapping[str, str]) -> str:
    """The `includeObject` policy; an unknown value is 400, worded as kube-apiserver does."""
    value = query.get("includeObject", "")
    if value in ("", INCLUDE_METADATA):
        return INCLUDE_METADATA
    if value in (INCLUDE_NONE, INCLUDE_OBJECT):
        return value
    raise _bad_include(value)


def _bad_include(value: str) -> ApiError:
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    return bad_request(
        f'Unable to convert to Table as requested: includeObject: Invalid value: "{quoted}": '
        "must be 'Metadata', 'Object', 'None', or empty"
    )


def partial(metadata: dict[str, Any], group_version: str) -> dict[str, Any]:
    """A PartialObjectMetadata of `group_version` (meta.k8s.io/v1 or v1beta1)."""
    return {"kind": "PartialObjectMetadata", "apiVersion": group_version, "metadata": metadata}


def partial_list(items: list[dict[str, Any]], group_version: str) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadataList",
        "apiVersion": group_version,
        "metadata": {},
        "items": items,
    }


def row(cells: list[Any], obj: dict[str, Any] | None) -> dict[str, Any]:
    if obj is None:
        return {"cells": cells}
    return {"cells": cells, "object": obj}


def table(rows: list[dict[str, Any]], group_version: str) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": group_version,
        "metadata": {},
        "columnDefinitions": list(COLUMNS),
        "rows": rows,
    }
