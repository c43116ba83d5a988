"""Kubernetes `Status` error objects (metav1.Status), as every apiserver answers failures,
in JSON, YAML or protobuf as the request negotiated."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from metrics_server.api import protobuf, serialize
from metrics_server.api.negotiate import PROTOBUF

GROUP = "metrics.k8s.io"


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """An error to answer with a Status body."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None

    def body(self) -> bytes:
        """The Status as JSON."""
        return orjson.dumps(self.as_dict())

    def encode(self, media_type: str) -> bytes:
        """The Status in a negotiated media type (JSON, YAML or Kubernetes protobuf)."""
        if media_type == PROTOBUF:
            raw = protobuf.status(self.code, self.reason, self.message, self.details)
            return protobuf.envelope("v1", "Status", raw)
        return serialize.dumps(self.as_dict(), media_type)

    def as_dict(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            status["details"] = self.details
        status["code"] = self.code
        return status


def not_found(resource: str, name: str) -> ApiError:
    """`nodemetrics.metrics.k8s.io "n1" not found`, as upstream words it."""
    return ApiError(
        404,
        "NotFound",
        f'{resource}.{GROUP} "{name}" not found',
        {"name": name, "group": GROUP, "kind": resource},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(method: str, what: str) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        f"the server does not allow this method on the requested resource ({method} {what})",
    )


def path_not_found(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


def not_acceptable(accepted: Sequence[str]) -> ApiError:
    """406, worded as kube-apiserver's NotAcceptableError."""
    return ApiError(
        406,
        "NotAcceptable",
        f"only the following media types are accepted: {', '.join(accepted)}",
    )
