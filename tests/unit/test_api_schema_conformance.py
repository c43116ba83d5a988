"""Our served JSON against our own published OpenAPI documents, with jsonschema.

Every path the v2 and v3 documents publish is requested (from MetricsAPI and the discovery
documents, the bodies the app serves), and the answer is validated against that path's 200
response schema, `$ref`s resolved within the document. The schemas are closed for the check:
an object schema that lists properties gets `additionalProperties: false`, so a field we serve
but do not describe fails as surely as a described field we stop serving (through `required`)
or a value of the wrong type. `format: date-time` is checked too, as RFC 3339.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pytest

from metrics_server.api import discovery, openapi
from metrics_server.api.metrics import MetricsAPI
from metrics_server.api.status import bad_request, not_found
from tests.unit.test_api_metrics import FakeNodes, FakePods, FakeStore, make_api

PREFIX = "/apis/metrics.k8s.io/v1beta1"
META = "io.k8s.apimachinery.pkg.apis.meta.v1."

# name → (the document, where in it its schemas are)
DOCUMENTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "v2": (orjson.loads(openapi.V2), ("definitions",)),
    "v3": (orjson.loads(openapi.V3), ("components", "schemas")),
}

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z")
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats apply to strings only
    if not _RFC3339.match(value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))  # a real date: ValueError if not
    return True


def _closed(node: Any) -> Any:
    """A copy in which object schemas with properties admit no others."""
    if isinstance(node, list):
        return [_closed(value) for value in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def _schemas(doc: dict[str, Any], section: tuple[str, ...]) -> dict[str, Any]:
    schemas = doc
    for key in section:
        schemas = schemas[key]
    return schemas


def validator(version: str, schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    """A validator for `schema` (a response schema of the document, typically a `$ref`), with
    the document's schemas, closed, where its references point.

    Both documents' schema objects are JSON Schema draft 4 with extensions (Swagger 2.0 and
    OpenAPI 3.0 alike), and both refer by JSON pointer into the document itself."""
    doc, section = DOCUMENTS[version]
    container: dict[str, Any] = copy.deepcopy(_closed(_schemas(doc, section)))
    for key in reversed(section):
        container = {key: container}
    root = {**_closed(schema), **container}
    jsonschema.Draft4Validator.check_schema(root)
    return jsonschema.Draft4Validator(root, format_checker=FORMATS)


def response_schema(version: str, path: str) -> dict[str, Any]:
    doc, _ = DOCUMENTS[version]
    ok = doc["paths"][path]["get"]["responses"]["200"]
    if version == "v2":
        schema: dict[str, Any] = ok["schema"]
    else:
        schema = ok["content"]["application/json"]["schema"]
    return schema


def component(version: str, name: str) -> dict[str, Any]:
    doc, section = DOCUMENTS[version]
    schema: dict[str, Any] = _schemas(doc, section)[name]
    return schema


def ref(version: str, name: str) -> dict[str, Any]:
    _, section = DOCUMENTS[version]
    return {"$ref": "#/" + "/".join(section) + "/" + name}


def empty_api() -> MetricsAPI:
    return MetricsAPI(FakeStore({}, {}), FakeNodes([]), FakePods([]))


# path → requests whose answers that path serves: (label, answer)
Answer = Callable[[], bytes]
SERVED: dict[str, list[tuple[str, Answer]]] = {
    f"{PREFIX}/nodes": [
        ("all", lambda: make_api().list_nodes({})),
        ("by label", lambda: make_api().list_nodes({"labelSelector": "zone=a"})),
        ("none", lambda: empty_api().list_nodes({})),
    ],
    f"{PREFIX}/nodes/{{name}}": [
        (name, lambda name=name: make_api().get_node(name)) for name in ("n1", "n2")
    ],
    f"{PREFIX}/pods": [
        ("all", lambda: make_api().list_pods(None, {})),
        ("none", lambda: empty_api().list_pods(None, {})),
    ],
    f"{PREFIX}/namespaces/{{namespace}}/pods": [
        ("default", lambda: make_api().list_pods("default", {})),
        ("kube-system", lambda: make_api().list_pods("kube-system", {})),
        ("by label", lambda: make_api().list_pods("default", {"labelSelector": "app=web"})),
        ("empty namespace", lambda: make_api().list_pods("nobody", {})),
    ],
    f"{PREFIX}/namespaces/{{namespace}}/pods/{{name}}": [
        (f"{ns}/{name}", lambda ns=ns, name=name: make_api().get_pod(ns, name))
        for ns, name in (
            ("default", "web-1"), ("default", "batch"), ("kube-system", "coredns-558bd4d5db-4dpjz")
        )
    ],
    "/apis/metrics.k8s.io/": [("group", lambda: discovery.API_GROUP)],
    f"{PREFIX}/": [("resources", lambda: discovery.API_RESOURCE_LIST)],
}
CASES = [
    pytest.param(version, path, answer, id=f"{version} {path} {label}")
    for version in DOCUMENTS
    for path, answers in SERVED.items()
    for label, answer in answers
]


@pytest.mark.parametrize("version", list(DOCUMENTS))
def test_every_published_path_is_checked(version: str) -> None:
    doc, _ = DOCUMENTS[version]
    assert set(doc["paths"]) == set(SERVED)


@pytest.mark.parametrize(("version", "path", "answer"), CASES)
def test_served_json_matches_published_schema(version: str, path: str, answer: Answer) -> None:
    body = orjson.loads(answer())
    schema = response_schema(version, path)
    errors = sorted(validator(version, schema).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # The kind served is the kind the schema is tagged with, where it is tagged.
    name = schema["$ref"].rsplit("/", 1)[1]
    tags = component(version, name).get("x-kubernetes-group-version-kind")
    if tags:
        group_version = "/".join(p for p in (tags[0]["group"], tags[0]["version"]) if p)
        assert (body["apiVersion"], body["kind"]) == (group_version, tags[0]["kind"])


@pytest.mark.parametrize("version", list(DOCUMENTS))
@pytest.mark.parametrize(
    "error",
    [not_found("nodemetrics", "n9"), not_found("podmetrics", "default/nope"),
     bad_request("unable to parse requirement")],
    ids=["node not found", "pod not found", "bad request"],
)
def test_status_answers_match_published_status(version: str, error: Any) -> None:
    body = orjson.loads(error.body())
    errors = list(validator(version, ref(version, META + "Status")).iter_errors(body))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


# -- the check is not vacuous: drift in either direction fails ---------------------------

def _node() -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(make_api().get_node("n1"))
    return body


@pytest.mark.parametrize("version", list(DOCUMENTS))
@pytest.mark.parametrize(
    ("label", "change"),
    [
        ("undescribed field", lambda b: b.update(extra=1)),
        ("undescribed metadata field", lambda b: b["metadata"].update(finalizers=["x"])),
        ("required field gone", lambda b: b.pop("usage")),
        ("wrong type", lambda b: b.update(window=15)),
        ("quantity not a string", lambda b: b["usage"].update(cpu={"value": 1})),
        ("timestamp not RFC 3339", lambda b: b.update(timestamp="2024-05-31 16:08:37")),
        ("timestamp not a date", lambda b: b.update(timestamp="2024-02-30T16:08:37Z")),
        ("label not a string", lambda b: b["metadata"]["labels"].update(zone=1)),
    ],
)
def test_drift_is_caught(version: str, label: str, change: Callable[[dict[str, Any]], Any]) -> None:
    body = _node()
    check = validator(version, response_schema(version, f"{PREFIX}/nodes/{{name}}"))
    assert check.is_valid(body)
    change(body)
    assert not check.is_valid(body), label
