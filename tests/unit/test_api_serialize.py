"""The YAML writer: every document reads back (with PyYAML) as the JSON document it came from."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml

from metrics_server.api import discovery, openapi
from metrics_server.api.negotiate import JSON, YAML
from metrics_server.api.serialize import dumps, to_yaml

AWKWARD_STRINGS = [
    "", " ", "yes", "No", "on", "OFF", "y", "n", "null", "~", "true", "1", "0x1F", "1e3", ".5",
    "1.5", "-1", "2019-05-26T10:54:52Z", "15.692s", "311155148n", "2881016Ki", "a: b", "a #b",
    "#x", "- x", "[x]", "{x}", "*x", "&x", "!x", "%x", "@x", "`x", "'x'", '"x"', "x\ny",
    "tab\there", "trailing ", " leading", "ünïcødé", "\u2028", "metrics.k8s.io/v1beta1",
    "kubernetes.io/hostname", "<<", "=", "?", "|", ">", "nan", ".inf", "-.inf", "\x00\x07",
    "\x7f", "\x85", "\u2029", "\ufeff",
]


@pytest.mark.parametrize("text", AWKWARD_STRINGS)
def test_strings_stay_strings(text: str) -> None:
    doc = {text: text, "list": [text, {text: [text]}]}
    assert yaml.safe_load(to_yaml(doc)) == doc


@pytest.mark.parametrize(
    "doc",
    [
        {},
        [],
        {"a": {}, "b": [], "c": None, "d": True, "e": False, "f": 0, "g": -7, "h": 1.25},
        {"items": [{"a": 1, "b": {"c": [1, 2, {"d": []}]}}, {}, [], "x", [["nested"]]]},
        [{"only": "item"}],
        "scalar",
        None,
    ],
)
def test_shapes(doc: Any) -> None:
    assert yaml.safe_load(to_yaml(doc)) == doc


@pytest.mark.parametrize(
    "body", [discovery.API_RESOURCE_LIST, discovery.AGGREGATED["v2"], openapi.V2, openapi.V3]
)
def test_real_documents(body: bytes) -> None:
    assert yaml.safe_load(dumps(orjson.loads(body), YAML)) == orjson.loads(body)


def test_json_pretty_and_compact() -> None:
    doc = {"a": [1, {"b": "c"}]}
    assert dumps(doc, JSON) == b'{"a":[1,{"b":"c"}]}'
    pretty = dumps(doc, JSON, pretty=True)
    assert b"\n  " in pretty and orjson.loads(pretty) == doc
