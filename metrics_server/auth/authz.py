"""Authorization: may this user do this verb on this resource or path?

Upstream's delegating union, in order: always-allow groups (system:masters), always-allow paths
(non-resource requests only; a trailing `*` is a prefix), then SubjectAccessReview against
kube-apiserver. The first authorizer with an opinion wins. A SubjectAccessReview that fails
(unreachable, slower than the bound, bad reply) raises AuthBackendError, which the middleware
turns into 500 like upstream; failures are never cached, allowed and denied answers are cached
for their own TTLs.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from .config import AuthConfig
from .errors import AuthBackendError
from .requestinfo import RequestInfo
from .ttlcache import ReviewCache
from .user import UserInfo

__all__ = [
    "SUBJECTACCESSREVIEW_PATH",
    "Attributes",
    "Authorizer",
    "Decision",
    "SubjectAccessReviewer",
    "path_allowed",
]

SUBJECTACCESSREVIEW_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    NO_OPINION = "no-opinion"


@dataclass(frozen=True, slots=True)
class Attributes:
    """authorizer.Attributes: the user plus the RequestInfo fields that matter."""

    user: UserInfo
    verb: str
    path: str
    is_resource_request: bool
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @classmethod
    def from_request_info(cls, user: UserInfo, info: RequestInfo) -> Attributes:
        return cls(
            user=user,
            verb=info.verb,
            path=info.path,
            is_resource_request=info.is_resource_request,
            api_group=info.api_group,
            api_version=info.api_version,
            resource=info.resource,
            subresource=info.subresource,
            namespace=info.namespace,
            name=info.name,
        )

    def sar_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "user": self.user.name,
            "groups": list(self.user.groups),
        }
        if self.user.uid:
            spec["uid"] = self.user.uid
        if self.user.extra:
            spec["extra"] = {k: list(v) for k, v in self.user.extra.items()}
        if self.is_resource_request:
            attrs = {
                "namespace": self.namespace,
                "verb": self.verb,
                "group": self.api_group,
                "version": self.api_version,
                "resource": self.resource,
                "subresource": self.subresource,
                "name": self.name,
            }
            spec["resourceAttributes"] = {k: v for k, v in attrs.items() if v}
        else:
            spec["nonResourceAttributes"] = {"path": self.path, "verb": self.verb}
        return spec


def path_allowed(patterns: tuple[str, ...], path: str) -> bool:
    """path.NewAuthorizer: exact matches, or prefixes for entries ending in `*`."""
    trimmed = path.removeprefix("/")
    for pattern in patterns:
        p = pattern.removeprefix("/")
        if p.endswith("*"):
            if trimmed.startswith(p[:-1]):
                return True
        elif trimmed == p:
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Verdict:
    decision: Decision
    reason: str


class SubjectAccessReviewer:
    """POSTs SubjectAccessReviews; caches allowed and denied answers separately."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        allowed_ttl: float = 10.0,
        denied_ttl: float = 10.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 8192,
    ) -> None:
        self.client = client
        self.allowed_ttl = allowed_ttl
        self.denied_ttl = denied_ttl
        self.timeout = timeout
        self.cache: ReviewCache[_Verdict] = ReviewCache(max_entries=max_entries, clock=clock)

    async def review(self, attrs: Attributes) -> tuple[Decision, str]:
        spec = attrs.sar_spec()
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        verdict = await self.cache.lookup(key, lambda: self._post(spec), self._ttl)
        return verdict.decision, verdict.reason

    def _ttl(self, verdict: _Verdict) -> float:
        return self.allowed_ttl if verdict.decision is Decision.ALLOW else self.denied_ttl

    async def _post(self, spec: dict[str, Any]) -> _Verdict:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        try:
            with trio.fail_after(self.timeout):
                resp = await self.client.post(SUBJECTACCESSREVIEW_PATH, json=body)
        except trio.TooSlowError as exc:
            raise AuthBackendError(
                f"subjectaccessreview webhook error: no answer within {self.timeout:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthBackendError(f"subjectaccessreview webhook error: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise AuthBackendError(f"subjectaccessreview webhook error: HTTP {resp.status_code}")
        try:
            status = resp.json().get("status") or {}
        except (ValueError, AttributeError) as exc:
            raise AuthBackendError("subjectaccessreview webhook error: malformed reply") from exc
        if not isinstance(status, dict):
            raise AuthBackendError("subjectaccessreview webhook error: malformed status")
        reason = str(status.get("reason") or "")
        if status.get("allowed") is True:
            return _Verdict(Decision.ALLOW, reason)
        if status.get("denied") is True:
            return _Verdict(Decision.DENY, reason)
        return _Verdict(Decision.NO_OPINION, reason)


class Authorizer:
    """The union authorizer. `reviewer` None (no cluster credentials) means: forbid all else."""

    def __init__(self, config: AuthConfig, reviewer: SubjectAccessReviewer | None) -> None:
        self.always_allow_groups = frozenset(config.always_allow_groups)
        self.always_allow_paths = config.always_allow_paths
        self.reviewer = reviewer

    async def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        if self.always_allow_groups.intersection(attrs.user.groups):
            return Decision.ALLOW, ""
        if not attrs.is_resource_request and path_allowed(self.always_allow_paths, attrs.path):
            return Decision.ALLOW, ""
        if self.reviewer is None:
            return Decision.NO_OPINION, ""
        return await self.reviewer.review(attrs)
