"""Kubernetes' protobuf messages as upstream defines them, and the decoder our protobuf tests use.

`UPSTREAM` is transcribed by hand from upstream's generated.proto files (field names, numbers,
labels and types; the files are cited per section below), independently of the encoder in
`metrics_server.api.protobuf`. The descriptors every protobuf test decodes with are built from
that table, under upstream's package names, so a wrong field number or wire type in the encoder
cannot be mirrored by a wrong number in the tests' own definitions.

Checked here: the built descriptors say exactly what the table says; every answer we encode
parses under them with no unknown field anywhere (an unknown number or a mismatched wire type
lands there); and each answer is, byte for byte, what the `protobuf` package writes for the
same object built from our JSON answer.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from metrics_server.api import protobuf
from metrics_server.api.negotiate import JSON, PROTOBUF, Choice, Conversion
from metrics_server.api.status import ApiError, bad_request, not_found
from metrics_server.quantity import parse_go_duration
from tests.unit.test_api_metrics import make_api, pin_clock

__all__ = ["CLASSES", "KINDS", "META", "METRICS", "RESOURCE", "RUNTIME", "UPSTREAM", "decode",
           "pin_clock"]  # pin_clock: the autouse fixture, re-exported so pytest applies it here

# The `package` line of each upstream file.
METRICS = "k8s.io.metrics.pkg.apis.metrics.v1beta1"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"
RUNTIME = "k8s.io.apimachinery.pkg.runtime"
RESOURCE = "k8s.io.apimachinery.pkg.api.resource"

# The import path of each package's file, as upstream files import one another.
FILES = {
    RUNTIME: "k8s.io/apimachinery/pkg/runtime/generated.proto",
    RESOURCE: "k8s.io/apimachinery/pkg/api/resource/generated.proto",
    META: "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    METRICS: "k8s.io/metrics/pkg/apis/metrics/v1beta1/generated.proto",
}
DEPENDENCIES = {RUNTIME: (), RESOURCE: (), META: (RUNTIME,), METRICS: (RESOURCE, META)}

# Message full name → its fields as (label, type, name, number), in upstream's order of
# declaration. label is "optional", "repeated" or "map" (map<string, type>); type is a proto
# scalar or a message's full name. All four files are `syntax = "proto2"`.
Field = tuple[str, str, str, int]
UPSTREAM: dict[str, tuple[Field, ...]] = {
    # -- k8s.io/apimachinery pkg/runtime/generated.proto (read from kubernetes/kubernetes,
    #    staging/src/k8s.io/apimachinery/pkg/runtime/generated.proto). The envelope's TypeMeta
    #    is this one, not meta/v1's, whose numbers are the other way round (see below).
    f"{RUNTIME}.TypeMeta": (
        ("optional", "string", "apiVersion", 1),
        ("optional", "string", "kind", 2),
    ),
    f"{RUNTIME}.Unknown": (
        ("optional", f"{RUNTIME}.TypeMeta", "typeMeta", 1),
        ("optional", "bytes", "raw", 2),
        ("optional", "string", "contentEncoding", 3),
        ("optional", "string", "contentType", 4),
    ),
    # -- k8s.io/apimachinery pkg/api/resource/generated.proto (read from kubernetes/kubernetes,
    #    staging/src/k8s.io/apimachinery/pkg/api/resource/generated.proto).
    f"{RESOURCE}.Quantity": (("optional", "string", "string", 1),),
    # -- k8s.io/apimachinery pkg/apis/meta/v1/generated.proto (read from kubernetes/kubernetes,
    #    staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto, and from a copy of
    #    apimachinery v0.26.0 for the messages that are newer than that staging copy:
    #    PartialObjectMetadata, PartialObjectMetadataList, ListMeta.remainingItemCount).
    f"{META}.TypeMeta": (
        ("optional", "string", "kind", 1),
        ("optional", "string", "apiVersion", 2),
    ),
    f"{META}.Time": (
        ("optional", "int64", "seconds", 1),
        ("optional", "int32", "nanos", 2),
    ),
    f"{META}.Duration": (("optional", "int64", "duration", 1),),
    # A subset: ownerReferences (13) and managedFields (17) are left out, so they, like any
    # number missing here, would show up as unknown fields if we ever wrote them.
    f"{META}.ObjectMeta": (
        ("optional", "string", "name", 1),
        ("optional", "string", "generateName", 2),
        ("optional", "string", "namespace", 3),
        ("optional", "string", "selfLink", 4),
        ("optional", "string", "uid", 5),
        ("optional", "string", "resourceVersion", 6),
        ("optional", "int64", "generation", 7),
        ("optional", f"{META}.Time", "creationTimestamp", 8),
        ("optional", f"{META}.Time", "deletionTimestamp", 9),
        ("optional", "int64", "deletionGracePeriodSeconds", 10),
        ("map", "string", "labels", 11),
        ("map", "string", "annotations", 12),
        ("repeated", "string", "finalizers", 14),
    ),
    f"{META}.ListMeta": (
        ("optional", "string", "selfLink", 1),
        ("optional", "string", "resourceVersion", 2),
        ("optional", "string", "continue", 3),
        ("optional", "int64", "remainingItemCount", 4),
    ),
    f"{META}.PartialObjectMetadata": (("optional", f"{META}.ObjectMeta", "metadata", 1),),
    f"{META}.PartialObjectMetadataList": (
        ("optional", f"{META}.ListMeta", "metadata", 1),
        ("repeated", f"{META}.PartialObjectMetadata", "items", 2),
    ),
    f"{META}.Status": (
        ("optional", f"{META}.ListMeta", "metadata", 1),
        ("optional", "string", "status", 2),
        ("optional", "string", "message", 3),
        ("optional", "string", "reason", 4),
        ("optional", f"{META}.StatusDetails", "details", 5),
        ("optional", "int32", "code", 6),
    ),
    f"{META}.StatusDetails": (
        ("optional", "string", "name", 1),
        ("optional", "string", "group", 2),
        ("optional", "string", "kind", 3),
        ("optional", "string", "uid", 6),
        ("repeated", f"{META}.StatusCause", "causes", 4),
        ("optional", "int32", "retryAfterSeconds", 5),
    ),
    f"{META}.StatusCause": (
        ("optional", "string", "reason", 1),
        ("optional", "string", "message", 2),
        ("optional", "string", "field", 3),
    ),
    # -- k8s.io/metrics pkg/apis/metrics/v1beta1/generated.proto (read from kubernetes/kubernetes,
    #    staging/src/k8s.io/metrics/pkg/apis/metrics/v1beta1/generated.proto, the source that
    #    the k8s.io/metrics repository is published from).
    f"{METRICS}.ContainerMetrics": (
        ("optional", "string", "name", 1),
        ("map", f"{RESOURCE}.Quantity", "usage", 2),
    ),
    f"{METRICS}.NodeMetrics": (
        ("optional", f"{META}.ObjectMeta", "metadata", 1),
        ("optional", f"{META}.Time", "timestamp", 2),
        ("optional", f"{META}.Duration", "window", 3),
        ("map", f"{RESOURCE}.Quantity", "usage", 4),
    ),
    f"{METRICS}.NodeMetricsList": (
        ("optional", f"{META}.ListMeta", "metadata", 1),
        ("repeated", f"{METRICS}.NodeMetrics", "items", 2),
    ),
    f"{METRICS}.PodMetrics": (
        ("optional", f"{META}.ObjectMeta", "metadata", 1),
        ("optional", f"{META}.Time", "timestamp", 2),
        ("optional", f"{META}.Duration", "window", 3),
        ("repeated", f"{METRICS}.ContainerMetrics", "containers", 4),
    ),
    f"{METRICS}.PodMetricsList": (
        ("optional", f"{META}.ListMeta", "metadata", 1),
        ("repeated", f"{METRICS}.PodMetrics", "items", 2),
    ),
}

# The kinds a protobuf answer of ours may carry in its envelope, and the API versions of each.
KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "NodeMetrics": (f"{METRICS}.NodeMetrics", frozenset({"metrics.k8s.io/v1beta1"})),
    "NodeMetricsList": (f"{METRICS}.NodeMetricsList", frozenset({"metrics.k8s.io/v1beta1"})),
    "PodMetrics": (f"{METRICS}.PodMetrics", frozenset({"metrics.k8s.io/v1beta1"})),
    "PodMetricsList": (f"{METRICS}.PodMetricsList", frozenset({"metrics.k8s.io/v1beta1"})),
    "PartialObjectMetadata": (
        f"{META}.PartialObjectMetadata", frozenset({"meta.k8s.io/v1", "meta.k8s.io/v1beta1"})
    ),
    "PartialObjectMetadataList": (
        f"{META}.PartialObjectMetadataList",
        frozenset({"meta.k8s.io/v1", "meta.k8s.io/v1beta1"}),
    ),
    "Status": (f"{META}.Status", frozenset({"v1"})),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "int64": _F.TYPE_INT64,
    "int32": _F.TYPE_INT32,
}


def _package(full_name: str) -> str:
    return full_name.rsplit(".", 1)[0]


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_: str) -> None:
    if type_ in _SCALARS:
        field.type = _SCALARS[type_]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = "." + type_


def _build() -> dict[str, type[Message]]:
    """One proto2 file per upstream package, maps as repeated nested *Entry messages (which is
    what `protoc` makes of `map<K, V>`), added to a private pool in dependency order."""
    files = {
        package: descriptor_pb2.FileDescriptorProto(
            name=path, package=package, syntax="proto2",
            dependency=[FILES[d] for d in DEPENDENCIES[package]],
        )
        for package, path in FILES.items()
    }
    for full_name, fields in UPSTREAM.items():
        package, name = _package(full_name), full_name.rsplit(".", 1)[1]
        message = files[package].message_type.add(name=name)
        for label, type_, field_name, number in fields:
            field = message.field.add(name=field_name, number=number, json_name=field_name)
            if label == "map":
                entry_name = field_name[0].upper() + field_name[1:] + "Entry"
                entry = message.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
                value = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL)
                _set_type(value, type_)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{full_name}.{entry_name}"
            else:
                field.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
                _set_type(field, type_)
    pool = descriptor_pool.DescriptorPool()
    for package in FILES:  # dependencies first
        pool.Add(files[package])
    return {
        full_name: message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
        for full_name in UPSTREAM
    }


CLASSES = _build()
"""Message full name → a generated class, built from `UPSTREAM`."""


def decode(body: bytes) -> tuple[str, str, Any]:
    """(apiVersion, kind, object) of a Kubernetes protobuf body: the `k8s\\x00` magic, then a
    runtime.Unknown whose raw bytes are the message `kind` names. Checks the envelope too."""
    assert body[:4] == b"k8s\x00", body[:8]
    unknown = CLASSES[f"{RUNTIME}.Unknown"]()
    unknown.ParseFromString(body[4:])
    assert_no_unknown_fields(unknown)
    assert unknown.contentEncoding == "" and unknown.contentType == ""
    version, kind = unknown.typeMeta.apiVersion, unknown.typeMeta.kind
    full_name, versions = KINDS[kind]
    assert version in versions, (kind, version)
    obj = CLASSES[full_name]()
    obj.ParseFromString(unknown.raw)
    assert_no_unknown_fields(obj)
    return version, kind, obj


def _unknown(message: Message, path: str) -> Iterator[str]:
    for item in unknown_fields.UnknownFieldSet(message):
        yield f"{path}: field {item.field_number} (wire type {item.wire_type})"
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if _map_of_messages(field):
                for key, item in value.items():
                    yield from _unknown(item, f"{path}.{field.name}[{key}]")
        elif _repeated(field):
            for i, item in enumerate(value):
                yield from _unknown(item, f"{path}.{field.name}[{i}]")
        else:
            yield from _unknown(value, f"{path}.{field.name}")


def _repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 dropped FieldDescriptor.label for is_repeated (which 5.x may lack).
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _map_of_messages(field: FieldDescriptor) -> bool:
    return field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE


def assert_no_unknown_fields(message: Message) -> None:
    """Every field written is one upstream declares, with the wire type it declares."""
    found = list(_unknown(message, message.DESCRIPTOR.name))
    assert not found, found


# -- the table and the descriptors built from it -------------------------------------------

_TYPES = {number: name for name, number in _SCALARS.items()}


def _described(descriptor: Descriptor) -> list[Field]:
    """A built descriptor's fields, written back in the table's terms."""
    out: list[Field] = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name.values()
            assert (key.name, key.number, key.type) == ("key", 1, FieldDescriptor.TYPE_STRING)
            assert (value.name, value.number) == ("value", 2)
            type_ = (
                value.message_type.full_name
                if value.type == FieldDescriptor.TYPE_MESSAGE
                else _TYPES[value.type]
            )
            out.append(("map", type_, field.name, field.number))
            continue
        type_ = (
            field.message_type.full_name
            if field.type == FieldDescriptor.TYPE_MESSAGE
            else _TYPES[field.type]
        )
        label = "repeated" if _repeated(field) else "optional"
        if label == "optional":
            assert field.has_presence, field.full_name  # proto2 optional: set or not set
        out.append((label, type_, field.name, field.number))
    return out


def test_descriptors_say_what_the_upstream_table_says() -> None:
    for full_name, fields in UPSTREAM.items():
        descriptor = CLASSES[full_name].DESCRIPTOR
        assert descriptor.full_name == full_name
        assert descriptor.file.name == FILES[_package(full_name)]
        assert _described(descriptor) == list(fields), full_name
        numbers = [number for *_, number in fields]
        assert len(set(numbers)) == len(numbers), full_name


def test_table_covers_every_message_we_encode() -> None:
    names = {full_name.rsplit(".", 1)[1] for full_name in UPSTREAM}
    assert names >= {
        "NodeMetrics", "NodeMetricsList", "PodMetrics", "PodMetricsList", "ContainerMetrics",
        "ObjectMeta", "ListMeta", "Time", "Duration", "Quantity", "Unknown", "TypeMeta",
        "Status", "StatusDetails", "PartialObjectMetadata", "PartialObjectMetadataList",
    }
    for _, (full_name, _) in KINDS.items():
        assert full_name in UPSTREAM


def test_envelope_type_meta_is_runtimes_not_meta_v1s() -> None:
    """runtime.TypeMeta is {apiVersion 1, kind 2}; meta/v1's is {kind 1, apiVersion 2}. The
    envelope's is runtime's: decoded with meta/v1's, the two strings would swap."""
    field = CLASSES[f"{RUNTIME}.Unknown"].DESCRIPTOR.fields_by_name["typeMeta"]
    assert field.message_type.full_name == f"{RUNTIME}.TypeMeta"
    body = protobuf.envelope("metrics.k8s.io/v1beta1", "NodeMetrics", b"")
    unknown = CLASSES[f"{RUNTIME}.Unknown"]()
    unknown.ParseFromString(body[4:])
    assert (unknown.typeMeta.apiVersion, unknown.typeMeta.kind) == (
        "metrics.k8s.io/v1beta1", "NodeMetrics"
    )
    swapped = CLASSES[f"{META}.TypeMeta"]()
    swapped.ParseFromString(unknown.typeMeta.SerializeToString())
    assert swapped.kind == "metrics.k8s.io/v1beta1"


# -- our answers against upstream's definitions ------------------------------------------

def _seconds(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def _fill_meta(meta: Message, want: dict[str, Any]) -> None:
    meta.name = want["name"]
    if "namespace" in want:
        meta.namespace = want["namespace"]
    meta.creationTimestamp.seconds = _seconds(want["creationTimestamp"])
    for key, value in want.get("labels", {}).items():
        meta.labels[key] = value


def _fill_usage(usage: Any, want: dict[str, str]) -> None:
    for key, value in want.items():
        usage[key].string = value


def _fill_metrics(obj: Message, want: dict[str, Any]) -> None:
    _fill_meta(obj.metadata, want["metadata"])
    obj.timestamp.seconds = _seconds(want["timestamp"])
    obj.window.duration = parse_go_duration(want["window"])
    if "usage" in want:
        _fill_usage(obj.usage, want["usage"])
    for container in want.get("containers", ()):
        item = obj.containers.add(name=container["name"])
        _fill_usage(item.usage, container["usage"])


def _from_json(kind: str, want: dict[str, Any]) -> Message:
    """The object of a JSON answer, built with the `protobuf` package from upstream's messages:
    set fields only, as our encoder writes them (Go also writes empty strings and zeros)."""
    obj = CLASSES[KINDS[kind][0]]()
    if kind.endswith("List"):
        obj.metadata.SetInParent()
        assert want["metadata"] == {}
        for item in want["items"]:
            element = obj.items.add()
            if kind == "PartialObjectMetadataList":
                _fill_meta(element.metadata, item["metadata"])
            else:
                _fill_metrics(element, item)
    elif kind == "PartialObjectMetadata":
        _fill_meta(obj.metadata, want["metadata"])
    elif kind == "Status":
        obj.metadata.SetInParent()
        obj.status = want["status"]
        obj.message = want["message"]
        obj.reason = want["reason"]
        for key, value in want.get("details", {}).items():
            setattr(obj.details, key, value)
        obj.code = want["code"]
    else:
        _fill_metrics(obj, want)
    return obj


def _encode_by_library(api_version: str, kind: str, obj: Message) -> bytes:
    unknown = CLASSES[f"{RUNTIME}.Unknown"]()
    unknown.typeMeta.apiVersion = api_version
    unknown.typeMeta.kind = kind
    unknown.raw = obj.SerializeToString(deterministic=True)
    return b"k8s\x00" + unknown.SerializeToString(deterministic=True)


def _partial(kind: str, version: str, media_type: str = PROTOBUF) -> Choice:
    return Choice(media_type, Conversion(kind, "meta.k8s.io", version))


_Render = Callable[[Choice], bytes]
_NO_QUERY: dict[str, str] = {}
# name → the request, answered in the media type a choice names
_ANSWERS: dict[str, _Render] = {
    "list nodes": lambda c: make_api().list_nodes({}, c),
    "get node": lambda c: make_api().get_node("n1", _NO_QUERY, c),
    "list all pods": lambda c: make_api().list_pods(None, {}, c),
    "list pods in a namespace": lambda c: make_api().list_pods(
        "default", {"labelSelector": "app=web"}, c
    ),
    "get pod": lambda c: make_api().get_pod("default", "batch", _NO_QUERY, c),
}


@pytest.mark.parametrize("name", list(_ANSWERS))
def test_answer_is_the_library_encoding_of_the_json_answer(name: str) -> None:
    render = _ANSWERS[name]
    body = render(Choice(PROTOBUF))
    version, kind, obj = decode(body)
    want = orjson.loads(render(Choice(JSON)))
    assert (version, kind) == (want["apiVersion"], want["kind"])
    assert body == _encode_by_library(version, kind, _from_json(kind, want))
    assert obj == _from_json(kind, want)


@pytest.mark.parametrize(
    ("kind", "version"),
    [("PartialObjectMetadataList", "v1"), ("PartialObjectMetadataList", "v1beta1"),
     ("PartialObjectMetadata", "v1")],
)
def test_partial_object_metadata_is_the_library_encoding(kind: str, version: str) -> None:
    api = make_api()
    render: _Render
    if kind.endswith("List"):
        render = lambda c: api.list_pods(None, {}, c)  # noqa: E731
    else:
        render = lambda c: api.get_node("n1", _NO_QUERY, c)  # noqa: E731
    body = render(_partial(kind, version))
    want = orjson.loads(render(_partial(kind, version, JSON)))
    got_version, got_kind, _ = decode(body)
    assert (got_version, got_kind) == (want["apiVersion"], want["kind"]) == (
        f"meta.k8s.io/{version}", kind
    )
    assert body == _encode_by_library(got_version, kind, _from_json(kind, want))


@pytest.mark.parametrize(
    "error",
    [not_found("podmetrics", "default/nope"), not_found("nodemetrics", "n9"),
     bad_request("unable to parse requirement"), ApiError(400, "BadRequest", "bad")],
    ids=["pod not found", "node not found", "bad request", "no details"],
)
def test_status_is_the_library_encoding(error: ApiError) -> None:
    body = error.encode(PROTOBUF)
    version, kind, obj = decode(body)
    want = orjson.loads(error.body())
    assert (version, kind) == (want["apiVersion"], want["kind"]) == ("v1", "Status")
    assert body == _encode_by_library(version, kind, _from_json(kind, want))
    assert obj.HasField("details") == ("details" in want)
