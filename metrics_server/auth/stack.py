"""Assembling the auth layer from an AuthConfig and the cluster client the daemon built.

`build_auth_stack` constructs everything without I/O; `AuthStack.run` (started with
`nursery.start`) reads the CA files, performs the ConfigMap lookup with upstream's failure
semantics, reports started, and then keeps files and ConfigMap current forever.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from .authn import Authenticator
from .authz import Authorizer, SubjectAccessReviewer
from .config import AuthConfig
from .lookup import ConfigMapWatcher
from .middleware import ASGIApp, AuthMiddleware
from .sources import AuthSources
from .tokenreview import TokenReviewer

__all__ = ["AuthStack", "build_auth_stack"]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class AuthStack:
    config: AuthConfig
    sources: AuthSources
    watcher: ConfigMapWatcher
    authenticator: Authenticator
    authorizer: Authorizer

    def middleware(self, app: ASGIApp) -> AuthMiddleware:
        return AuthMiddleware(app, self.authenticator, self.authorizer)

    def client_ca_pem(self) -> bytes:
        """For ServingConfig.client_ca_pem: the union of client and request-header CAs."""
        return self.sources.client_ca_pem()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load CA files and look up the ConfigMap (errors are fatal), then keep them current."""
        await self.sources.load_flag_files()
        async with trio.open_nursery() as nursery:
            # Background review refreshes live here, beside the ConfigMap watch.
            for reviewer in (self.authenticator.token_reviewer, self.authorizer.reviewer):
                if reviewer is not None:
                    await nursery.start(reviewer.cache.run)
            await nursery.start(self.watcher.run)
            if self.config.client_ca_file or self.config.requestheader_client_ca_file:
                await nursery.start(self.sources.run_file_reloader)
            task_status.started()


def build_auth_stack(
    config: AuthConfig,
    client: httpx.AsyncClient | None,
    *,
    authorization_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime.datetime] = _utcnow,
) -> AuthStack:
    """Assemble the auth layer (no I/O).

    `client`: an AsyncClient with kube-apiserver base_url, CA and credentials (from
    --authentication-kubeconfig or in-cluster), used for the ConfigMap and TokenReviews; None
    means no cluster access (tokens are refused, only always-allowed paths pass).
    `authorization_client`: the same for SubjectAccessReviews (--authorization-kubeconfig);
    defaults to `client`.
    """
    authz_client = authorization_client if authorization_client is not None else client
    sources = AuthSources(config)
    watcher = ConfigMapWatcher(client, sources)
    reviewer = (
        TokenReviewer(
            client,
            cache_ttl=config.token_webhook_cache_ttl,
            timeout=config.token_review_timeout,
            clock=clock,
        )
        if client is not None
        else None
    )
    sar = (
        SubjectAccessReviewer(
            authz_client,
            allowed_ttl=config.authorization_cache_authorized_ttl,
            denied_ttl=config.authorization_cache_unauthorized_ttl,
            timeout=config.authorization_timeout,
            clock=clock,
        )
        if authz_client is not None
        else None
    )
    return AuthStack(
        config=config,
        sources=sources,
        watcher=watcher,
        authenticator=Authenticator(sources, reviewer, now=now),
        authorizer=Authorizer(config, sar),
    )
