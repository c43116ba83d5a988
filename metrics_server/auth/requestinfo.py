"""Parsing a request's method, path and query into Kubernetes RequestInfo (pure).

A faithful subset of k8s.io/apiserver pkg/endpoints/request/requestinfo.go: API prefixes
`api` (groupless) and `apis`, the `watch`/`proxy` path verbs, namespaces with the `status` and
`finalize` subresources, HTTP method → verb, get-without-name → list or watch (`?watch` is
true unless it is `false` or `0`), and `fieldSelector=metadata.name=X` naming the object.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

__all__ = ["RequestInfo", "parse_request_info"]

_API_PREFIXES = frozenset({"api", "apis"})
_GROUPLESS_PREFIXES = frozenset({"api"})
_SPECIAL_VERBS = frozenset({"proxy", "watch"})
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What authorization needs to know about a request."""

    is_resource_request: bool
    path: str
    verb: str
    api_prefix: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    parts: tuple[str, ...] = ()


def _split_path(path: str) -> list[str]:
    path = path.strip("/")
    return path.split("/") if path else []


def _watch_requested(values: list[str]) -> bool:
    # metav1 Convert_Slice_string_To_bool: absent → false; "false"/"0" → false; else true.
    if not values:
        return False
    return values[0].lower() not in ("false", "0")


def _valid_path_segment_name(name: str) -> bool:
    # apimachinery path.IsValidPathSegmentName
    return name not in (".", "..") and "/" not in name and "%" not in name


def _split_selector_terms(selector: str) -> list[str]:
    """Split on commas not escaped by a backslash (fields.ParseSelector)."""
    terms: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in selector:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return terms


def _unescape_field_value(value: str) -> str | None:
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, None)
            if nxt not in ("\\", ",", "="):
                return None  # invalid escape: the selector does not parse
            out.append(nxt)
        elif ch in (",", "="):
            return None
        else:
            out.append(ch)
    return "".join(out)


def exact_field_match(selector: str, field: str) -> str | None:
    """Value required by `field=value` / `field==value` in a field selector, if any."""
    if not selector:
        return None
    found: str | None = None
    for term in _split_selector_terms(selector):
        if not term:
            continue
        for op in ("!=", "==", "="):
            idx = term.find(op)
            if idx >= 0:
                break
        else:
            return None  # unparsable selector: upstream logs and leaves the name empty
        key, raw = term[:idx].strip(), term[idx + len(op) :]
        value = _unescape_field_value(raw)
        if value is None:
            return None
        if key == field and op in ("=", "=="):
            found = value
    return found


def parse_request_info(method: str, path: str, query_string: bytes | str = b"") -> RequestInfo:
    """Return the RequestInfo for one request (never raises)."""
    verb = method.lower()
    non_resource = RequestInfo(is_resource_request=False, path=path, verb=verb)
    parts = _split_path(path)
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return non_resource
    api_prefix = parts[0]
    parts = parts[1:]
    api_group = ""
    if api_prefix not in _GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return non_resource  # e.g. /apis/metrics.k8s.io/v1beta1 (discovery)
        api_group = parts[0]
        parts = parts[1:]
    api_version = parts[0]
    parts = parts[1:]

    if parts and parts[0] in _SPECIAL_VERBS:
        if len(parts) < 2:
            return non_resource  # upstream: "unable to determine kind and namespace"
        verb = parts[0]
        parts = parts[1:]
    else:
        verb = _METHOD_VERBS.get(method.upper(), "")

    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]

    resource = parts[0] if len(parts) >= 1 else ""
    name = parts[1] if len(parts) >= 2 else ""
    subresource = parts[2] if len(parts) >= 3 and verb != "proxy" else ""

    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if not name and verb == "get":
        query: dict[str, list[str]] = {}
        for k, v in parse_qsl(query_string, keep_blank_values=True):
            query.setdefault(k, []).append(v)
        verb = "watch" if _watch_requested(query.get("watch", [])) else "list"
        selectors = query.get("fieldSelector", [])
        if selectors:
            selected = exact_field_match(selectors[0], "metadata.name")
            if selected is not None and _valid_path_segment_name(selected):
                name = selected
    if not name and verb == "delete":
        verb = "deletecollection"

    return RequestInfo(
        is_resource_request=True,
        path=path,
        verb=verb,
        api_prefix=api_prefix,
        api_group=api_group,
        api_version=api_version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
        parts=tuple(parts),
    )
