"""Credentials for kube-apiserver and kubelets: the only module that imports `kubernetes`.

The `kubernetes` package's loaders do the hard parts (kubeconfig contexts, exec plugins,
in-cluster service-account files); we read the result once into `ClusterAccess`.
Service-account tokens rotate (the kubelet refreshes bound tokens well before their hour
is up), so in a pod we re-read the token file every 30 s ourselves; for kubeconfigs we
ask the loader's refresh hook, which re-runs exec plugins when their token expires.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

log = logging.getLogger(__name__)

TOKEN_REFRESH_SECONDS = 30.0
"""How often the token is re-read; below the one-minute rotation guarantee."""
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

_clock = time.monotonic


class CredentialsError(Exception):
    """The kubeconfig or in-cluster configuration cannot be used."""


@dataclass(slots=True)
class ClusterAccess:
    """Where kube-apiserver is and how to prove who we are to it."""

    host: str
    ca_file: str | None
    verify: bool
    cert_file: str | None
    key_file: str | None
    tls_server_name: str | None
    _config: Any
    _token: str | None
    _token_read_at: float
    _token_file: str | None = None

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def ssl_context(self) -> ssl.SSLContext:
        """Client TLS context for the apiserver: its CA and our client cert, if any."""
        try:
            if not self.verify:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file and self.key_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise CredentialsError(f"cannot use the kubeconfig's TLS files: {exc}") from exc
        return ctx

    async def token(self) -> str | None:
        """The current bearer token (without the "Bearer " prefix), refreshed periodically."""
        if self._token is None or (self._config is None and self._token_file is None):
            return self._token
        if _clock() - self._token_read_at < TOKEN_REFRESH_SECONDS:
            return self._token
        try:
            if self._token_file is not None:
                text = (await trio.Path(self._token_file).read_text()).strip()
                fresh: str | None = text or None
            else:
                # The hook may re-run an exec plugin: blocking, so off the event loop.
                fresh = await trio.to_thread.run_sync(_read_token, self._config)
        except Exception as exc:
            # Keep the old token: it may still be valid, and the next call retries.
            log.warning("cannot refresh the bearer token: %s", exc)
            fresh = None
        if fresh:
            self._token = fresh
        self._token_read_at = _clock()
        return self._token


class BearerAuth(httpx.Auth):
    """httpx auth flow that always sends the current token of a `ClusterAccess`."""

    def __init__(self, access: ClusterAccess) -> None:
        self._access = access

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> Any:  # AsyncGenerator[httpx.Request, httpx.Response]
        token = await self._access.token()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, Any, None]:
        raise RuntimeError("BearerAuth is async only")


def _read_token(config: Any) -> str | None:
    value = config.get_api_key_with_prefix("BearerToken", alias="authorization")
    if not value:
        return None
    text = str(value)
    scheme, _, rest = text.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else text.strip()


def load(
    kubeconfig: str, *, sa_dir: str = SA_DIR, environ: Mapping[str, str] | None = None
) -> ClusterAccess:
    """Load a kubeconfig file, or the in-cluster configuration when `kubeconfig` is empty.

    Blocking: call before `trio.run` or through `trio.to_thread`.
    """
    from kubernetes import client as kclient
    from kubernetes import config as kconfig
    from kubernetes.config.incluster_config import InClusterConfigLoader

    cfg = kclient.Configuration()
    token_file = None
    try:
        if kubeconfig:
            kconfig.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            token_file = os.path.join(sa_dir, "token")
            InClusterConfigLoader(
                token_filename=token_file,
                cert_filename=os.path.join(sa_dir, "ca.crt"),
                environ=os.environ if environ is None else environ,
            ).load_and_set(cfg)  # type: ignore[no-untyped-call]
    except kconfig.ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster configuration"
        raise CredentialsError(f"cannot load {where}: {exc}") from None
    except OSError as exc:
        raise CredentialsError(f"cannot read kubeconfig {kubeconfig}: {exc}") from None
    except Exception as exc:  # the loaders raise bare exceptions on malformed YAML
        raise CredentialsError(f"cannot load kubeconfig {kubeconfig}: {exc}") from None

    try:
        token = _read_token(cfg)
    except Exception as exc:
        raise CredentialsError(f"cannot obtain a bearer token: {exc}") from None
    host = str(cfg.host).rstrip("/")
    if not host.startswith(("https://", "http://")):
        raise CredentialsError(f'kubeconfig server "{host}" is not an http(s) URL')
    return ClusterAccess(
        host=host,
        ca_file=cfg.ssl_ca_cert or None,
        verify=bool(cfg.verify_ssl),
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        _config=cfg if cfg.refresh_api_key_hook is not None and token_file is None else None,
        _token=token,
        _token_read_at=_clock(),
        _token_file=token_file,
    )


def api_client(access: ClusterAccess, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client for kube-apiserver with TLS and bearer-token auth set up."""
    return httpx.AsyncClient(
        base_url=access.host,
        verify=access.ssl_context(),
        auth=BearerAuth(access),
        headers={"User-Agent": "metrics-server-py"},
        **kwargs,
    )
