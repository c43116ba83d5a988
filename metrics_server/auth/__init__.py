"""Delegated authentication and authorization, as k8s.io/apiserver does it for aggregated servers.

Decisions live here (who is calling, may they do this); HTTP plumbing is limited to one ASGI
middleware. Modules: `config` (flags), `sources` (live CA bundles), `lookup` (the
extension-apiserver-authentication ConfigMap), `certverify` (which CA signed a certificate),
`authn`, `tokenreview`, `authz`, `requestinfo`, `middleware`, `stack` (assembly).
"""

from .authn import Authenticator
from .authz import Attributes, Authorizer, Decision, SubjectAccessReviewer
from .config import AuthConfig
from .errors import (
    AuthBackendError,
    AuthConfigError,
    AuthenticationFailed,
    AuthError,
    AuthLookupError,
)
from .lookup import ConfigMapWatcher
from .middleware import AuthMiddleware
from .requestinfo import RequestInfo, parse_request_info
from .sources import AuthSnapshot, AuthSources, RequestHeaderSettings
from .stack import AuthStack, build_auth_stack
from .tokenreview import TokenReviewer
from .user import ANONYMOUS, UserInfo

__all__ = [
    "ANONYMOUS",
    "Attributes",
    "AuthBackendError",
    "AuthConfig",
    "AuthConfigError",
    "AuthError",
    "AuthLookupError",
    "AuthMiddleware",
    "AuthSnapshot",
    "AuthSources",
    "AuthStack",
    "AuthenticationFailed",
    "Authenticator",
    "Authorizer",
    "ConfigMapWatcher",
    "Decision",
    "RequestHeaderSettings",
    "RequestInfo",
    "SubjectAccessReviewer",
    "TokenReviewer",
    "UserInfo",
    "build_auth_stack",
    "parse_request_info",
]
