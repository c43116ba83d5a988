"""Live authentication inputs: the client CA bundle and the request-header (front proxy) settings.

Upstream decides per group where each comes from: `--client-ca-file` or else the ConfigMap's
`client-ca-file`; `--requestheader-client-ca-file` (with all the requestheader flags) or else
all the ConfigMap's `requestheader-*` keys. Files named by flags are re-read when they change,
like dynamiccertificates.DynamicFileCAContent; the ConfigMap half is kept current by
`metrics_server.auth.lookup.ConfigMapWatcher`. Readers take an immutable `AuthSnapshot`, so a
request never sees half an update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from .certverify import EMPTY_BUNDLE, CABundle, parse_ca_bundle
from .config import AuthConfig
from .errors import AuthConfigError

__all__ = ["AuthSnapshot", "AuthSources", "RequestHeaderSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestHeaderSettings:
    """Everything the request-header authenticator needs, from flags or from the ConfigMap."""

    ca: CABundle
    allowed_names: tuple[str, ...]
    username_headers: tuple[str, ...]
    group_headers: tuple[str, ...]
    extra_headers_prefix: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuthSnapshot:
    """One consistent view of the authentication inputs."""

    client_ca: CABundle
    request_header: RequestHeaderSettings | None
    """None when request-header authentication is not configured at all."""
    generation: int


def _file_key(st: object) -> tuple[int, int, int, int]:
    return (
        int(getattr(st, "st_mtime_ns", 0)),
        int(getattr(st, "st_size", 0)),
        int(getattr(st, "st_ino", 0)),
        int(getattr(st, "st_dev", 0)),
    )


class AuthSources:
    """Holds the current AuthSnapshot; updated by file polling, the ConfigMap watch, or tests."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._snapshot = AuthSnapshot(client_ca=EMPTY_BUNDLE, request_header=None, generation=0)
        self._changed = trio.Event()
        self._file_keys: dict[str, tuple[int, int, int, int]] = {}

    # -- readers ---------------------------------------------------------------------------
    def snapshot(self) -> AuthSnapshot:
        return self._snapshot

    def client_ca_pem(self) -> bytes:
        """Both CA bundles joined, for the TLS trust store (upstream ApplyClientCert)."""
        snap = self._snapshot
        rh = snap.request_header.ca.pem if snap.request_header else b""
        return snap.client_ca.pem + rh

    async def wait_changed(self, generation: int) -> int:
        """Return once the generation differs from `generation`; returns the new one."""
        while self._snapshot.generation == generation:
            await self._changed.wait()
        return self._snapshot.generation

    # -- writers ---------------------------------------------------------------------------
    def set_client_ca(self, bundle: CABundle) -> None:
        if bundle == self._snapshot.client_ca:
            return
        self._publish(AuthSnapshot(bundle, self._snapshot.request_header, 0))

    def set_request_header(self, settings: RequestHeaderSettings | None) -> None:
        if settings == self._snapshot.request_header:
            return
        self._publish(AuthSnapshot(self._snapshot.client_ca, settings, 0))

    def _publish(self, snap: AuthSnapshot) -> None:
        self._snapshot = AuthSnapshot(
            snap.client_ca, snap.request_header, self._snapshot.generation + 1
        )
        self._changed.set()
        self._changed = trio.Event()

    # -- flag files ------------------------------------------------------------------------
    def _flag_files(self) -> list[tuple[str, Callable[[CABundle], None]]]:
        files: list[tuple[str, Callable[[CABundle], None]]] = []
        if self.config.client_ca_file:
            files.append((self.config.client_ca_file, self.set_client_ca))
        if self.config.requestheader_client_ca_file:
            files.append((self.config.requestheader_client_ca_file, self._set_flag_rh_ca))
        return files

    def _set_flag_rh_ca(self, bundle: CABundle) -> None:
        c = self.config
        self.set_request_header(
            RequestHeaderSettings(
                ca=bundle,
                allowed_names=c.requestheader_allowed_names,
                username_headers=tuple(h.strip() for h in c.requestheader_username_headers),
                group_headers=tuple(h.strip() for h in c.requestheader_group_headers),
                extra_headers_prefix=tuple(h.strip() for h in c.requestheader_extra_headers_prefix),
            )
        )

    async def _read_bundle(self, path: str) -> tuple[CABundle, tuple[int, int, int, int]]:
        p = trio.Path(path)
        try:
            st = await p.stat()
            data = await p.read_bytes()
        except OSError as exc:
            raise AuthConfigError(f"unable to read CA bundle {path}: {exc}") from exc
        bundle = parse_ca_bundle(data, path)
        if bundle.empty:
            raise AuthConfigError(f"{path}: CA bundle contains no certificate")
        return bundle, _file_key(st)

    async def load_flag_files(self) -> None:
        """Read the CA files named by flags; any problem is fatal at start-up."""
        for path, apply in self._flag_files():
            bundle, key = await self._read_bundle(path)
            self._file_keys[path] = key
            apply(bundle)

    async def poll_flag_files_once(self) -> None:
        """Re-read changed CA files; a broken new file keeps the previous bundle (logged)."""
        for path, apply in self._flag_files():
            try:
                st = await trio.Path(path).stat()
            except OSError as exc:
                log.warning("CA bundle %s unreadable, keeping the previous one: %s", path, exc)
                continue
            if _file_key(st) == self._file_keys.get(path):
                continue
            try:
                bundle, key = await self._read_bundle(path)
            except AuthConfigError as exc:
                log.warning("CA bundle %s invalid, keeping the previous one: %s", path, exc)
                continue
            self._file_keys[path] = key
            log.info("reloaded CA bundle %s", path)
            apply(bundle)

    async def run_file_reloader(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Poll the flag CA files forever; never returns."""
        task_status.started()
        while True:
            await trio.sleep(self.config.ca_file_poll_interval)
            await self.poll_flag_files_once()
