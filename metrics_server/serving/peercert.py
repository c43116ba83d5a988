"""The one seam into Hypercorn: serving our listeners and showing the app each peer certificate.

`hypercorn.trio.serve` builds its own `SSLListener` from `Config.create_ssl_context()` and hides
the TLS stream from the ASGI app, so it can neither swap contexts at runtime nor report the
client certificate. `hypercorn.trio.run.worker_serve` is built from pieces that are usable on
their own: `Lifespan`, `WorkerContext` and `TCPServer(app, config, context, state, stream)`,
which takes an already wrapped stream and does the handshake itself. `serve_hypercorn` below is
worker_serve reduced to what we need (no QUIC, no insecure binds, no statsd), with two changes:

* the listeners are ours (`DynamicTLSListener`, current context per accepted connection);
* connections accepted while no client CA was known were never asked for a certificate (Go
  asks always and judges per request; OpenSSL cannot accept an unverifiable one). They run
  under their own `WorkerContext`, which is terminated when a CA appears: Hypercorn then
  closes them the way it does at shutdown (idle ones at once, HTTP/1.1 after the response in
  flight, HTTP/2 with GOAWAY once idle), and clients such as the aggregator reconnect and
  present their certificate;
* at most `max_connections` connections are served at once; one accepted beyond that is
  closed at once, before its handshake (see `_ConnectionCap`);
* each connection's `TCPServer` gets the app wrapped in `TLSScopeApp`, which holds that
  connection's `SSLStream` and adds the ASGI TLS extension to every http scope:
  `scope["extensions"]["tls"] = {"server_cert": None, "client_cert_chain": [PEM, ...],
  "client_cert_name": RFC 4514 subject or None, "client_cert_error": None,
  "tls_version": 0x0304, "cipher_suite": 0x1301}`.

Nothing in Hypercorn is patched. Only these Hypercorn names are used, and only here:
`Lifespan`, `TCPServer`, `WorkerContext`, `ConnectionState`, `utils.wrap_app`,
`utils.raise_shutdown`, `utils.ShutdownError`; an upgrade that moves them breaks loudly at
import. Python 3.11's ssl exposes only the leaf certificate, so the chain holds one entry.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, cast

import trio
from cryptography import x509
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    ConnectionState,
    Scope,
)
from hypercorn.utils import ShutdownError, raise_shutdown, wrap_app

from .tls import cipher_suite_id, tls_version_id

__all__ = ["TLSScopeApp", "serve_hypercorn", "tls_extension"]

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

log = logging.getLogger(__name__)


def tls_extension(stream: trio.SSLStream[Any]) -> dict[str, Any]:
    """The ASGI TLS extension for a stream whose handshake is complete."""
    der = stream.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        chain.append(ssl.DER_cert_to_PEM_cert(der))
        try:
            name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        except ValueError:
            name = None
    cipher = stream.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        # OpenSSL already rejected any certificate that failed verification.
        "client_cert_error": None,
        "tls_version": tls_version_id(stream.version()),
        "cipher_suite": cipher_suite_id(cipher[0]) if cipher else None,
    }


class TLSScopeApp:
    """Hypercorn AppWrapper for one connection: adds that connection's TLS facts to scopes."""

    def __init__(self, app: Any, stream: trio.SSLStream[Any], last_send_bound: float = 5.0) -> None:
        self.app = app
        self.stream = stream
        self.last_send_bound = last_send_bound
        self._tls: dict[str, Any] | None = None

    async def __call__(
        self,
        scope: Scope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope.get("type") in ("http", "websocket"):
            if self._tls is None:
                # Computed once per connection, after TCPServer's handshake.
                self._tls = tls_extension(self.stream)
            previous: dict[str, Any] = dict(cast(dict[str, Any], scope).get("extensions") or {})
            extensions = {**previous, "tls": dict(self._tls)}
            scope = cast(Scope, {**scope, "extensions": extensions})
            send = _last_body_shielded(send, self.last_send_bound)
        await self.app(scope, receive, send, sync_spawn, call_soon)


def _last_body_shielded(send: ASGISendCallable, bound: float) -> ASGISendCallable:
    """`send`, shielded (for at most `bound` seconds) for the message that ends a response.

    That message makes Hypercorn, still in the app's task, tell the app the stream is done
    (http.disconnect) and then start the connection's keep-alive timer with `nursery.start`.
    Quart-Trio cancels its own nursery on that disconnect, and a task started from a
    cancelled scope quits before it is moved to its nursery (trio's `TaskStatus.started`),
    so without the shield the timer never runs and an answered HTTP/1.1 or HTTP/2
    connection stays open until read_timeout. What runs in the shield is short (the last
    write, which Hypercorn shields anyway; the disconnect, which Quart is waiting for; the
    timer's start); the bound, the graceful timeout, keeps a stuck one from holding up
    shutdown for longer than a request in flight may.
    """

    async def send_shielding_the_last(message: ASGISendEvent) -> None:
        fields = cast(dict[str, Any], message)
        if fields["type"] == "http.response.body" and not fields.get("more_body", False):
            with trio.CancelScope(shield=True, deadline=trio.current_time() + bound):
                await send(message)
        else:
            await send(message)

    return send_shielding_the_last


class _Uncertified:
    """The WorkerContext of connections that were accepted without asking for a certificate."""

    def __init__(self) -> None:
        self.context = WorkerContext(None)

    async def retire_on(self, client_ca_added: Callable[[], Awaitable[None]]) -> None:
        while True:
            await client_ca_added()
            retired, self.context = self.context, WorkerContext(None)
            await retired.terminated.set()


class _ConnectionCap:
    """At most `limit` connections at once. One beyond that is refused, i.e. closed at once: a
    queue would only keep more sockets open for whoever is flooding us, and the clients we
    serve (the aggregator, probes) retry on a new connection. Logged when refusing starts and,
    with its count, when it ends: once usage is back to three quarters of the limit, so a
    server held at the limit does not log every connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = trio.CapacityLimiter(limit)
        self._resume_at = limit - max(1, limit // 4)
        self._refused = 0

    def admit(self) -> bool:
        """Take a slot for the current task (True), or count a refusal (False)."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if self._refused == 0:
                log.warning(
                    "connection limit reached (%d open): closing new connections at once "
                    "until some finish",
                    self.limit,
                )
            self._refused += 1
            return False
        return True

    def release(self) -> None:
        """Give back the current task's slot."""
        self._slots.release()
        if self._refused and self._slots.borrowed_tokens <= self._resume_at:
            log.info(
                "accepting connections again (%d open); %d refused at the limit of %d",
                self._slots.borrowed_tokens,
                self._refused,
                self.limit,
            )
            self._refused = 0


async def serve_hypercorn(
    app: ASGIApp,
    config: Config,
    listeners: Sequence[trio.abc.Listener[trio.SSLStream[trio.SocketStream]]],
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    client_ca_added: Callable[[], Awaitable[None]] | None = None,
    max_connections: int = 1024,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the ASGI app on `listeners` until `shutdown_trigger` returns, then drain.

    `client_ca_added` returns each time a client CA becomes known after none was; connections
    accepted without asking for a certificate are then asked to finish. Beyond
    `max_connections` open at once, a newly accepted connection is closed at once.

    Shutdown, like Hypercorn's: stop accepting, tell connections to finish (keep-alive ends),
    cancel whatever is still running after `config.graceful_timeout`, then lifespan shutdown.
    """
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    uncertified = _Uncertified()
    cap = _ConnectionCap(max_connections)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        if not cap.admit():
            # No handshake yet, so this closes the TCP socket (https_compatible: no
            # close_notify); serve_listeners' own aclose_forcefully then finds it closed.
            await trio.aclose_forcefully(stream)
            return
        try:
            asked_for_cert = stream.context.verify_mode != ssl.CERT_NONE
            server = TCPServer(
                TLSScopeApp(wrapped, stream, config.graceful_timeout),
                config,
                context if asked_for_cert else uncertified.context,
                ConnectionState(lifespan_state.copy()),
                stream,
            )
            await server.run()
        finally:
            # Close before giving the slot back (TCPServer leaves the socket open when the
            # handshake fails), so the count never undercounts open sockets.
            try:
                await trio.aclose_forcefully(stream)
            finally:
                cap.release()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            task_status.started()
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    if client_ca_added is not None:
                        nursery.start_soon(uncertified.retire_on, client_ca_added)
                    nursery.start_soon(
                        partial(
                            trio.serve_listeners,
                            handler,
                            list(listeners),
                            handler_nursery=server_nursery,
                        )
                    )
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                await uncertified.context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
