"""What this server says for each known failure mode (SPEC §9), rendered by its own code.

docs/install.md's troubleshooting section quotes log lines and `/readyz?verbose` lines;
tests/deploy/test_docs.py renders the same situations here and checks every quoted line
against what the code produces, so the documentation cannot drift from the server.

Nothing is paraphrased: the scrape manager, the kubelet transport's `scrape` (deadline, HTTP
status handling, error mapping), the start-up report, the health checks, the node/pod watch
and the auth ConfigMap lookup are the real ones. Only the network is replaced: the kubelets
and the kube-apiserver are `httpx.MockTransport` handlers, the TLS failures are real OpenSSL
verification errors from in-memory handshakes, the connection-refused text is a real
connection attempt's, and a trio `MockClock` makes the 10 s kubelet timeout instant.

`python -m tests.deploy.failure_texts` prints every rendered text (to paste into the docs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import inspect
import ipaddress
import json
import logging
import re
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metrics_server import __main__ as main_mod
from metrics_server import daemon as daemon_mod
from metrics_server.auth.errors import AuthError
from metrics_server.auth.stack import build_auth_stack
from metrics_server.cli import KubeletOptions, Options, parse_options
from metrics_server.daemon import Daemon
from metrics_server.kube.cache import NodeCache, PodCache
from metrics_server.kube.watch import WatchSpec, run_watch
from metrics_server.logs import KlogFormatter, log_kv
from metrics_server.models import NodeInfo
from metrics_server.scraper.kubelet import KubeletTransport
from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings
from metrics_server.storage.store import MetricsStore

# The flags of the shipped manifests (tests/deploy/expectations.MANIFEST_ARGS) that matter here.
ARGS = [
    "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
    "--kubelet-use-node-status-port",
    "--metric-resolution=15s",
]
NODES = ("node-1", "node-2", "node-3")
IPS = {"node-1": "10.0.1.11", "node-2": "10.0.1.12", "node-3": "10.0.1.13"}
KUBELET_PORT = 10250
SA_USER = "system:serviceaccount:kube-system:metrics-server"
KUBELET_403 = f"Forbidden (user={SA_USER}, verb=get, resource=nodes, subresource=metrics)"

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]

# klog's text header: level letter, date, time, pid, file:line.
LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ([\w.]+):\d+\] (.*)$")
VARYING = re.compile(r' (retryIn|downFor|objects)=("[^"]*"|\S+)')
"""Log keys whose values change from run to run (jitter, timing): compared without them."""


def normalize_log(line: str) -> tuple[str, str, str] | None:
    """(level letter, file, message) of a klog text line, varying values removed."""
    m = LOG_LINE.match(line.strip())
    if m is None:
        return None
    return m.group(1), m.group(2), VARYING.sub(r" \1=…", m.group(3))


@dataclass
class Rendered:
    """One situation: the log lines (klog text) and the health endpoints' verbose bodies."""

    logs: list[str] = field(default_factory=list)
    readyz: str = ""
    livez: str = ""

    def failed_checks(self) -> list[str]:
        """The `[-]name failed: reason` lines of readyz and livez."""
        return [
            line
            for body in (self.readyz, self.livez)
            for line in body.splitlines()
            if line.startswith("[-]")
        ]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(KlogFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:  # what -v=0 (the manifests) shows
            self.lines.append(self.format(record))


class _capture_logs:
    def __enter__(self) -> _Capture:
        self.handler = _Capture()
        self.logger = logging.getLogger("metrics_server")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


# -- real TLS verification errors -----------------------------------------------------


def _handshake_error(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str
) -> ssl.SSLCertVerificationError:
    """Run a TLS handshake in memory; return the client's verification error."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=host)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            return exc
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        with contextlib.suppress(ssl.SSLError):  # the server's half fails once the client's does
            server.do_handshake()
        c_in.write(s_out.read())
    raise AssertionError("the handshake did not fail")


def _self_signed(name: str, ip: str) -> tuple[bytes, bytes]:
    """A certificate like the kubelet's own (no serverTLSBootstrap): self-signed, name and IP."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@1700000000")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@functools.cache
def tls_errors() -> dict[str, dict[str, ssl.SSLCertVerificationError]]:
    """{case: {node: error}} for certificates without IP SAN, from another CA, self-signed."""
    cluster_ca, other_ca = trustme.CA(), trustme.CA()
    client = ssl.create_default_context()
    cluster_ca.configure_trust(client)
    out: dict[str, dict[str, ssl.SSLCertVerificationError]] = {
        "no-ip-san": {},
        "other-ca": {},
        "self-signed": {},
    }
    for node in NODES:
        ip = IPS[node]
        for case, errors in out.items():
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            if case == "no-ip-san":  # signed by the cluster CA, DNS name only
                cluster_ca.issue_cert(node).configure_cert(server)
            elif case == "other-ca":
                other_ca.issue_cert(node, ip).configure_cert(server)
            else:
                cert_pem, key_pem = _self_signed(node, ip)
                with tempfile.TemporaryDirectory() as tmp:
                    cert, key = f"{tmp}/tls.crt", f"{tmp}/tls.key"
                    for path, data in ((cert, cert_pem), (key, key_pem)):
                        with open(path, "wb") as f:
                            f.write(data)
                    server.load_cert_chain(cert, key)
            errors[node] = _handshake_error(server, client, ip)
    return out


@functools.cache
def connection_refused_text() -> str:
    """What httpx (trio backend) says when nothing listens, with the node's address put in."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    text = ""

    async def attempt() -> None:
        nonlocal text
        async with httpx.AsyncClient() as client:
            try:
                await client.get(f"https://127.0.0.1:{port}/metrics/resource")
            except httpx.ConnectError as exc:
                text = str(exc)

    trio.run(attempt)
    assert text, "connecting to a closed port did not fail"
    return text.replace(f"127.0.0.1:{port}", "{address}")


# -- kubelets ---------------------------------------------------------------------------


def _node(request: httpx.Request) -> str:
    host = request.url.host
    return next(n for n, ip in IPS.items() if ip == host)


def _streamed(code: int, text: str) -> httpx.Response:
    """A response read from the wire (as the transport's stream=True sees it)."""
    return httpx.Response(code, stream=httpx.ByteStream(text.encode()))


def healthy() -> Handler:
    calls: dict[str, int] = {}

    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.01)
        node = _node(request)
        calls[node] = calls.get(node, 0) + 1
        ts = 1_700_000_000_000 + 1000 * calls[node]
        cpu = 100 + calls[node]
        body = (
            f"node_cpu_usage_seconds_total {cpu} {ts}\n"
            f"node_memory_working_set_bytes 1.5e+09 {ts}\n"
            'container_cpu_usage_seconds_total{container="app",namespace="default",'
            f'pod="web-{node}"}} {cpu / 10} {ts}\n'
            'container_memory_working_set_bytes{container="app",namespace="default",'
            f'pod="web-{node}"}} 5e+07 {ts}\n'
        )
        return _streamed(200, body)

    return handle


def raising(errors: Callable[[str], Exception]) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.01)
        raise errors(_node(request))

    return handle


def tls_failure(case: str) -> Handler:
    def error(node: str) -> Exception:
        cause = tls_errors()[case][node]
        exc = httpx.ConnectError(str(cause))
        exc.__cause__ = cause
        return exc

    return raising(error)


def refused() -> Handler:
    text = connection_refused_text()  # before the scenario's trio.run

    def error(node: str) -> Exception:
        return httpx.ConnectError(text.format(address=f"{IPS[node]}:{KUBELET_PORT}"))

    return raising(error)


def status(code: int, text: str) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0.01)
        return _streamed(code, text)

    return handle


def hang() -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError

    return handle


class _Transport(KubeletTransport):
    """The real `scrape` (deadline, status handling, error mapping) over mocked kubelets."""

    def __init__(self, options: KubeletOptions, handlers: dict[str, Handler]) -> None:
        self._options = options
        self._handlers = handlers

    def client(self) -> httpx.AsyncClient:
        async def dispatch(request: httpx.Request) -> httpx.Response:
            return await self._handlers[_node(request)](request)

        return httpx.AsyncClient(transport=httpx.MockTransport(dispatch))


def options() -> Options:
    return parse_options(ARGS)


def _node_info(name: str) -> NodeInfo:
    return NodeInfo(
        name=name,
        labels={},
        addresses=(("InternalIP", IPS[name]), ("Hostname", name)),
        kubelet_port=KUBELET_PORT,
    )


async def _kubelet_scenario(
    handlers: dict[str, Handler], out: Rendered, *, until_ready: bool, stuck: bool
) -> None:
    opts = options()
    store = MetricsStore(opts.metric_resolution)
    nodes, pods = NodeCache(), PodCache()
    holder: list[Daemon] = []
    manager = ScrapeManager(
        ScrapeSettings(
            resolution=opts.metric_resolution / 1e9,
            preferred_address_types=opts.kubelet.preferred_address_types,
            default_port=opts.kubelet.port,
            use_node_status_port=opts.kubelet.use_node_status_port,
            tls_server_name_from_node=opts.kubelet.tls_server_name_from_node,
        ),
        _Transport(opts.kubelet, handlers),
        store,
        on_result=lambda *result: holder[0].after_scrape(*result),  # noqa: PLW0108 (late)
    )
    d = Daemon(options=opts, store=store, nodes=nodes, pods=pods, manager=manager)
    holder.append(d)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        nodes.subscribe(manager.on_node)
        nursery.start_soon(daemon_mod._startup_report, d)
        nodes.replace_compact([_node_info(n) for n in handlers])
        for stats in (d.node_watch, d.pod_watch):
            stats.synced = True
            stats.running = True  # as if run_watch had listed and were watching
            stats.synced_event.set()
        await d.reported.wait()
        out.readyz = d.health()["readyz"].evaluate(verbose=True)[1]
        if until_ready:
            await d.ready.wait()
        if stuck:
            # A node task that stopped starting collections (what a throttled or blocked
            # event loop looks like to the liveness check).
            state = manager.nodes[next(iter(handlers))]
            state.scope.cancel()
            state.last_start = trio.current_time() - 40.0
        out.livez = d.health()["livez"].evaluate(verbose=True)[1]
        nursery.cancel_scope.cancel()


def kubelet_scenario(
    handlers: dict[str, Handler], *, until_ready: bool = False, stuck: bool = False
) -> Rendered:
    out = Rendered()
    with _capture_logs() as logs:
        trio.run(
            functools.partial(
                _kubelet_scenario, handlers, out, until_ready=until_ready, stuck=stuck
            ),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    out.logs = logs.lines
    return out


def _forbidden(resource: str) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f'{resource} is forbidden: User "{SA_USER}" cannot list resource '
            f'"{resource}" in API group "" at the cluster scope',
            "reason": "Forbidden",
            "details": {"kind": resource},
            "code": 403,
        }
    ).encode()


async def _rbac_scenario(out: Rendered) -> None:
    """The ClusterRole system:metrics-server is missing: node and pod lists are forbidden."""

    async def apiserver(request: httpx.Request) -> httpx.Response:
        resource = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(403, content=_forbidden(resource))

    opts = options()
    store = MetricsStore(opts.metric_resolution)
    nodes, pods = NodeCache(), PodCache()
    manager = ScrapeManager(
        ScrapeSettings(15.0, ("InternalIP",), KUBELET_PORT, True, False),
        _Transport(opts.kubelet, {}),
        store,
    )
    d = Daemon(options=opts, store=store, nodes=nodes, pods=pods, manager=manager)
    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(apiserver), base_url="https://10.96.0.1"
        ) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(manager.run)
        node_spec = WatchSpec("nodes", "/api/v1/nodes", {})
        pod_spec = WatchSpec(
            "pods", "/api/v1/pods", {"fieldSelector": "status.phase=Running"}, metadata_only=True
        )
        failed = {"nodes": trio.Event(), "pods": trio.Event()}
        for spec, sink, stats in ((node_spec, nodes, d.node_watch), (pod_spec, pods, d.pod_watch)):
            nursery.start_soon(
                functools.partial(
                    run_watch,
                    client,
                    spec,
                    sink,
                    stats,
                    on_restart=lambda _reason, name=spec.name: failed[name].set(),
                )
            )
        for event in failed.values():
            await event.wait()
        out.readyz = d.health()["readyz"].evaluate(verbose=True)[1]
        out.livez = d.health()["livez"].evaluate(verbose=True)[1]
        nursery.cancel_scope.cancel()


def rbac_scenario() -> Rendered:
    out = Rendered()
    with _capture_logs() as logs:
        trio.run(
            functools.partial(_rbac_scenario, out),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    out.logs = logs.lines
    return out


def auth_reader_error() -> str:
    """Why the server exits at start when the RoleBinding to the auth reader Role is missing:
    the text `__main__` logs as `"Failed to start" err=...`."""

    async def apiserver(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, content=_forbidden("configmaps"))

    async def start() -> str:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(apiserver), base_url="https://10.96.0.1"
        ) as client:
            stack = build_auth_stack(daemon_mod.auth_config(options()), client)
            errors: list[str] = []
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(stack.run)
                    nursery.cancel_scope.cancel()
            except* AuthError as group:
                errors = [str(e) for e in _leaves(group)]
        assert errors, "the lookup did not fail"
        return errors[0]

    return trio.run(start)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def failed_to_start_line(err: str) -> str:
    """The line `metrics_server.__main__` writes for a fatal start-up error (which logs
    `log_kv(log, logging.ERROR, "Failed to start", err=...)`; test_docs checks that)."""
    with _capture_logs() as logs:
        log_kv(logging.getLogger("metrics_server"), logging.ERROR, "Failed to start", err=err)
    (line,) = logs.lines
    source = inspect.getsource(main_mod).splitlines()
    (lineno,) = [i for i, text in enumerate(source, 1) if '"Failed to start", err=' in text]
    return re.sub(r" [\w.]+:\d+\] ", f" __main__.py:{lineno}] ", line, count=1)


@functools.cache
def scenarios() -> dict[str, Rendered]:
    """Every documented situation, rendered once per test session."""
    three = list(NODES)
    return {
        "no-ip-san": kubelet_scenario({n: tls_failure("no-ip-san") for n in three}),
        "other-ca": kubelet_scenario({n: tls_failure("other-ca") for n in three}),
        "self-signed": kubelet_scenario({n: tls_failure("self-signed") for n in three}),
        "http-401": kubelet_scenario({n: status(401, "Unauthorized") for n in three}),
        "http-403": kubelet_scenario({n: status(403, KUBELET_403) for n in three}),
        "timeout": kubelet_scenario({n: hang() for n in three}),
        "refused": kubelet_scenario({n: refused() for n in three}),
        "partial": kubelet_scenario(
            {"node-1": healthy(), "node-2": healthy(), "node-3": tls_failure("no-ip-san")}
        ),
        "healthy": kubelet_scenario({n: healthy() for n in three}, until_ready=True),
        "stuck": kubelet_scenario({n: healthy() for n in three}, until_ready=True, stuck=True),
        "rbac": rbac_scenario(),
    }


def main() -> None:
    for name, r in scenarios().items():
        print(f"===== {name}")
        for line in r.logs:
            print(line)
        print("--- readyz")
        print(r.readyz, end="")
        print("--- livez")
        print(r.livez, end="")
    print("===== auth-reader")
    print(failed_to_start_line(auth_reader_error()))


if __name__ == "__main__":
    main()
