"""Authentication and authorization settings, mirroring k8s.io/apiserver's delegating flags.

Only data and validation live here: no I/O. The daemon maps the command line onto `AuthConfig`;
`metrics_server.auth.sources` turns it (plus the cluster ConfigMap) into live CA bundles.
There is deliberately no "allow everything" switch: without a cluster client every token is
rejected and every path outside `always_allow_paths` is forbidden.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AuthConfigError

__all__ = [
    "DEFAULT_ALWAYS_ALLOW_PATHS",
    "AuthConfig",
]

DEFAULT_ALWAYS_ALLOW_PATHS: tuple[str, ...] = ("/healthz", "/readyz", "/livez")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Delegated authentication and authorization options (upstream flag names in comments)."""

    client_ca_file: str = ""
    """--client-ca-file: CA bundle for client certificates (user = CN, groups = O).
    When empty, the `client-ca-file` key of the ConfigMap is used unless lookup is skipped."""
    requestheader_client_ca_file: str = ""
    """--requestheader-client-ca-file: CA bundle for the front proxy. When set, all the
    requestheader_* values below come from flags; when empty, all of them come from the
    ConfigMap (unless lookup is skipped), exactly like upstream."""
    requestheader_allowed_names: tuple[str, ...] = ()
    """--requestheader-allowed-names: allowed front-proxy CNs; empty means any CN."""
    requestheader_username_headers: tuple[str, ...] = ("X-Remote-User",)
    """--requestheader-username-headers, checked in order; the first non-empty one wins."""
    requestheader_group_headers: tuple[str, ...] = ("X-Remote-Group",)
    """--requestheader-group-headers; every value of every header is a group."""
    requestheader_extra_headers_prefix: tuple[str, ...] = ("X-Remote-Extra-",)
    """--requestheader-extra-headers-prefix; suffix (lowercased, %-unescaped) is the extra key."""
    authentication_skip_lookup: bool = False
    """--authentication-skip-lookup: never read the ConfigMap."""
    authentication_tolerate_lookup_failure: bool = False
    """--authentication-tolerate-lookup-failure: start without the ConfigMap's request-header
    settings (logging a warning) instead of failing."""
    token_webhook_cache_ttl: float = 10.0
    """--authentication-token-webhook-cache-ttl, seconds, for accepted and rejected tokens."""
    token_review_timeout: float = 10.0
    """Bound on one TokenReview round trip (upstream TokenRequestTimeout, 10 s)."""
    authorization_cache_authorized_ttl: float = 10.0
    """--authorization-webhook-cache-authorized-ttl, seconds."""
    authorization_cache_unauthorized_ttl: float = 10.0
    """--authorization-webhook-cache-unauthorized-ttl, seconds."""
    authorization_timeout: float = 10.0
    """Bound on one SubjectAccessReview round trip (upstream ClientTimeout, 10 s)."""
    always_allow_paths: tuple[str, ...] = DEFAULT_ALWAYS_ALLOW_PATHS
    """--authorization-always-allow-paths; a trailing `*` makes an entry a prefix."""
    always_allow_groups: tuple[str, ...] = ("system:masters",)
    """Upstream's hard-coded AlwaysAllowGroups default (no flag)."""
    ca_file_poll_interval: float = 5.0
    """How often the CA files named by flags are checked for changes, seconds."""

    def __post_init__(self) -> None:
        for name in (
            "token_webhook_cache_ttl",
            "authorization_cache_authorized_ttl",
            "authorization_cache_unauthorized_ttl",
        ):
            if getattr(self, name) < 0:
                raise AuthConfigError(f"{name.replace('_', '-')} must not be negative")
        for name in ("token_review_timeout", "authorization_timeout", "ca_file_poll_interval"):
            if getattr(self, name) <= 0:
                raise AuthConfigError(f"{name.replace('_', '-')} must be positive")
        for flag, headers in (
            ("--requestheader-username-headers", self.requestheader_username_headers),
            ("--requestheader-group-headers", self.requestheader_group_headers),
            ("--requestheader-extra-headers-prefix", self.requestheader_extra_headers_prefix),
        ):
            for header in headers:
                if not header.strip():
                    raise AuthConfigError(f"{flag}: empty header {header!r}")
        if self.requestheader_client_ca_file and not self.requestheader_username_headers:
            # Upstream's RequestHeaderAuthenticationOptions.Validate.
            raise AuthConfigError(
                "--requestheader-username-headers must be set when "
                "--requestheader-client-ca-file is set"
            )
        validate_always_allow_paths(self.always_allow_paths)


def validate_always_allow_paths(paths: tuple[str, ...]) -> None:
    """Reject `*` anywhere but at the end, as path.NewAuthorizer does."""
    for p in paths:
        trimmed = p.removeprefix("/")
        if trimmed and "*" in trimmed[:-1]:
            raise AuthConfigError(
                f"--authorization-always-allow-paths: only a trailing * is allowed in {p!r}"
            )
