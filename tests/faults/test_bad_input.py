"""Bad client input: every answer is a 4xx — a Kubernetes Status once the request reaches the
API, a bare 4xx or a closed connection when HTTP itself is broken — never a 5xx, a traceback
or a hang; odd paths let nobody in; and slow or idle clients cannot starve the server.

Each test starts its own small cluster and daemon (about a second); cases are checked in a
loop and every failing case is reported at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from metrics_server import daemon as daemon_mod
from metrics_server.daemon import Daemon
from metrics_server.simulator import Cluster, ClusterConfig, open_cluster
from tests.faults._observe import API_DEADLINE, PREFIX
from tests.faults._raw import RawAnswer, exchange, open_tls, parse, request
from tests.harness import direct_client, running_daemon

TEST_DEADLINE = 30


@dataclass(slots=True)
class Server:
    cluster: Cluster
    daemon: Daemon
    client: httpx.AsyncClient
    ctx: ssl.SSLContext

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def token(self) -> str:
        return self.cluster.admin_token

    async def raw(self, data: bytes) -> RawAnswer:
        with trio.fail_after(5):
            return await exchange(self.port, self.ctx, data)

    async def still_answers(self) -> None:
        with trio.fail_after(API_DEADLINE):
            r = await self.client.get(f"{PREFIX}/nodes")
        assert r.status_code == 200, r.text


@asynccontextmanager
async def open_server(tmp_path: Path) -> AsyncIterator[Server]:
    config = ClusterConfig(nodes=2, pods_per_node=3, kubelet_refresh=0.5)
    # Bounds start-up and teardown too; each test has its own, shorter deadline inside.
    with trio.fail_after(TEST_DEADLINE * 2):
        async with (
            open_cluster(config) as cluster,
            running_daemon(cluster, tmp_path) as d,
            direct_client(cluster, d) as client,
        ):
            ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
            yield Server(cluster, d, client, ctx)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with open_server(tmp_path) as s:
        yield s


def serving_with(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Have the daemon serve with these ServingConfig fields changed (no flag sets them)."""
    built: Callable[..., Any] = daemon_mod.serving_config

    def changed(*args: Any) -> Any:
        return dataclasses.replace(built(*args), **changes)

    monkeypatch.setattr(daemon_mod, "serving_config", changed)


async def seconds_until_closed(stream: trio.abc.ReceiveStream) -> float:
    """How long until the server closes `stream` (whatever it sends first is dropped)."""
    began = trio.current_time()
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass  # a reset is a close too
    return trio.current_time() - began


async def h2_answer(server: Server, path: str) -> tuple[trio.SSLStream[trio.SocketStream], int]:
    """One GET over a new HTTP/2 connection, answered; the connection is left open."""
    ctx = ssl.create_default_context(cafile=str(server.cluster.ca_file))
    ctx.set_alpn_protocols(["h2"])
    stream = await open_tls(server.port, ctx)
    try:
        assert stream.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        headers = [
            (":method", "GET"), (":scheme", "https"), (":authority", "127.0.0.1"),
            (":path", path), ("authorization", f"Bearer {server.token}"),
        ]
        conn.send_headers(1, headers, end_stream=True)
        await stream.send_all(conn.data_to_send())
        status = 0
        while True:
            data = await stream.receive_some(65536)
            assert data, "closed before the answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamEnded):
                    await stream.send_all(conn.data_to_send())
                    return stream, status
            await stream.send_all(conn.data_to_send())
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def answer_on(stream: trio.abc.Stream, data: bytes) -> RawAnswer:
    """Send one `request()` (Connection: close) on an open stream, read until the close."""
    await stream.send_all(data)
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return parse(received)


def status_problem(status: int, body: bytes, allowed: tuple[int, ...] = ()) -> str | None:
    """Why an answer is not a proper Kubernetes Status 4xx (or one of `allowed`), or None."""
    if not (400 <= status < 500 or status in allowed):
        return f"status {status}"
    if b"Traceback" in body:
        return "traceback in the body"
    if status in allowed:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:120]!r}"
    if obj.get("kind") != "Status" or obj.get("status") != "Failure" or obj.get("code") != status:
        return f"not a Failure Status with code {status}: {obj}"
    if not obj.get("message") or not obj.get("reason"):
        return f"Status without message or reason: {obj}"
    return None


def protocol_problem(answer: RawAnswer) -> str | None:
    """Broken HTTP: a bare 4xx or a closed connection is fine; a 5xx or a 2xx is not."""
    if answer.status is None:
        return None
    if 400 <= answer.status < 500 and b"Traceback" not in answer.body:
        return None
    return f"status {answer.status}: {answer.body[:200]!r}"


def report(problems: dict[str, str]) -> None:
    assert not problems, "\n".join(f"{case}: {why}" for case, why in problems.items())


async def test_malformed_and_gigantic_selectors_are_400_status(server: Server) -> None:
    selectors = {
        "labelSelector": [
            "app in (x", "a=(", "!!a", "a b c", "=", "a==b==c", "a\x00b", "ü=1", "k" * 300,
            "a=" + "v" * 64, "(" * 5000, "a in (" + "x," * 5000,
            ",".join(f"k{i}=v" for i in range(3000)), "a" * 20_000, "a>b",
            "a<99999999999999999999",
            "%%%", "a=b\nc=d",
        ],
        "fieldSelector": [
            "spec.nodeName=x", "metadata.name", "metadata.name=a=b", "metadata.name=\\",
            "metadata.name=" + "x" * 20_000, "metadata.labels.app=x", "=", ",,,=",
        ],
    }
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for path in (f"{PREFIX}/nodes", f"{PREFIX}/pods", f"{PREFIX}/namespaces/default/pods"):
            for param, values in selectors.items():
                for value in values:
                    case = f"{path}?{param}={value[:40]!r}"
                    with trio.fail_after(API_DEADLINE):
                        r = await server.client.get(path, params={param: value})
                    if r.status_code != 400:
                        problems[case] = f"status {r.status_code}: {r.text[:200]}"
                    elif (why := status_problem(r.status_code, r.content)) is not None:
                        problems[case] = why
                    elif r.json()["reason"] != "BadRequest":
                        problems[case] = f"reason {r.json()['reason']}"
        await server.still_answers()
    report(problems)


async def test_oversized_requests_are_refused_without_harm(server: Server) -> None:
    token = server.token
    cases = {
        "100 KB request line": request(f"{PREFIX}/nodes/" + "x" * 100_000, token=token),
        "1 MB header": request(
            f"{PREFIX}/nodes", token=token, headers="X-Big: " + "a" * (1 << 20) + "\r\n"
        ),
        "20000 headers": request(
            f"{PREFIX}/nodes",
            token=token,
            headers="".join(f"X-H{i}: v\r\n" for i in range(20_000)),
        ),
        "10 MB announced, none sent": request(
            f"{PREFIX}/nodes", "POST", token=token, headers="Content-Length: 10000000\r\n"
        ),
        "2 MB body on a GET": request(
            f"{PREFIX}/nodes",
            token=token,
            headers="Content-Length: 2000000\r\n",
            body=b"x" * 2_000_000,
        ),
        "5 MB with Expect: 100-continue": request(
            f"{PREFIX}/nodes", "POST", token=token,
            headers="Expect: 100-continue\r\nContent-Length: 5000000\r\n",
        ),
    }
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for case, data in cases.items():
            answer = await server.raw(data)
            if (why := protocol_problem(answer)) is not None:
                problems[case] = why
            await server.still_answers()
    report(problems)


async def test_broken_http_is_a_bare_4xx_or_a_closed_connection(server: Server) -> None:
    token = server.token
    cases = {
        "invalid UTF-8 in the path": request(
            f"{PREFIX}/nodes/".encode() + b"\xff\xfe", token=token
        ),
        "not HTTP at all": b"\x16\x03\x01 hello\r\n\r\n",
        "bad Content-Length": request(
            f"{PREFIX}/nodes", token=token, headers="Content-Length: abc\r\n"
        ),
        "two Content-Lengths": request(
            f"{PREFIX}/nodes", token=token, headers="Content-Length: 1\r\nContent-Length: 2\r\n"
        ),
        "header without colon": request(f"{PREFIX}/nodes", token=token, headers="NoColon\r\n"),
        "request line only": f"GET {PREFIX}/nodes\r\n\r\n".encode(),
        "bad chunk size": request(
            f"{PREFIX}/nodes", "POST", token=token, headers="Transfer-Encoding: chunked\r\n",
            body=b"zz\r\nhello\r\n0\r\n\r\n",
        ),
    }
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for case, data in cases.items():
            answer = await server.raw(data)
            if (why := protocol_problem(answer)) is not None:
                problems[case] = why
        await server.still_answers()
    report(problems)


ODD_NAMES = [
    "..", ".", "%2E%2E", "a%2Fb", "%2F", quote("ünïcode-€"), "%FF%FE", "x" * 300, "%00", "a%20b",
    quote("<script>alert(1)</script>"), "*", "a;b", "%25", "~", quote("名前"),
]


async def test_odd_names_are_404_status(server: Server) -> None:
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for name in ODD_NAMES:
            for path in (f"{PREFIX}/nodes/{name}", f"{PREFIX}/namespaces/default/pods/{name}"):
                answer = await server.raw(request(path, token=server.token))
                if answer.status != 404:
                    problems[path[:90]] = f"status {answer.status}: {answer.body[:200]!r}"
                elif (why := status_problem(answer.status, answer.body)) is not None:
                    problems[path[:90]] = why
        await server.still_answers()
    report(problems)


async def test_invalid_namespaces_list_nothing_and_get_404(server: Server) -> None:
    """As kube-apiserver: namespaces in the path are not validated, so a list in a namespace
    that cannot exist is empty, and a get there is NotFound."""
    namespaces = ["UPPER", "-bad-", "n" * 300, "..", quote("ü"), "%00", "a%20b", "%FF"]
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for ns in namespaces:
            listed = await server.raw(request(f"{PREFIX}/namespaces/{ns}/pods", token=server.token))
            if listed.status == 200:
                body = listed.json()
                if body.get("kind") != "PodMetricsList" or body.get("items") != []:
                    problems[f"list {ns[:40]}"] = f"200 but {listed.body[:200]!r}"
            elif listed.status is None or status_problem(listed.status, listed.body):
                problems[f"list {ns[:40]}"] = f"{listed.status}: {listed.body[:200]!r}"
            got = await server.raw(
                request(f"{PREFIX}/namespaces/{ns}/pods/some-pod", token=server.token)
            )
            if got.status != 404 or status_problem(got.status, got.body):
                problems[f"get {ns[:40]}"] = f"{got.status}: {got.body[:200]!r}"
        # A namespace with an encoded slash is a path the API does not have.
        slash = await server.raw(request(f"{PREFIX}/namespaces/a%2Fb/pods", token=server.token))
        if slash.status != 404 or status_problem(slash.status, slash.body):
            problems["a%2Fb"] = f"{slash.status}: {slash.body[:200]!r}"
    report(problems)


METHODS = ["POST", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT", "PROPFIND", "MKCOL", "FOO"]
ROUTES = [
    f"{PREFIX}/nodes", f"{PREFIX}/nodes/node-0", f"{PREFIX}/pods",
    f"{PREFIX}/namespaces/default/pods", f"{PREFIX}/namespaces/default/pods/x", PREFIX,
    "/apis", "/readyz", "/livez", "/healthz", "/metrics",
]


async def test_every_other_method_is_405_status(server: Server) -> None:
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for method in METHODS:
            for path in ROUTES:
                r = await server.client.request(method, path, content=b"{}")
                if r.status_code != 405 or status_problem(r.status_code, r.content):
                    problems[f"{method} {path}"] = f"{r.status_code}: {r.text[:160]}"
        # HEAD is GET without the body.
        for path in ROUTES:
            get, head = await server.client.get(path), await server.client.head(path)
            if head.status_code != get.status_code or head.content:
                problems[f"HEAD {path}"] = f"{head.status_code} vs GET {get.status_code}"
    report(problems)


async def test_connect_opens_no_tunnel(server: Server) -> None:
    """CONNECT in authority form (what a proxy client sends) is a Status 4xx like any other
    path we do not have; the origin form is the 405 above. Nobody gets a 200 and a tunnel."""
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for who, token in (("admin", server.token), ("anonymous", None)):
            for target in ("127.0.0.1:443", f"127.0.0.1:{server.port}", "kubernetes:443"):
                answer = await server.raw(request(target, "CONNECT", token=token))
                if answer.status is None:
                    problems[f"{who} {target}"] = f"no answer: {answer.error}"
                elif (why := status_problem(answer.status, answer.body)) is not None:
                    problems[f"{who} {target}"] = why
        await server.still_answers()
    report(problems)


REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}
UNKNOWN_PATHS = [
    "/foo", "/foo/bar/baz", "/apis/foo", "/apis/foo/v1", "/apis/metrics.k8s.io/v1",
    "/apis/metrics.k8s.io/v2", "/apis/metrics.k8s.io/v1beta2/nodes", "/api", "/api/v1",
    "/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces/default/pods",
    f"{PREFIX}/foo", f"{PREFIX}/namespaces/default/foo", f"{PREFIX}/nodes/node-0/x",
    f"{PREFIX}/namespaces", "/openapi/v4", "/version/x", "/metrics/x",
]
# Health checks that do not exist: a 404, in text like the health answers themselves (and
# like upstream, whose mux answers them "404 page not found").
UNKNOWN_CHECKS = ["/healthz/nope", "/readyz/nope", "/livez/nope"]


async def test_unknown_paths_are_404_status(server: Server) -> None:
    """A path we do not serve is a NotFound Status for whoever may ask for it; users who may
    not (anonymous, or a user without rights on a resource path) get Forbidden first, as
    kube-apiserver authorizes before routing. Never a 200, a 5xx or a non-Status body."""
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for who, token in (
            ("admin", server.token),
            ("nobody", server.cluster.nobody_token),
            ("anonymous", None),
        ):
            expected = (404,) if who == "admin" else (403, 404)
            for path in UNKNOWN_PATHS + UNKNOWN_CHECKS:
                answer = await server.raw(request(path, token=token))
                case = f"{who} {path}"
                text_ok = (404,) if path in UNKNOWN_CHECKS else ()
                if answer.status not in expected:
                    problems[case] = f"status {answer.status}: {answer.body[:160]!r}"
                elif (why := status_problem(answer.status, answer.body, text_ok)) is not None:
                    problems[case] = why
                elif answer.status in text_ok:
                    continue
                elif (reason := answer.json()["reason"]) != REASONS[answer.status]:
                    problems[case] = f"reason {reason} with code {answer.status}"
    report(problems)


async def test_options_is_405_status(server: Server) -> None:
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for path in ROUTES:
            r = await server.client.options(path)
            if r.status_code != 405 or status_problem(r.status_code, r.content):
                problems[f"OPTIONS {path}"] = f"{r.status_code} {r.headers.get('content-type')}"
    report(problems)


PATH_TRICKS = [
    "//apis/metrics.k8s.io/v1beta1/pods", "///apis/metrics.k8s.io/v1beta1/nodes",
    f"{PREFIX}/pods/", f"{PREFIX}//pods", "/apis/metrics.k8s.io//v1beta1/pods",
    f"{PREFIX}/%70ods", f"{PREFIX}/./pods", f"{PREFIX}/x/../pods", f"{PREFIX}/pods%00",
    "/%61pis/metrics.k8s.io/v1beta1/pods", "/apis/metrics%2Ek8s.io/v1beta1/pods",
    f"{PREFIX}/nodes/node-0/", f"{PREFIX}/namespaces/default/pods/",
    f"/healthz/../{PREFIX}/pods", f"/readyz/%2e%2e{PREFIX}/pods", f"/livez/..%2F..{PREFIX}/pods",
    f"{PREFIX}/pods;", f"{PREFIX}/pods%2F", f"{PREFIX}/pods?watch=0&%00", "/metrics/",
    "//metrics", f"https://127.0.0.1{PREFIX}/pods", f"{PREFIX}/namespaces/default/pods/%2e%2e",
]


async def test_path_tricks_let_nobody_in(server: Server) -> None:
    """An authenticated user without metrics rights (who may read /apis/* discovery paths)
    and an anonymous one: no spelling of a metrics path gets either of them a 200."""
    problems = {}
    with trio.fail_after(TEST_DEADLINE):
        for who, token in (("nobody", server.cluster.nobody_token), ("anonymous", None)):
            for target in PATH_TRICKS:
                answer = await server.raw(request(target, token=token))
                if answer.status is None or answer.status < 400 or answer.status >= 500:
                    problems[f"{who} {target}"] = f"{answer.status}: {answer.body[:160]!r}"
                elif b"Metrics" in answer.body and b'"kind":"Status"' not in answer.body:
                    problems[f"{who} {target}"] = f"metrics in the body: {answer.body[:160]!r}"
    report(problems)


async def test_idle_and_half_sent_connections_do_not_starve_the_server(server: Server) -> None:
    """Hundreds of idle TLS connections, half-sent requests and unfinished handshakes (a
    slowloris on each layer) are held open; normal requests still answer within the API
    deadline."""
    port, ctx = server.port, server.ctx
    held: list[trio.abc.AsyncResource] = []
    half = f"GET {PREFIX}/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
    with trio.fail_after(TEST_DEADLINE):
        try:
            for _ in range(200):  # TLS up, then silence
                held.append(await open_tls(port, ctx))
            for _ in range(100):  # a request head that never ends
                stream = await open_tls(port, ctx)
                held.append(stream)
                await stream.send_all(half)
            for _ in range(100):  # TCP only, no TLS handshake
                held.append(await trio.open_tcp_stream("127.0.0.1", port))
            for _ in range(50):  # a body that never comes
                stream = await open_tls(port, ctx)
                held.append(stream)
                await stream.send_all(
                    request(f"{PREFIX}/nodes", "POST", headers="Content-Length: 1000\r\n")
                )
            took = []
            for _ in range(20):
                began = trio.current_time()
                await server.still_answers()
                took.append(trio.current_time() - began)
            async with direct_client(server.cluster, server.daemon) as fresh:
                began = trio.current_time()
                with trio.fail_after(API_DEADLINE):
                    assert (await fresh.get("/readyz")).status_code == 200
                took.append(trio.current_time() - began)
        finally:
            for resource in held:
                await trio.aclose_forcefully(resource)
    assert max(took) < API_DEADLINE, took


KEEP_ALIVE, READ_TIMEOUT, HANDSHAKE = 1.0, 3, 1.0


async def test_idle_and_half_sent_connections_are_closed_by_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With short timeouts the server itself ends every kind of stalled connection: idle ones,
    before or after an answer (HTTP/1.1 and HTTP/2), heads that never end (trickling does not
    extend the deadline: keep-alive runs from the last answer, whatever arrives), handshakes
    never started; each after its own timeout, not before. A body that never comes is
    answered and closed at once (the request cannot complete)."""
    serving_with(
        monkeypatch,
        keep_alive_timeout=KEEP_ALIVE,
        read_timeout=READ_TIMEOUT,
        handshake_timeout=HANDSHAKE,
    )
    half = f"GET {PREFIX}/nodes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
    took: dict[str, float] = {}
    async with open_server(tmp_path) as server:
        port, ctx = server.port, server.ctx
        with trio.fail_after(TEST_DEADLINE):
            idle = await open_tls(port, ctx)
            after_answer = await open_tls(port, ctx)
            head = await open_tls(port, ctx)
            await head.send_all(half)
            trickle = await open_tls(port, ctx)
            await trickle.send_all(half)
            no_tls = await trio.open_tcp_stream("127.0.0.1", port)
            body = await open_tls(port, ctx)
            await body.send_all(
                request(f"{PREFIX}/nodes", "POST", headers="Content-Length: 1000\r\n")
                .replace(b"Connection: close\r\n", b"")
            )
            await after_answer.send_all(
                request(f"{PREFIX}/nodes", token=server.token).replace(
                    b"Connection: close", b"Connection: keep-alive"
                )
            )
            over_h2, status = await h2_answer(server, f"{PREFIX}/nodes")
            assert status == 200
            streams: dict[str, trio.abc.Stream] = {
                "idle after the handshake": idle,
                "idle after an answer": after_answer,
                "idle after an answer, HTTP/2": over_h2,
                "a head that never ends": head,
                "a head trickled byte by byte": trickle,
                "no TLS handshake": no_tls,
                "a body that never comes": body,
            }

            async def watch(case: str, stream: trio.abc.Stream) -> None:
                with trio.move_on_after(READ_TIMEOUT + 2):
                    took[case] = await seconds_until_closed(stream)

            async def keep_trickling() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while True:
                        await trio.sleep(0.2)
                        await trickle.send_all(b"x")

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_trickling)
                    async with trio.open_nursery() as watchers:
                        for case, stream in streams.items():
                            watchers.start_soon(watch, case, stream)
                    nursery.cancel_scope.cancel()
            finally:
                for stream in streams.values():
                    await trio.aclose_forcefully(stream)
            await server.still_answers()
    never = [case for case in streams if case not in took]
    assert not never, f"still open after {READ_TIMEOUT + 2}s: {never}; closed: {took}"
    del took["a body that never comes"]
    # Keep-alive (from the last answer) and the handshake timeout close these, well before
    # the read timeout would: that one is only the backstop.
    wrong = {case: t for case, t in took.items() if not KEEP_ALIVE * 0.8 < t < READ_TIMEOUT * 0.9}
    assert not wrong, f"not closed between {KEEP_ALIVE} and {READ_TIMEOUT}s: {wrong}"


async def test_connections_beyond_the_cap_are_closed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the connection cap a new connection is closed at once (not queued, not left to the
    handshake timeout), while connections already open keep being served; a freed slot is
    usable at once."""
    cap = 6
    serving_with(monkeypatch, max_connections=cap)
    held: list[trio.abc.AsyncResource] = []
    async with open_server(tmp_path) as server:
        port, ctx = server.port, server.ctx
        with trio.fail_after(TEST_DEADLINE):
            try:
                existing = await open_tls(port, ctx)
                held.append(existing)
                refusals: list[float] = []
                while len(refusals) < 5 and len(held) <= cap:
                    began = trio.current_time()
                    try:
                        held.append(await open_tls(port, ctx))
                    except (trio.BrokenResourceError, ssl.SSLError):
                        refusals.append(trio.current_time() - began)
                # Other clients (the aggregator) may hold a slot too, so only a bound.
                assert 2 <= len(held) <= cap, len(held)
                assert len(refusals) == 5, f"{len(held)} connections open, cap {cap}"
                assert max(refusals) < 1.0, refusals  # handshake_timeout would be 10 s
                answer = await answer_on(existing, request(f"{PREFIX}/nodes", token=server.token))
                assert answer.status == 200, answer
                # Free a slot (the one just answered is closed too): a new client gets in.
                await trio.aclose_forcefully(held.pop())
                while True:
                    try:
                        fresh = await server.raw(request(f"{PREFIX}/nodes", token=server.token))
                    except (trio.BrokenResourceError, ssl.SSLError):
                        await trio.sleep(0.05)  # the server has not seen the close yet
                        continue
                    break
                assert fresh.status == 200, fresh
            finally:
                for resource in held:
                    await trio.aclose_forcefully(resource)
