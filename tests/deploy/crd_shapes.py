"""Hand-written shapes for the CRD kinds the chart can render.

Core schemas do not cover custom resources, so these JSON schemas encode the parts of the
prometheus-operator ServiceMonitor (monitoring.coreos.com/v1) and cert-manager Issuer and
Certificate (cert-manager.io/v1) CRDs that the chart uses: field names and types, closed
objects where we write them (a misspelt key fails), enums where the CRD has them.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
    r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
            "maxLength": 253,
        },
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "additionalProperties": False,
}
_RELABEL = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "action": {"type": "string"},
            "modulus": {"type": "integer"},
            "regex": {"type": "string"},
            "replacement": {"type": "string"},
            "separator": {"type": "string"},
            "sourceLabels": {"type": "array", "items": {"type": "string"}},
            "targetLabel": {"type": "string"},
        },
        "additionalProperties": False,
    },
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "namespaceSelector": {
                "type": "object",
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
            "selector": {
                "type": "object",
                "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}},
                "additionalProperties": False,
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                        "tlsConfig": {
                            "type": "object",
                            "properties": {
                                "insecureSkipVerify": {"type": "boolean"},
                                "serverName": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                        "metricRelabelings": _RELABEL,
                        "relabelings": _RELABEL,
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
)

ISSUER = _resource(
    "cert-manager.io/v1",
    "Issuer",
    {
        "type": "object",
        "properties": {
            "selfSigned": {
                "type": "object",
                "properties": {"crlDistributionPoints": {"type": "array"}},
                "additionalProperties": False,
            },
            "ca": {
                "type": "object",
                "required": ["secretName"],
                "properties": {"secretName": {"type": "string"}},
            },
            "acme": {"type": "object"},
            "vault": {"type": "object"},
            "venafi": {"type": "object"},
        },
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    },
)

CERTIFICATE = _resource(
    "cert-manager.io/v1",
    "Certificate",
    {
        "type": "object",
        "required": ["secretName", "issuerRef"],
        "properties": {
            "secretName": {"type": "string"},
            "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "duration": _GO_DURATION,
            "renewBefore": _GO_DURATION,
            "usages": {
                "type": "array",
                "items": {
                    "enum": [
                        "signing",
                        "digital signature",
                        "content commitment",
                        "key encipherment",
                        "key agreement",
                        "data encipherment",
                        "cert sign",
                        "crl sign",
                        "encipher only",
                        "decipher only",
                        "any",
                        "server auth",
                        "client auth",
                        "code signing",
                        "email protection",
                        "s/mime",
                        "ipsec end system",
                        "ipsec tunnel",
                        "ipsec user",
                        "timestamping",
                        "ocsp signing",
                        "microsoft sgc",
                        "netscape sgc",
                    ]
                },
            },
            "privateKey": {
                "type": "object",
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    "rotationPolicy": {"enum": ["Never", "Always"]},
                    "size": {"type": "integer"},
                },
                "additionalProperties": False,
            },
            "issuerRef": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "group": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    },
)

SHAPES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("cert-manager.io/v1", "Issuer"): ISSUER,
    ("cert-manager.io/v1", "Certificate"): CERTIFICATE,
}


def shape_errors(obj: dict[str, Any]) -> list[str]:
    schema = SHAPES[obj["apiVersion"], obj["kind"]]
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
