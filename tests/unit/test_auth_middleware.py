"""The ASGI middleware's responses and scope handling, driven directly (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metrics_server.auth import AuthConfig, AuthSources, UserInfo
from metrics_server.auth.authn import Authenticator
from metrics_server.auth.authz import Attributes, Authorizer, Decision
from metrics_server.auth.errors import AuthBackendError
from metrics_server.auth.middleware import AuthMiddleware, forbidden_message, go_quote
from metrics_server.auth.requestinfo import parse_request_info


class StubAuthorizer(Authorizer):
    def __init__(self, result: tuple[Decision, str] | None) -> None:
        super().__init__(AuthConfig(), None)
        self.result = result

    async def authorize(self, attrs: Attributes) -> tuple[Decision, str]:
        if self.result is None:
            raise AuthBackendError("subjectaccessreview webhook error: no answer within 10s")
        return self.result


async def call(
    mw: AuthMiddleware, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes, Any]:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["scope"] = scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw.app = app
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "extensions": {},
    }
    await mw(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"], seen.get("scope")


def mw(result: tuple[Decision, str] | None) -> AuthMiddleware:
    sources = AuthSources(AuthConfig(authentication_skip_lookup=True))
    return AuthMiddleware(lambda *a: None, Authenticator(sources, None), StubAuthorizer(result))  # type: ignore[arg-type,return-value]


async def test_allowed_request_is_cleaned_and_annotated() -> None:
    status, _, _, scope = await call(
        mw((Decision.ALLOW, "")),
        "/apis/metrics.k8s.io/v1beta1/nodes",
        [(b"x-remote-user", b"admin"), (b"x-remote-extra-a", b"b"), (b"accept", b"*/*")],
    )
    assert status == 200
    assert scope["headers"] == [(b"accept", b"*/*")]
    assert scope["extensions"]["user"].name == "system:anonymous"
    assert scope["extensions"]["request_info"].verb == "list"


async def test_bad_token_is_401_status() -> None:
    status, headers, body, scope = await call(
        mw((Decision.ALLOW, "")), "/healthz", [(b"authorization", b"Bearer x")]
    )
    assert status == 401 and scope is None
    assert headers[b"content-type"] == b"application/json"
    assert body == (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"Unauthorized","reason":"Unauthorized","code":401}'
    )


async def test_forbidden_status_body() -> None:
    status, _, body, scope = await call(
        mw((Decision.NO_OPINION, "")),
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/p1",
        [],
    )
    assert status == 403 and scope is None
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods.metrics.k8s.io "p1" is forbidden: User "system:anonymous" cannot get '
        'resource "pods" in API group "metrics.k8s.io" in the namespace "default"',
        "reason": "Forbidden",
        "details": {"name": "p1", "group": "metrics.k8s.io", "kind": "pods"},
        "code": 403,
    }


async def test_backend_error_is_500_like_upstream() -> None:
    status, headers, body, scope = await call(
        mw(None), "/apis/metrics.k8s.io/v1beta1/nodes", [], query=b"limit=1"
    )
    assert status == 500 and scope is None
    assert headers[b"content-type"].startswith(b"text/plain")
    assert body == (
        b'Internal Server Error: "/apis/metrics.k8s.io/v1beta1/nodes?limit=1": '
        b"subjectaccessreview webhook error: no answer within 10s\n"
    )


@pytest.mark.parametrize(
    ("s", "quoted"),
    [
        ("jane", '"jane"'),
        ('a"b', '"a\\"b"'),
        ("a\nb", '"a\\nb"'),
        ("\x01", '"\\x01"'),
        ("é", '"é"'),
        ("\u200b", '"\\u200b"'),
    ],
)
def test_go_quote(s: str, quoted: str) -> None:
    assert go_quote(s) == quoted


def test_forbidden_message_reason_and_sanitising() -> None:
    user = UserInfo(name="<script>")
    a = Attributes.from_request_info(user, parse_request_info("GET", "/metrics"))
    assert forbidden_message(a, "no RBAC") == (
        'forbidden: User "&lt;script&gt;" cannot get path "/metrics": no RBAC'
    )
    n = Attributes.from_request_info(
        UserInfo(name="j"), parse_request_info("GET", "/apis/metrics.k8s.io/v1beta1/nodes")
    )
    assert forbidden_message(n, "") == (
        'nodes.metrics.k8s.io is forbidden: User "j" cannot list resource "nodes" in API '
        'group "metrics.k8s.io" at the cluster scope'
    )
