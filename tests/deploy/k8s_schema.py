"""Offline validation of rendered objects against Kubernetes' OpenAPI-derived JSON schemas.

The schemas come from the ``kubernetes-validate`` package (one directory per minor release).
We use its *strict* variants (unknown fields are errors, which catches misspelt or misplaced
keys) and build one ``referencing`` registry per Kubernetes version and one validator per
(version, apiVersion, kind), so that a test session pays for loading each ~2 MB definitions
file once instead of once per object as ``kubernetes_validate.validate`` does.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import referencing
from packaging.version import Version

# The oldest Kubernetes release we promise the manifests and chart work on.
OLDEST_SUPPORTED = Version("1.31")

_SCHEMA_ROOT = resources.files("kubernetes_validate") / "kubernetes-json-schema"
_DIR_RE = re.compile(r"^v(\d+\.\d+)\.\d+-local-strict$")


def schema_versions() -> list[str]:
    """Every Kubernetes minor version (>= 1.31) that has strict schemas, oldest first."""
    found = {m.group(1) for p in _SCHEMA_ROOT.iterdir() if (m := _DIR_RE.match(p.name))}
    return sorted((v for v in found if Version(v) >= OLDEST_SUPPORTED), key=Version)


def _schema_dir(version: str) -> Any:
    (path,) = (
        p
        for p in _SCHEMA_ROOT.iterdir()
        if p.name.startswith(f"v{version}.") and p.name.endswith("-local-strict")
    )
    return path


@functools.cache
def _registry(version: str) -> referencing.Registry[Any]:
    defs = json.loads((_schema_dir(version) / "_definitions.json").read_text())
    return referencing.Resource.from_contents(defs) @ referencing.Registry()


class SchemaMissingError(LookupError):
    """No core schema for this apiVersion/kind (a CRD kind, or a removed API)."""


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    # rbac.authorization.k8s.io/v1 -> rbac-v1; apps/v1 -> apps-v1; v1 -> v1
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        raise SchemaMissingError(f"no schema for {api_version} {kind} in Kubernetes {version}")
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=_registry(version))


def has_schema(obj: dict[str, Any], version: str) -> bool:
    try:
        _validator(version, obj["apiVersion"], obj["kind"])
    except SchemaMissingError:
        return False
    return True


def validation_errors(obj: dict[str, Any], version: str) -> list[str]:
    """Human-readable schema violations of ``obj`` for Kubernetes ``version`` (empty: valid)."""
    validator = _validator(version, obj["apiVersion"], obj["kind"])
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
    ]
