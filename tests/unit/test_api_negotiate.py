"""Accept-header negotiation as kube-apiserver does it (table tests)."""

from __future__ import annotations

import pytest

from metrics_server.api.negotiate import (
    AGGREGATED_DISCOVERY,
    JSON,
    PROTOBUF,
    RESOURCE_MEDIA_TYPES,
    YAML,
    Choice,
    Conversion,
    negotiate,
    parse_accept,
    resource_conversion_allowed,
)

TABLE_V1 = Conversion("Table", "meta.k8s.io", "v1")
TABLE_V1BETA1 = Conversion("Table", "meta.k8s.io", "v1beta1")
KUBECTL_GET = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
CLIENT_GO_METRICS = "application/vnd.kubernetes.protobuf,application/json"
METADATA_INFORMER = (
    "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        ("", Choice(JSON)),
        ("   ", Choice(JSON)),
        ("*/*", Choice(JSON)),
        ("application/*", Choice(JSON)),
        ("application/json, */*", Choice(JSON)),
        ("application/yaml", Choice(YAML)),
        (CLIENT_GO_METRICS, Choice(PROTOBUF)),
        ("application/json;q=0.5,application/vnd.kubernetes.protobuf", Choice(PROTOBUF)),
        (KUBECTL_GET, Choice(JSON, TABLE_V1)),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", Choice(JSON, TABLE_V1BETA1)),
        ("application/yaml;as=Table;v=v1;g=meta.k8s.io", Choice(YAML, TABLE_V1)),
        # Table has no protobuf form: fall through to the next clause.
        ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json",
         Choice(JSON)),
        # Conversions we do not know, or incomplete ones, are skipped.
        ("application/json;as=Table;v=v2;g=meta.k8s.io,application/yaml", Choice(YAML)),
        ("application/json;as=Table,application/vnd.kubernetes.protobuf", Choice(PROTOBUF)),
        ("application/json;as=Deployment;g=apps;v=v1,application/json", Choice(JSON)),
        (METADATA_INFORMER,
         Choice(PROTOBUF, Conversion("PartialObjectMetadataList", "meta.k8s.io", "v1"))),
        ("application/json;pretty=1", Choice(JSON, pretty=True)),
        ("application/json;stream=watch", Choice(JSON)),
        ("application/json;stream=other,application/yaml", Choice(YAML)),
        # More specific ranges win at equal quality; q=0 is never chosen.
        ("*/*,application/yaml", Choice(YAML)),
        ("application/json;q=0,application/yaml;q=0.1", Choice(YAML)),
        ('APPLICATION/JSON; AS="Table"; G=meta.k8s.io; V=v1', Choice(JSON, TABLE_V1)),
    ],
)
def test_resource_negotiation(accept: str, want: Choice) -> None:
    assert negotiate(accept, RESOURCE_MEDIA_TYPES, resource_conversion_allowed) == want


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "application/xml, text/plain;q=0.9",
        "application/json;q=0",
        "application/json;as=Table;v=v1;g=meta.k8s.io",  # Table alone, where none is allowed
        "garbage",
        ",,,",
    ],
)
def test_nothing_acceptable(accept: str) -> None:
    assert negotiate(accept, (JSON, YAML)) is None


def test_aggregated_discovery_content_type_names_the_kind() -> None:
    accept = (
        "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
        "application/json;q=0.9"
    )
    choice = negotiate(
        accept, (JSON, YAML), lambda media, c: media == JSON and c in AGGREGATED_DISCOVERY
    )
    assert choice is not None and choice.conversion == AGGREGATED_DISCOVERY[0]
    assert choice.content_type == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    assert Choice(JSON, TABLE_V1).content_type == JSON


def test_parse_accept_orders_by_quality_then_specificity_then_position() -> None:
    clauses = parse_accept("*/*;q=0.8, text/*, application/json;q=0.8, a/b, x")
    assert [(c.type, c.subtype) for c in clauses] == [
        ("a", "b"), ("text", "*"), ("application", "json"), ("*", "*")
    ]
    assert parse_accept("*")[0].subtype == "*"
    assert parse_accept("a/b;q=nonsense")[0].quality == 0.0
