"""The current serving `SSLContext`, rebuilt when certificate files or client CAs change.

cert-manager and kubelet rotation replace files in place, so the certificate and key files are
polled (mtime, size, inode) every few seconds; the client CA union is compared by content at
the same time. A change builds a whole new context in a worker thread; the listener wraps each
accepted connection with whatever context is current, so new connections get the new
certificate or trust store while the listening socket and live connections are untouched. A
rotation caught half-way (key and certificate not matching yet) keeps the old context and is
retried on the next tick.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable

import trio

from .errors import ServingError
from .tls import TLSOptions, build_server_context

__all__ = ["DynamicServingContext", "DynamicTLSListener"]

log = logging.getLogger(__name__)

_FileKey = tuple[int, int, int]


async def _file_key(path: str) -> _FileKey | None:
    try:
        st = await trio.Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class DynamicServingContext:
    """Owns the current server SSLContext. `load()` once, then `run()` in a nursery."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        options: TLSOptions,
        client_ca_pem: Callable[[], bytes],
        *,
        poll_interval: float = 3.0,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.cert_file = os.fspath(cert_file)
        self.key_file = os.fspath(key_file)
        self.options = options
        self.client_ca_pem = client_ca_pem
        self.poll_interval = poll_interval
        self.on_reload = on_reload
        self._ctx: ssl.SSLContext | None = None
        self._keys: tuple[_FileKey | None, _FileKey | None] = (None, None)
        self._ca: bytes = b""
        self.generation = 0
        self._changed = trio.Event()
        self._ca_added = trio.Event()

    def current(self) -> ssl.SSLContext:
        if self._ctx is None:
            raise ServingError("serving TLS context used before load()")
        return self._ctx

    async def _build(self, ca: bytes) -> ssl.SSLContext:
        return await trio.to_thread.run_sync(
            build_server_context, self.cert_file, self.key_file, self.options, ca
        )

    async def load(self) -> None:
        """First build; any error is fatal (ServingError)."""
        keys = (await _file_key(self.cert_file), await _file_key(self.key_file))
        ca = self.client_ca_pem()
        self._install(await self._build(ca), keys, ca)

    def _install(
        self, ctx: ssl.SSLContext, keys: tuple[_FileKey | None, _FileKey | None], ca: bytes
    ) -> None:
        ca_added = bool(ca.strip()) and not self._ca.strip() and self._ctx is not None
        self._ctx, self._keys, self._ca = ctx, keys, ca
        self.generation += 1
        self._changed.set()
        self._changed = trio.Event()
        if ca_added:
            self._ca_added.set()
            self._ca_added = trio.Event()

    async def reload_if_changed(self) -> bool:
        """One poll: rebuild when files or CAs changed. True when a new context is in use."""
        keys = (await _file_key(self.cert_file), await _file_key(self.key_file))
        ca = self.client_ca_pem()
        if keys == self._keys and ca == self._ca:
            return False
        try:
            ctx = await self._build(ca)
        except ServingError as exc:
            log.warning("keeping the previous serving TLS configuration: %s", exc)
            return False
        what = "serving certificate" if keys != self._keys else "client CA bundle"
        log.info("reloaded %s for new connections", what)
        self._install(ctx, keys, ca)
        if self.on_reload is not None:
            self.on_reload(what)
        return True

    async def wait_client_ca_added(self) -> None:
        """Return the next time a client CA becomes known after none was: connections accepted
        before then were never asked for a certificate and should be retired."""
        await self._ca_added.wait()

    async def wait_generation_above(self, generation: int) -> int:
        """Return once a context newer than `generation` is installed (used by tests)."""
        while self.generation <= generation:
            await self._changed.wait()
        return self.generation

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever."""
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval)
            await self.reload_if_changed()


class DynamicTLSListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """Accepts TCP connections and wraps each in TLS with the context current at accept time.

    The handshake itself happens later in the connection's own task (Hypercorn's TCPServer,
    bounded by its ssl_handshake_timeout), so a slow client never blocks accepting.
    """

    def __init__(self, transport: trio.SocketListener, contexts: DynamicServingContext) -> None:
        self.transport = transport
        self.contexts = contexts

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        stream = await self.transport.accept()
        return trio.SSLStream(
            stream, self.contexts.current(), server_side=True, https_compatible=True
        )

    async def aclose(self) -> None:
        await self.transport.aclose()
