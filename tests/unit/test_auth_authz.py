"""The union authorizer, SubjectAccessReview bodies, TTL caches and failure handling."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from metrics_server.auth import AuthBackendError, AuthConfig, AuthConfigError, UserInfo
from metrics_server.auth.authz import (
    Attributes,
    Authorizer,
    Decision,
    SubjectAccessReviewer,
    path_allowed,
)
from metrics_server.auth.requestinfo import parse_request_info

JANE = UserInfo(
    name="jane", uid="42", groups=("dev", "system:authenticated"), extra={"scopes": ("a", "b")}
)


class FakeSAR:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"allowed": True}
        self.mode = "ok"

    async def handler(self, req: httpx.Request) -> httpx.Response:
        assert req.url.path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        self.bodies.append(json.loads(req.content))
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "500":
            return httpx.Response(500)
        return httpx.Response(201, json={"status": self.answer})


def make(fake: FakeSAR, clock: list[float], **cfg: Any) -> Authorizer:
    client = httpx.AsyncClient(base_url="https://k", transport=httpx.MockTransport(fake.handler))
    sar = SubjectAccessReviewer(
        client, allowed_ttl=10, denied_ttl=5, timeout=1, clock=lambda: clock[0]
    )
    return Authorizer(AuthConfig(**cfg), sar)


def attrs(user: UserInfo, method: str, path: str, query: str = "") -> Attributes:
    return Attributes.from_request_info(user, parse_request_info(method, path, query))


async def test_resource_sar_body() -> None:
    fake = FakeSAR()
    authz = make(fake, [0.0])
    a = attrs(JANE, "GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/p1")
    assert await authz.authorize(a) == (Decision.ALLOW, "")
    assert fake.bodies == [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "jane",
                "groups": ["dev", "system:authenticated"],
                "uid": "42",
                "extra": {"scopes": ["a", "b"]},
                "resourceAttributes": {
                    "namespace": "default",
                    "verb": "get",
                    "group": "metrics.k8s.io",
                    "version": "v1beta1",
                    "resource": "pods",
                    "name": "p1",
                },
            },
        }
    ]


@pytest.mark.parametrize("path", ["/metrics", "/apis", "/openapi/v2", "/apis/metrics.k8s.io"])
async def test_non_resource_sar_body(path: str) -> None:
    fake = FakeSAR()
    await make(fake, [0.0]).authorize(attrs(JANE, "GET", path))
    assert fake.bodies[0]["spec"]["nonResourceAttributes"] == {"path": path, "verb": "get"}
    assert "resourceAttributes" not in fake.bodies[0]["spec"]


async def test_always_allow_paths_and_groups_skip_sar() -> None:
    fake = FakeSAR()
    authz = make(fake, [0.0], always_allow_paths=("/healthz", "/debug/*"))
    anon = UserInfo(name="system:anonymous", groups=("system:unauthenticated",))
    assert (await authz.authorize(attrs(anon, "GET", "/healthz")))[0] is Decision.ALLOW
    assert (await authz.authorize(attrs(anon, "GET", "/debug/pprof/x")))[0] is Decision.ALLOW
    admin = UserInfo(name="root", groups=("system:masters",))
    m = "/apis/metrics.k8s.io/v1beta1/nodes"
    assert (await authz.authorize(attrs(admin, "GET", m)))[0] is Decision.ALLOW
    assert fake.bodies == []
    # /healthz/extra is not /healthz, and resource requests never match paths.
    fake.answer = {"allowed": False}
    assert (await authz.authorize(attrs(anon, "GET", "/healthz/extra")))[0] is Decision.NO_OPINION


def test_path_patterns() -> None:
    assert path_allowed(("/healthz",), "/healthz")
    assert not path_allowed(("/healthz",), "/healthzz")
    assert path_allowed(("/x*",), "/xyz")
    assert path_allowed(("*",), "/anything")
    with pytest.raises(AuthConfigError):
        AuthConfig(always_allow_paths=("/a*b",))


async def test_allowed_and_denied_cached_for_their_own_ttls() -> None:
    fake = FakeSAR()
    clock = [0.0]
    authz = make(fake, clock)
    a = attrs(JANE, "GET", "/metrics")
    await authz.authorize(a)
    clock[0] = 9.9
    await authz.authorize(a)
    assert len(fake.bodies) == 1
    clock[0] = 10.0
    fake.answer = {"allowed": False, "denied": True, "reason": "nope"}
    assert await authz.authorize(a) == (Decision.DENY, "nope")
    clock[0] = 14.9
    assert await authz.authorize(a) == (Decision.DENY, "nope")
    assert len(fake.bodies) == 2
    clock[0] = 15.0
    fake.answer = {"allowed": False}
    assert await authz.authorize(a) == (Decision.NO_OPINION, "")
    assert len(fake.bodies) == 3


@pytest.mark.parametrize("mode", ["hang", "500"])
async def test_failures_raise_and_are_never_cached(mode: str) -> None:
    with trio.fail_after(5):
        fake = FakeSAR()
        fake.mode = mode
        authz = make(fake, [0.0])
        a = attrs(JANE, "GET", "/apis/metrics.k8s.io/v1beta1/nodes")
        for _ in range(2):
            with pytest.raises(AuthBackendError, match="subjectaccessreview webhook error"):
                await authz.authorize(a)
        assert len(fake.bodies) == 2


async def test_no_cluster_client_forbids_everything_but_always_allowed() -> None:
    authz = Authorizer(AuthConfig(), None)
    assert (await authz.authorize(attrs(JANE, "GET", "/metrics")))[0] is Decision.NO_OPINION
    assert (await authz.authorize(attrs(JANE, "GET", "/readyz")))[0] is Decision.ALLOW
