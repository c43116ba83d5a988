"""Authentication order, header rules and failure semantics, with trustme certificates."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import trio
import trustme
from cryptography import x509

from metrics_server.auth import AuthConfig, AuthenticationFailed, AuthSources, TokenReviewer
from metrics_server.auth.authn import Authenticator, identity_header_matcher, path_unescape
from metrics_server.auth.certverify import parse_ca_bundle
from metrics_server.auth.sources import RequestHeaderSettings

UTC = datetime.UTC


def leaf(ca: trustme.CA, cn: str, org: str | None = None, **kw: Any) -> x509.Certificate:
    cert = ca.issue_cert(f"{cn}.test", common_name=cn, organization_name=org, **kw)
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


@pytest.fixture(scope="module")
def cas() -> tuple[trustme.CA, trustme.CA]:
    return trustme.CA(), trustme.CA()


def make_sources(
    client_ca: trustme.CA, proxy_ca: trustme.CA, allowed: tuple[str, ...] = ("front-proxy-client",)
) -> AuthSources:
    sources = AuthSources(AuthConfig(authentication_skip_lookup=True))
    sources.set_client_ca(parse_ca_bundle(client_ca.cert_pem.bytes(), "client"))
    sources.set_request_header(
        RequestHeaderSettings(
            ca=parse_ca_bundle(proxy_ca.cert_pem.bytes(), "proxy"),
            allowed_names=allowed,
            username_headers=("X-Remote-User", "X-Other-User"),
            group_headers=("X-Remote-Group",),
            extra_headers_prefix=("X-Remote-Extra-",),
        )
    )
    return sources


def h(*pairs: tuple[str, str]) -> Sequence[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in pairs]


def reviewer(tokens: dict[str, str], calls: list[str], clock: list[float]) -> TokenReviewer:
    async def handler(req: httpx.Request) -> httpx.Response:
        token = json.loads(req.content)["spec"]["token"]
        calls.append(token)
        if token == "boom":
            return httpx.Response(503)
        if token in tokens:
            status = {"authenticated": True, "user": {"username": tokens[token], "uid": "u1"}}
        else:
            status = {"authenticated": False}
        return httpx.Response(201, json={"status": status})

    client = httpx.AsyncClient(base_url="https://k", transport=httpx.MockTransport(handler))
    return TokenReviewer(client, cache_ttl=10, timeout=1, clock=lambda: clock[0])


async def test_request_header_user_groups_extra(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    user = await auth.authenticate(
        h(
            ("X-Remote-User", ""),
            ("X-Other-User", "jane"),
            ("X-Remote-User", "ignored-second"),
            ("X-Remote-Group", "a"),
            ("X-Remote-Group", ""),
            ("x-remote-group", "b, c"),
            ("X-Remote-Extra-Acme.com%2Fteam", "t1"),
            ("x-remote-extra-acme.com%2fteam", "t2"),
            ("X-Remote-Extra-Bad%zz", "v"),
        ),
        leaf(proxy_ca, "front-proxy-client"),
    )
    # The first username header has an empty first value, so the next header wins.
    assert user.name == "jane"
    assert user.groups == ("a", "b, c", "system:authenticated")
    assert dict(user.extra) == {"acme.com/team": ("t1", "t2"), "bad%zz": ("v",)}
    assert user.authenticated_by == "request-header"


async def test_request_header_first_value_wins(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    user = await auth.authenticate(
        h(("X-Remote-User", "bob"), ("X-REMOTE-USER", "system:admin")),
        leaf(proxy_ca, "front-proxy-client"),
    )
    assert user.name == "bob"


async def test_request_header_cn_not_allowed_fails(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    with pytest.raises(AuthenticationFailed, match="cn=intruder is not in the allowed list"):
        await auth.authenticate(h(("X-Remote-User", "admin")), leaf(proxy_ca, "intruder"))


async def test_any_cn_when_allowed_names_empty(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca, allowed=()), None)
    user = await auth.authenticate(h(("X-Remote-User", "u")), leaf(proxy_ca, "whatever"))
    assert user.name == "u"


async def test_client_cert_ignores_identity_headers(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    user = await auth.authenticate(
        h(("X-Remote-User", "system:admin")), leaf(client_ca, "alice", "devs")
    )
    assert (user.name, user.groups, user.authenticated_by) == (
        "alice",
        ("devs", "system:authenticated"),
        "x509",
    )


async def test_expired_cert_rejected_even_if_tls_let_it_through(
    cas: tuple[trustme.CA, trustme.CA],
) -> None:
    client_ca, proxy_ca = cas
    now = datetime.datetime.now(UTC)
    old = leaf(
        client_ca,
        "alice",
        not_before=now - datetime.timedelta(days=3),
        not_after=now - datetime.timedelta(days=1),
    )
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    with pytest.raises(AuthenticationFailed, match="verifying certificate"):
        await auth.authenticate(h(), old)
    # Same certificate judged at a time inside its validity: accepted.
    then = Authenticator(
        make_sources(client_ca, proxy_ca), None, now=lambda: now - datetime.timedelta(days=2)
    )
    assert (await then.authenticate(h(), old)).name == "alice"


async def test_unknown_ca_cert_is_401_not_anonymous(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(h(), leaf(trustme.CA(), "alice"))


async def test_empty_cn_client_cert(cas: tuple[trustme.CA, trustme.CA]) -> None:
    client_ca, proxy_ca = cas
    cert = client_ca.issue_cert("x.test")
    c = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    # Upstream: the request-header verifier's error stands when x509 yields no user → 401.
    auth = Authenticator(make_sources(client_ca, proxy_ca), None)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(h(), c)
    # Without a front proxy configured, nothing failed: anonymous.
    sources = AuthSources(AuthConfig(authentication_skip_lookup=True))
    sources.set_client_ca(parse_ca_bundle(client_ca.cert_pem.bytes(), "client"))
    assert (await Authenticator(sources, None).authenticate(h(), c)).name == "system:anonymous"


async def test_tokens_reviewed_and_cached(cas: tuple[trustme.CA, trustme.CA]) -> None:
    with trio.fail_after(5):
        client_ca, proxy_ca = cas
        calls: list[str] = []
        clock = [0.0]
        auth = Authenticator(
            make_sources(client_ca, proxy_ca), reviewer({"good": "jane"}, calls, clock)
        )
        user = await auth.authenticate(h(("Authorization", "Bearer good")), None)
        assert (user.name, user.uid) == ("jane", "u1")
        await auth.authenticate(h(("Authorization", "bearer good")), None)
        assert calls == ["good"]
        for _ in range(2):
            with pytest.raises(AuthenticationFailed, match="invalid bearer token"):
                await auth.authenticate(h(("Authorization", "Bearer bad")), None)
        assert calls == ["good", "bad"]
        clock[0] = 10.0  # both TTLs elapsed
        await auth.authenticate(h(("Authorization", "Bearer good")), None)
        assert calls == ["good", "bad", "good"]


async def test_token_backend_failure_is_401_and_not_cached(
    cas: tuple[trustme.CA, trustme.CA],
) -> None:
    with trio.fail_after(5):
        calls: list[str] = []
        auth = Authenticator(make_sources(*cas), reviewer({}, calls, [0.0]))
        for _ in range(2):
            with pytest.raises(AuthenticationFailed, match="HTTP 503"):
                await auth.authenticate(h(("Authorization", "Bearer boom")), None)
        assert calls == ["boom", "boom"]


async def test_token_without_reviewer_is_refused(cas: tuple[trustme.CA, trustme.CA]) -> None:
    auth = Authenticator(make_sources(*cas), None)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(h(("Authorization", "Bearer x")), None)


@pytest.mark.parametrize("value", ["", "Basic abc", "Bearer", "Bearer  two-spaces"])
async def test_non_bearer_authorization_is_anonymous(
    cas: tuple[trustme.CA, trustme.CA], value: str
) -> None:
    auth = Authenticator(make_sources(*cas), None)
    assert (await auth.authenticate(h(("Authorization", value)), None)).name == "system:anonymous"


def test_path_unescape_like_go() -> None:
    assert path_unescape("a%2Fb") == "a/b"
    assert path_unescape("a%zz") == "a%zz"
    assert path_unescape("a%2") == "a%2"
    assert path_unescape("a+b") == "a+b"


def test_identity_header_matcher_covers_configured_and_default_names(
    cas: tuple[trustme.CA, trustme.CA],
) -> None:
    match = identity_header_matcher(make_sources(*cas).snapshot().request_header)
    for name in (b"x-remote-user", b"X-Other-User", b"x-remote-extra-foo", b"x-remote-uid"):
        assert match(name)
    assert not match(b"accept")
    assert identity_header_matcher(None)(b"X-Remote-Group")
