"""Attacks on the real HTTPS stack: serve() + AuthMiddleware + a tiny Quart-Trio app.

Each test runs the server on 127.0.0.1 with an ephemeral port, trustme CAs for the client CA,
the request-header (front-proxy) CA and the serving certificate, and a fake kube-apiserver
(httpx.MockTransport) that answers TokenReview and SubjectAccessReview from tables.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from quart import jsonify, request
from quart_trio import QuartTrio

from metrics_server.auth import AuthConfig, UserInfo, build_auth_stack
from metrics_server.serving import ServingConfig, ServingError, serve

DEADLINE = 20.0
UTC = datetime.UTC


def make_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/healthz")
    async def healthz() -> str:
        return "ok"

    @app.route("/apis/metrics.k8s.io/v1beta1/namespaces/<ns>/pods")
    async def pods(ns: str) -> Any:
        user: UserInfo = request.scope["extensions"]["user"]
        names = [k.lower() for k, _ in request.headers.items()]
        leaked = sorted(k for k in names if k.startswith("x-remote") or k == "authorization")
        return jsonify(
            {
                "user": user.name,
                "groups": list(user.groups),
                "extra": {k: list(v) for k, v in user.extra.items()},
                "by": user.authenticated_by,
                "leaked_headers": leaked,
                "tls": {
                    k: v
                    for k, v in request.scope["extensions"]["tls"].items()
                    if k != "client_cert_chain"
                },
            }
        )

    return app


@dataclass
class FakeApiserver:
    """TokenReview and SubjectAccessReview from tables; counts calls; can hang or fail."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    allowed_users: set[str] = field(default_factory=set)
    mode: str = "ok"  # ok | hang | error
    calls: list[str] = field(default_factory=list)

    async def handler(self, req: httpx.Request) -> httpx.Response:
        body = json.loads(req.content)
        self.calls.append(body["kind"])
        if self.mode == "hang":
            await trio.sleep_forever()
        if self.mode == "error":
            raise httpx.ConnectError("connection refused", request=req)
        if body["kind"] == "TokenReview":
            user = self.tokens.get(body["spec"]["token"])
            status: dict[str, Any] = {"authenticated": user is not None}
            if user is not None:
                status["user"] = user
            return httpx.Response(201, json={**body, "status": status})
        spec = body["spec"]
        allowed = spec["user"] in self.allowed_users
        return httpx.Response(201, json={**body, "status": {"allowed": allowed}})


@dataclass
class PKI:
    client_ca: trustme.CA
    proxy_ca: trustme.CA
    server_ca: trustme.CA
    tmp: Path

    def client_cert(self, ca: trustme.CA, cn: str, org: str | None = None, **kw: Any) -> str:
        cert = ca.issue_cert(f"{cn}.example", common_name=cn, organization_name=org, **kw)
        path = self.tmp / f"{cn}-{id(cert)}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(trustme.CA(), trustme.CA(), trustme.CA(), tmp_path)


@dataclass
class Reloads:
    """Records TLS reloads reported by serve() and lets a test wait for one."""

    seen: list[str] = field(default_factory=list)
    event: trio.Event = field(default_factory=trio.Event)

    def __call__(self, what: str) -> None:
        self.seen.append(what)
        self.event.set()

    async def wait_for(self, what: str) -> None:
        while what not in self.seen:
            await self.event.wait()
            self.event = trio.Event()


@dataclass
class Running:
    port: int
    pki: PKI
    api: FakeApiserver
    stack: Any
    cert_file: str
    key_file: str
    reloads: Reloads

    def client(
        self, cert: str | None = None, *, tls_max: ssl.TLSVersion | None = None
    ) -> httpx.AsyncClient:
        ctx = ssl.create_default_context(cafile=None)
        self.pki.server_ca.configure_trust(ctx)
        if cert:
            ctx.load_cert_chain(cert)
        if tls_max is not None:
            ctx.maximum_version = tls_max
        return httpx.AsyncClient(base_url=f"https://127.0.0.1:{self.port}", verify=ctx)


PODS = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"


@asynccontextmanager
async def running(
    pki: PKI,
    *,
    auth: AuthConfig | None = None,
    serving: dict[str, Any] | None = None,
    api: FakeApiserver | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[Running]:
    api = api or FakeApiserver()
    client_ca_file = pki.tmp / "client-ca.pem"
    proxy_ca_file = pki.tmp / "proxy-ca.pem"
    pki.client_ca.cert_pem.write_to_path(str(client_ca_file))
    pki.proxy_ca.cert_pem.write_to_path(str(proxy_ca_file))
    auth = auth or AuthConfig(
        client_ca_file=str(client_ca_file),
        requestheader_client_ca_file=str(proxy_ca_file),
        requestheader_allowed_names=("front-proxy-client",),
        authentication_skip_lookup=True,
        token_review_timeout=1.0,
        authorization_timeout=1.0,
    )
    kube = httpx.AsyncClient(
        base_url="https://kube.invalid", transport=httpx.MockTransport(api.handler)
    )
    extra = {"clock": clock} if clock else {}
    stack = build_auth_stack(auth, kube, **extra)
    server_cert = pki.server_ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = str(pki.tmp / "tls.crt"), str(pki.tmp / "tls.key")
    server_cert.cert_chain_pems[0].write_to_path(cert_file)
    server_cert.private_key_pem.write_to_path(key_file)
    cfg = ServingConfig(
        bind_address="127.0.0.1",
        secure_port=0,
        cert_dir=str(pki.tmp / "certs"),
        tls_cert_file=cert_file,
        tls_private_key_file=key_file,
        client_ca_pem=stack.client_ca_pem,
        graceful_timeout=1.0,
        reload_interval=0.05,
        **(serving or {}),
    )
    reloads = Reloads()
    cfg = replace(cfg, on_tls_reload=reloads)
    stop = trio.Event()
    async with kube, trio.open_nursery() as nursery:
        await nursery.start(stack.run)

        async def serve_then_stop(*, task_status: trio.TaskStatus[int]) -> None:
            await serve(
                stack.middleware(make_app()),
                cfg,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # the auth watchers never end on their own

        port = await nursery.start(serve_then_stop)
        try:
            yield Running(port, pki, api, stack, cert_file, key_file, reloads)
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 5


def _status(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert body["kind"] == "Status"
    return body


async def test_smoke_token_user_allowed(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(tokens={"good": {"username": "jane"}}, allowed_users={"jane"})
        async with running(pki, api=api) as srv, srv.client() as c:
            r = await c.get(PODS, headers={"Authorization": "Bearer good"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["user"] == "jane"
            assert body["groups"] == ["system:authenticated"]
            assert body["leaked_headers"] == []
            assert body["tls"]["tls_version"] in (0x0303, 0x0304)


ANON_FORBIDDEN = (
    'pods.metrics.k8s.io is forbidden: User "system:anonymous" cannot list resource "pods" '
    'in API group "metrics.k8s.io" in the namespace "default"'
)


async def test_forged_identity_headers_without_cert_are_ignored(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"system:admin"})
        async with running(pki, api=api) as srv, srv.client() as c:
            r = await c.get(
                PODS,
                headers={
                    "X-Remote-User": "system:admin",
                    "X-Remote-Group": "system:masters",
                    "X-Remote-Extra-Scopes": "all",
                },
            )
            assert r.status_code == 403
            body = _status(r)
            assert body["message"] == ANON_FORBIDDEN
            assert body["reason"] == "Forbidden"
            assert body["details"] == {"group": "metrics.k8s.io", "kind": "pods"}


async def test_identity_headers_with_client_ca_cert_are_ignored(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"alice"})
        async with running(pki, api=api) as srv:
            cert = pki.client_cert(pki.client_ca, "alice", "devs")
            async with srv.client(cert) as c:
                r = await c.get(
                    PODS,
                    headers={"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"},
                )
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["user"], body["by"]) == ("alice", "x509")
            assert body["groups"] == ["devs", "system:authenticated"]
            assert body["leaked_headers"] == []


async def test_front_proxy_headers_are_honoured(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"jane"})
        async with running(pki, api=api) as srv:
            cert = pki.client_cert(pki.proxy_ca, "front-proxy-client")
            async with srv.client(cert) as c:
                r = await c.get(
                    PODS,
                    headers=[
                        ("X-Remote-User", "jane"),
                        ("X-Remote-Group", "dev"),
                        ("X-Remote-Group", "ops"),
                        ("X-Remote-Extra-Acme.com%2Fproject", "p1"),
                    ],
                )
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["user"], body["by"]) == ("jane", "request-header")
            assert body["groups"] == ["dev", "ops", "system:authenticated"]
            assert body["extra"] == {"acme.com/project": ["p1"]}
            assert body["leaked_headers"] == []
            assert api.calls == ["SubjectAccessReview"]


async def test_front_proxy_cn_not_allowed_is_401(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"system:admin"})
        async with running(pki, api=api) as srv:
            cert = pki.client_cert(pki.proxy_ca, "evil-proxy")
            async with srv.client(cert) as c:
                r = await c.get(PODS, headers={"X-Remote-User": "system:admin"})
            assert r.status_code == 401
            assert _status(r) == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Unauthorized",
                "reason": "Unauthorized",
                "code": 401,
            }
            assert api.calls == []


async def _refused(srv: Running, cert: str) -> bool:
    """True when the client certificate gets nowhere: handshake failure or 401."""
    try:
        async with srv.client(cert) as c:
            r = await c.get(PODS, headers={"X-Remote-User": "system:admin"})
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return r.status_code == 401


async def test_expired_client_cert_is_refused(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        now = datetime.datetime.now(UTC)
        api = FakeApiserver(allowed_users={"alice", "front-proxy-client", "system:admin"})
        async with running(pki, api=api) as srv:
            for ca, cn in ((pki.client_ca, "alice"), (pki.proxy_ca, "front-proxy-client")):
                cert = pki.client_cert(
                    ca,
                    cn,
                    not_before=now - datetime.timedelta(days=2),
                    not_after=now - datetime.timedelta(days=1),
                )
                assert await _refused(srv, cert)
            assert api.calls == []


async def test_not_yet_valid_client_cert_is_refused(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        now = datetime.datetime.now(UTC)
        api = FakeApiserver(allowed_users={"alice", "system:admin"})
        async with running(pki, api=api) as srv:
            cert = pki.client_cert(
                pki.client_ca,
                "alice",
                not_before=now + datetime.timedelta(days=1),
                not_after=now + datetime.timedelta(days=2),
            )
            assert await _refused(srv, cert)
            assert api.calls == []


async def test_cert_from_unknown_ca_is_refused(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"alice", "front-proxy-client", "system:admin"})
        async with running(pki, api=api) as srv:
            rogue = trustme.CA()
            assert await _refused(srv, pki.client_cert(rogue, "alice"))
            assert await _refused(srv, pki.client_cert(rogue, "front-proxy-client"))
            assert api.calls == []


async def test_duplicate_and_mixed_case_identity_headers_cannot_smuggle_a_user(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"bob", "alice"})
        async with running(pki, api=api) as srv:
            proxy = pki.client_cert(pki.proxy_ca, "front-proxy-client")
            async with srv.client(proxy) as c:
                r = await c.get(
                    PODS,
                    headers=[
                        ("X-Remote-User", "bob"),
                        ("x-remote-user", "system:admin"),
                        ("X-REMOTE-USER", "root"),
                        ("x-REMOTE-group", "g1"),
                    ],
                )
            assert r.status_code == 200, r.text
            # Go's Header.Get: the first value wins, names case-insensitive.
            assert r.json()["user"] == "bob"
            assert r.json()["groups"] == ["g1", "system:authenticated"]
            assert r.json()["leaked_headers"] == []

            alice = pki.client_cert(pki.client_ca, "alice")
            async with srv.client(alice) as c:
                r = await c.get(
                    PODS,
                    headers=[("X-Remote-User", "bob"), ("x-remote-user", "system:admin")],
                )
            assert r.status_code == 200 and r.json()["user"] == "alice"


async def test_token_rejected_by_tokenreview_is_401(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(tokens={"good": {"username": "jane"}}, allowed_users={"jane"})
        async with running(pki, api=api) as srv, srv.client() as c:
            r = await c.get(PODS, headers={"Authorization": "Bearer forged"})
            assert r.status_code == 401 and _status(r)["reason"] == "Unauthorized"
            # Even on an always-allowed path a bad credential is 401, like upstream.
            r = await c.get("/healthz", headers={"Authorization": "Bearer forged"})
            assert r.status_code == 401
            r = await c.get("/healthz")
            assert r.status_code == 200 and r.text == "ok"
            assert api.calls == ["TokenReview"]  # the rejection was cached


async def test_user_without_permission_gets_k8s_forbidden(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(tokens={"t": {"username": "jane"}})
        async with running(pki, api=api) as srv, srv.client() as c:
            h = {"Authorization": "Bearer t"}
            r = await c.get(PODS, headers=h)
            assert r.status_code == 403
            assert _status(r)["message"] == (
                'pods.metrics.k8s.io is forbidden: User "jane" cannot list resource "pods" in '
                'API group "metrics.k8s.io" in the namespace "default"'
            )
            r = await c.get("/apis/metrics.k8s.io/v1beta1/nodes/n1", headers=h)
            assert r.status_code == 403
            assert _status(r)["message"] == (
                'nodes.metrics.k8s.io "n1" is forbidden: User "jane" cannot get resource '
                '"nodes" in API group "metrics.k8s.io" at the cluster scope'
            )
            r = await c.get("/metrics", headers=h)
            assert r.status_code == 403
            assert _status(r)["message"] == ('forbidden: User "jane" cannot get path "/metrics"')


@pytest.mark.parametrize("mode", ["hang", "error"])
async def test_tokenreview_unreachable_or_slow_fails_closed(pki: PKI, mode: str) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(tokens={"good": {"username": "jane"}}, allowed_users={"jane"})
        api.mode = mode
        async with running(pki, api=api) as srv, srv.client() as c:
            start = trio.current_time()
            r = await c.get(PODS, headers={"Authorization": "Bearer good"})
            assert r.status_code == 401
            assert trio.current_time() - start < 3.0  # bounded by token_review_timeout=1s
            # The failure was not cached: once the backend is back, the token works.
            api.mode = "ok"
            r = await c.get(PODS, headers={"Authorization": "Bearer good"})
            assert r.status_code == 200


@pytest.mark.parametrize("mode", ["hang", "error"])
async def test_subjectaccessreview_unreachable_or_slow_fails_closed(pki: PKI, mode: str) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(tokens={"good": {"username": "jane"}}, allowed_users={"jane"})
        async with running(pki, api=api) as srv, srv.client() as c:
            h = {"Authorization": "Bearer good"}
            api.mode = "ok"
            r = await c.get("/apis/metrics.k8s.io/v1beta1/nodes", headers=h)
            assert r.status_code in (200, 404)  # allowed (no such route in the tiny app)
            api.mode = mode
            for _ in range(2):
                start = trio.current_time()
                r = await c.get(PODS, headers=h)
                assert r.status_code == 500
                assert r.headers["content-type"].startswith("text/plain")
                assert r.text.startswith(f'Internal Server Error: "{PODS}": ')
                assert "subjectaccessreview webhook error" in r.text
                assert trio.current_time() - start < 3.0
            assert api.calls.count("SubjectAccessReview") == 3  # failures were never cached


async def test_tls13_minimum_refuses_tls12_client(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        async with running(pki, serving={"tls_min_version": "VersionTLS13"}) as srv:
            async with srv.client(tls_max=ssl.TLSVersion.TLSv1_2) as c:
                with pytest.raises(httpx.ConnectError):
                    await c.get("/healthz")
            async with srv.client() as c:
                r = await c.get("/healthz")
                assert r.status_code == 200


async def test_weak_cipher_list_is_rejected_at_start(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        cfg = ServingConfig(
            bind_address="127.0.0.1",
            secure_port=0,
            cert_dir=str(pki.tmp / "certs"),
            tls_cipher_suites=(
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
            ),
        )
        stop = trio.Event()
        with pytest.raises(ServingError, match="TLS_RSA_WITH_3DES_EDE_CBC_SHA"):
            await serve(make_app(), cfg, shutdown_trigger=stop.wait)
        with pytest.raises(ServingError, match="TLS_MADE_UP"):
            await serve(
                make_app(),
                replace(cfg, tls_cipher_suites=("TLS_MADE_UP",)),
                shutdown_trigger=stop.wait,
            )


async def test_rotated_client_ca_applies_to_new_connections(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"alice", "carol"})
        auth = AuthConfig(
            client_ca_file=str(pki.tmp / "client-ca.pem"),
            requestheader_client_ca_file=str(pki.tmp / "proxy-ca.pem"),
            authentication_skip_lookup=True,
            ca_file_poll_interval=0.05,
        )
        async with running(pki, api=api, auth=auth) as srv:
            old_cert = pki.client_cert(pki.client_ca, "alice")
            async with srv.client(old_cert) as c:
                assert (await c.get(PODS)).json()["user"] == "alice"
            new_ca = trustme.CA()
            new_cert = pki.client_cert(new_ca, "carol")
            assert await _refused_or_anonymous(srv, new_cert)
            gen = srv.stack.sources.snapshot().generation
            tmp = pki.tmp / "client-ca.pem.new"
            new_ca.cert_pem.write_to_path(str(tmp))
            os.replace(tmp, pki.tmp / "client-ca.pem")
            await srv.stack.sources.wait_changed(gen)

            await srv.reloads.wait_for("client CA bundle")
            async with srv.client(new_cert) as c:
                r = await c.get(PODS)
            assert r.status_code == 200 and r.json()["user"] == "carol"
            assert await _refused(srv, old_cert)


async def _refused_or_anonymous(srv: Running, cert: str) -> bool:
    try:
        async with srv.client(cert) as c:
            r = await c.get(PODS)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return r.status_code in (401, 403)


async def test_serving_cert_reload_keeps_listener_and_connections(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver()
        async with running(pki, api=api) as srv, srv.client() as old_client:
            assert (await old_client.get("/healthz")).status_code == 200
            new_server_ca = trustme.CA()
            cert = new_server_ca.issue_cert("127.0.0.1", "localhost")
            key_tmp = srv.key_file + ".new"
            crt_tmp = srv.cert_file + ".new"
            cert.private_key_pem.write_to_path(key_tmp)
            cert.cert_chain_pems[0].write_to_path(crt_tmp)
            os.replace(key_tmp, srv.key_file)
            os.replace(crt_tmp, srv.cert_file)

            ctx = ssl.create_default_context()
            new_server_ca.configure_trust(ctx)

            await srv.reloads.wait_for("serving certificate")
            async with httpx.AsyncClient(verify=ctx) as c:
                r = await c.get(f"https://127.0.0.1:{srv.port}/healthz")
            assert r.status_code == 200
            # The connection opened before the rotation is still served.
            assert (await old_client.get("/healthz")).status_code == 200
            # And a client trusting only the old CA can no longer connect afresh.
            async with srv.client() as fresh_old:
                with pytest.raises(httpx.ConnectError):
                    await fresh_old.get("/healthz")


async def test_http2_carries_the_tls_extension(pki: PKI) -> None:
    with trio.fail_after(DEADLINE):
        api = FakeApiserver(allowed_users={"alice"})
        async with running(pki, api=api) as srv:
            ctx = ssl.create_default_context()
            pki.server_ca.configure_trust(ctx)
            ctx.load_cert_chain(pki.client_cert(pki.client_ca, "alice"))
            async with httpx.AsyncClient(verify=ctx, http2=True) as c:
                r = await c.get(f"https://127.0.0.1:{srv.port}{PODS}")
            assert r.http_version == "HTTP/2"
            assert r.status_code == 200 and r.json()["user"] == "alice"


async def test_through_the_simulated_apiserver_and_aggregator(tmp_path: Path) -> None:
    """ConfigMap lookup, TokenReview, SubjectAccessReview and the front proxy, all real HTTP."""
    from metrics_server.simulator import ClusterConfig, open_cluster

    with trio.fail_after(40):
        async with open_cluster(ClusterConfig(nodes=1, pods_per_node=1)) as cluster:
            ca = ssl.create_default_context(cafile=str(cluster.ca_file))
            kube = httpx.AsyncClient(
                base_url=cluster.apiserver_url,
                verify=ca,
                headers={"Authorization": f"Bearer {cluster.metrics_server_token}"},
            )
            # Nothing from flags: both CAs and the request-header settings come from the
            # cluster's extension-apiserver-authentication ConfigMap.
            stack = build_auth_stack(AuthConfig(), kube)
            cfg = ServingConfig(
                bind_address="127.0.0.1",
                secure_port=0,
                tls_cert_file=str(cluster.metrics_server_cert_file),
                tls_private_key_file=str(cluster.metrics_server_key_file),
                client_ca_pem=stack.client_ca_pem,
                graceful_timeout=1.0,
            )
            stop = trio.Event()
            async with kube, trio.open_nursery() as nursery:
                await nursery.start(stack.run)
                rh = stack.sources.snapshot().request_header
                assert rh is not None and rh.allowed_names == ("front-proxy-client",)

                async def serve_then_stop(*, task_status: trio.TaskStatus[int]) -> None:
                    await serve(
                        stack.middleware(make_app()),
                        cfg,
                        shutdown_trigger=stop.wait,
                        task_status=task_status,
                    )
                    nursery.cancel_scope.cancel()

                port = await nursery.start(serve_then_stop)
                ours = f"https://127.0.0.1:{port}"
                cluster.set_metrics_server(ours)
                try:
                    # Through kube-apiserver's aggregator: front-proxy cert + X-Remote-*.
                    async with httpx.AsyncClient(
                        base_url=cluster.apiserver_url,
                        verify=ca,
                        headers={
                            "Authorization": f"Bearer {cluster.viewer_token}",
                            "X-Remote-User": "system:admin",  # stripped by the aggregator
                        },
                    ) as via:
                        r = await via.get(PODS)
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert (body["user"], body["by"]) == ("viewer", "request-header")
                    assert "system:authenticated" in body["groups"]
                    assert body["leaked_headers"] == []

                    async with httpx.AsyncClient(base_url=ours, verify=ca) as direct:
                        r = await direct.get(
                            PODS, headers={"Authorization": f"Bearer {cluster.viewer_token}"}
                        )
                        assert r.status_code == 200 and r.json()["by"] == "token"
                        r = await direct.get(
                            PODS, headers={"Authorization": f"Bearer {cluster.nobody_token}"}
                        )
                        assert r.status_code == 403
                        assert _status(r)["message"].startswith(
                            'pods.metrics.k8s.io is forbidden: User "nobody" cannot list '
                            'resource "pods" in API group "metrics.k8s.io" in the namespace '
                            '"default"'
                        )
                        r = await direct.get(PODS, headers={"Authorization": "Bearer nope"})
                        assert r.status_code == 401
                        r = await direct.get(PODS, headers={"X-Remote-User": "system:admin"})
                        assert r.status_code == 403
                        assert 'User "system:anonymous"' in _status(r)["message"]
                finally:
                    cluster.set_metrics_server(None)
                    stop.set()
                    nursery.cancel_scope.deadline = trio.current_time() + 5
