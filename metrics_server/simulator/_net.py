"""A restartable TCP listener on a fixed 127.0.0.1 port, shared by the apiserver and kubelets.

`stop()` closes the listening socket and every open connection at once (what a crashed process
looks like to clients); `start()` binds the same port again. Both are synchronous so tests and
mutation methods can flip them without awaiting. Each incarnation is one task holding a nursery
of connection tasks, started in the owner's nursery.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

__all__ = ["RestartableListener"]

log = logging.getLogger(__name__)

_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]


class RestartableListener:
    """Accepts connections on 127.0.0.1:`port` and hands each to `handler` in its own task."""

    __slots__ = ("_conns", "_handler", "_nursery", "_scope", "_sock", "host", "port")

    def __init__(
        self, nursery: trio.Nursery, handler: ConnectionHandler, *, host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._nursery = nursery
        self._handler = handler
        self.host = host
        self.port = port
        self._sock: trio.socket.SocketType | None = None
        self._scope: trio.CancelScope | None = None
        self._conns: set[trio.SocketStream] = set()

    @property
    def running(self) -> bool:
        return self._sock is not None

    def start(self) -> None:
        """Bind (the same port after the first time) and start accepting."""
        if self._sock is not None:
            return
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            raw.bind((self.host, self.port))
            raw.listen(512)
            raw.setblocking(False)
        except OSError:
            raw.close()
            raise
        self.port = raw.getsockname()[1]
        sock = trio.socket.from_stdlib_socket(raw)
        scope = trio.CancelScope()
        self._sock, self._scope = sock, scope
        self._nursery.start_soon(self._serve, sock, scope)

    def stop(self) -> None:
        """Close the listening socket and drop every open connection."""
        if self._sock is not None:
            # trio's close() wakes the task blocked in accept() with ClosedResourceError.
            self._sock.close()
        # Close the sockets now rather than when the cancelled tasks next run, so a client that
        # calls right after stop() already sees the connection gone.
        for conn in self._conns:
            conn.socket.close()
        self._conns.clear()
        if self._scope is not None:
            self._scope.cancel()
        self._sock = self._scope = None

    async def _track(self, conn: trio.SocketStream) -> None:
        self._conns.add(conn)
        try:
            await self._handler(conn)
        finally:
            self._conns.discard(conn)

    async def _serve(self, sock: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as connections:
                try:
                    while True:
                        try:
                            conn, _ = await sock.accept()
                        except trio.ClosedResourceError:
                            return
                        except OSError as exc:
                            if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                                log.warning("accept on port %d: %s; backing off", self.port, exc)
                                await trio.sleep(0.1)
                                continue
                            raise
                        connections.start_soon(self._track, trio.SocketStream(conn))
                finally:
                    sock.close()
                    # Closing the listener also ends the connections, like a dying process.
                    connections.cancel_scope.cancel()
