"""HTTPS serving: bind, pick the serving certificate, build TLS, run Hypercorn (via `peercert`).

`serve()` is a trio service: `port = await nursery.start(partial(serve, app, cfg,
shutdown_trigger=...))`. It binds `bind_address:secure_port` (0 = ephemeral; IPv6 literals
welcome), reports the bound port, reloads the certificate and client CAs while running, and
returns after a graceful drain once `shutdown_trigger` returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config

from .certs import ensure_serving_cert
from .errors import ServingError
from .peercert import ASGIApp, serve_hypercorn
from .reload import DynamicServingContext, DynamicTLSListener
from .tls import ALPN_PROTOCOLS, TLSOptions

__all__ = ["ServingConfig", "hypercorn_config", "serve"]

log = logging.getLogger(__name__)


def _no_client_cas() -> bytes:
    return b""


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """Secure serving options (upstream flag names)."""

    bind_address: str = "0.0.0.0"
    """--bind-address; "::" listens on IPv6 (and IPv4-mapped where the OS allows)."""
    secure_port: int = 443
    """--secure-port; 0 picks a free port (reported through task_status)."""
    cert_dir: str = "apiserver.local.config/certificates"
    """--cert-dir, where the self-signed pair lives when no files are given."""
    tls_cert_file: str = ""
    """--tls-cert-file (with --tls-private-key-file); reloaded when it changes."""
    tls_private_key_file: str = ""
    tls_min_version: str = ""
    """--tls-min-version: VersionTLS10|11|12|13; empty = VersionTLS12."""
    tls_cipher_suites: tuple[str, ...] = ()
    """--tls-cipher-suites (Go/IANA names); empty = secure defaults."""
    graceful_timeout: float = 5.0
    """Seconds in-flight requests get after shutdown starts."""
    client_ca_pem: Callable[[], bytes] = field(default=_no_client_cas)
    """Current union of client CA and request-header CA bundles, PEM (`AuthStack.client_ca_pem`).
    Called on every reload tick; must be cheap and non-blocking."""
    on_tls_reload: Callable[[str], None] | None = None
    """Called (synchronously, in trio) after new connections start using a reloaded serving
    certificate ("serving certificate") or client CA bundle ("client CA bundle"); for
    self-metrics and tests."""
    reload_interval: float = 3.0
    """How often certificate files and client CAs are checked for changes, seconds."""
    keep_alive_timeout: float = 60.0
    """A connection with no request in flight is closed this many seconds after its last
    response (or after the handshake), however many bytes of a next request head it has sent:
    this is also the deadline for a whole request head. kube-apiserver's aggregator keeps idle
    connections for 90 s (client-go's IdleConnTimeout) and retries a GET on one we closed, so
    a shorter server side is safe; shorter still would only cost it more handshakes."""
    read_timeout: int = 60
    """A connection that sends nothing for this many seconds is closed, whatever its state
    (Hypercorn's trio worker puts this deadline on each socket read; our writes do not reset
    it). It covers what keep-alive does not, a request in flight: a body that stops coming, a
    response the client does not read. Not below keep_alive_timeout, or it would cut idle
    keep-alive connections short. Legitimate requests are not cut: we have no watch or
    streaming endpoints, answers take milliseconds, and Go's HTTP/2 clients (the aggregator)
    send a PING after 30 s without a frame from us; an HTTP/1.1 request still unanswered after
    60 s would also be ended by kube-apiserver's --request-timeout. Whole seconds, as
    Hypercorn types it."""
    handshake_timeout: float = 10.0
    """A TLS handshake must finish within this many seconds."""
    max_header_bytes: int = 64 * 1024
    """Bound on request head size (h11 incomplete event size, h2 header list size)."""
    h2_max_concurrent_streams: int = 100
    max_connections: int = 1024
    """Connections open at once (from accept, so unfinished handshakes count); beyond that a
    new connection is closed at once. Legitimate clients need a few dozen (the aggregator's
    HTTP/2 connections per apiserver replica, probes, Prometheus). Measured on Hypercorn 0.18:
    an idle TLS connection costs ~40 KiB, one holding a 64 KiB half-sent head ~230 KiB, so
    1024 of the worst kind stay near 230 MiB, where 4096 would be ~0.9 GiB and an OOM kill."""

    def __post_init__(self) -> None:
        if not 0 <= self.secure_port <= 65535:
            raise ServingError(f"--secure-port {self.secure_port} must be between 0 and 65535")
        if bool(self.tls_cert_file) != bool(self.tls_private_key_file):
            raise ServingError("--tls-cert-file and --tls-private-key-file must be given together")
        if self.graceful_timeout < 0 or self.reload_interval <= 0:
            raise ServingError("graceful timeout and reload interval must be positive")
        if min(self.keep_alive_timeout, self.read_timeout, self.handshake_timeout) <= 0:
            raise ServingError("keep-alive, read and handshake timeouts must be positive")
        if self.max_connections < 1:
            raise ServingError(f"max_connections {self.max_connections} must be at least 1")

    def tls_options(self) -> TLSOptions:
        """Validate --tls-min-version and --tls-cipher-suites (ServingError naming the value)."""
        return TLSOptions.from_flags(self.tls_min_version, self.tls_cipher_suites)


def hypercorn_config(cfg: ServingConfig) -> Config:
    """Hypercorn settings; every field is set by attribute so a typo fails mypy, not silently."""
    hc = Config()
    hc.keep_alive_timeout = cfg.keep_alive_timeout
    hc.read_timeout = cfg.read_timeout
    hc.graceful_timeout = cfg.graceful_timeout
    hc.ssl_handshake_timeout = cfg.handshake_timeout
    hc.h11_max_incomplete_size = cfg.max_header_bytes
    hc.h2_max_header_list_size = cfg.max_header_bytes
    hc.h2_max_concurrent_streams = cfg.h2_max_concurrent_streams
    hc.alpn_protocols = list(ALPN_PROTOCOLS)
    hc.include_server_header = False
    hc.accesslog = None
    # A Logger object (not a path) stops Hypercorn adding its own stderr handler, so its
    # errors come out once, in our klog/JSON format.
    hc.errorlog = logging.getLogger("hypercorn.error")
    return hc


async def _bind(host: str, port: int) -> trio.SocketListener:
    try:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ServingError(f"--bind-address {host!r}: {exc}") from exc
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Like Go on "[::]": accept IPv4-mapped too (the OS may still refuse; harmless).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        await sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        hint = " (address in use)" if exc.errno == errno.EADDRINUSE else ""
        raise ServingError(f"unable to listen on {host!r} port {port}{hint}: {exc}") from exc
    return trio.SocketListener(sock)


async def serve(
    app: ASGIApp,
    config: ServingConfig,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` over HTTPS until `shutdown_trigger` returns; reports the bound port."""
    options = config.tls_options()
    if config.tls_cert_file:
        cert_file, key_file = config.tls_cert_file, config.tls_private_key_file
    else:
        paths = await ensure_serving_cert(config.cert_dir)
        cert_file, key_file = paths.cert_file, paths.key_file
        if paths.generated:
            log.info("generated self-signed serving certificate in %s", config.cert_dir)
    contexts = DynamicServingContext(
        cert_file,
        key_file,
        options,
        config.client_ca_pem,
        poll_interval=config.reload_interval,
        on_reload=config.on_tls_reload,
    )
    await contexts.load()
    transport = await _bind(config.bind_address, config.secure_port)
    port: int = transport.socket.getsockname()[1]
    listener = DynamicTLSListener(transport, contexts)
    hc = hypercorn_config(config)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(contexts.run)
        try:
            await nursery.start(
                _serve_then_stop,
                app,
                hc,
                listener,
                shutdown_trigger,
                nursery.cancel_scope,
                config.max_connections,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            raise
        log.info("serving securely on %s port %d", config.bind_address, port)
        task_status.started(port)


async def _serve_then_stop(
    app: ASGIApp,
    hc: Config,
    listener: DynamicTLSListener,
    shutdown_trigger: Callable[[], Awaitable[None]],
    scope_to_cancel: trio.CancelScope,
    max_connections: int,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_hypercorn(
            app,
            hc,
            [listener],
            shutdown_trigger=shutdown_trigger,
            client_ca_added=listener.contexts.wait_client_ca_added,
            max_connections=max_connections,
            task_status=task_status,
        )
    finally:
        # Hypercorn is done: stop the reload poller too.
        scope_to_cancel.cancel()
