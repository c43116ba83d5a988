"""The auth layer's exceptions: what can go wrong deciding who calls and what they may do.

Callers (the middleware, the daemon) catch these; httpx and cryptography errors never escape
this package unmapped.
"""

from __future__ import annotations

__all__ = [
    "AuthBackendError",
    "AuthConfigError",
    "AuthError",
    "AuthLookupError",
    "AuthenticationFailed",
]


class AuthError(Exception):
    """Base class of every error raised by `metrics_server.auth`."""


class AuthConfigError(AuthError):
    """A flag value or ConfigMap value cannot be used (unreadable file, bad PEM, bad JSON)."""


class AuthLookupError(AuthError):
    """Reading `kube-system/extension-apiserver-authentication` failed at start-up."""


class AuthBackendError(AuthError):
    """A TokenReview or SubjectAccessReview could not be completed (unreachable, slow, bad reply).

    Never cached, and never turned into an allow.
    """


class AuthenticationFailed(AuthError):
    """Credentials were presented and rejected; the request gets 401, never anonymous access.

    `reasons` are for logs only: they never name a token and are never sent to the client.
    """

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons) or "unauthorized")
        self.reasons = reasons
