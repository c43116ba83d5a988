"""Authentication: who is calling, in k8s.io/apiserver's delegating order.

1. request-header: a client certificate verified by the request-header CA (and, when allowed
   names are set, with one of those CNs) lets the identity headers speak: the user is the
   first non-empty username header (the first value when a header repeats, like Go's
   `Header.Get`), groups are every non-empty value of every group header, extras come from the
   prefix headers (key lowercased then %-unescaped);
2. x509: a client certificate verified by the client CA: user = CN, groups = O;
3. bearer token: TokenReview;
4. anonymous (system:anonymous, system:unauthenticated).

Like upstream's union authenticator, the first success wins and failures are collected; if
nothing succeeds and anything failed (a rejected token, a front-proxy CN not allowed, a
certificate no bundle vouches for), the request is refused with 401 rather than treated as
anonymous. Header names are matched case-insensitively (ASGI servers hand them lowercased).
Identity headers are only ever read in step 1; the middleware strips them before the app.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Sequence
from types import MappingProxyType

from cryptography import x509
from cryptography.x509.oid import NameOID

from .certverify import CertificateRejected
from .errors import AuthBackendError, AuthenticationFailed
from .sources import AuthSnapshot, AuthSources, RequestHeaderSettings
from .tokenreview import TokenReviewer
from .user import ANONYMOUS, UserInfo

__all__ = ["Authenticator", "Headers", "path_unescape"]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[bytes, bytes]]
"""Raw ASGI headers: (lowercase name, value) in the order received."""

_HEX = re.compile(r"%([0-9A-Fa-f]{2})")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def path_unescape(s: str) -> str:
    """Go's url.PathUnescape; on a malformed escape, the input is returned unchanged."""
    if "%" not in s:
        return s
    out = bytearray()
    i = 0
    raw = s.encode()
    while i < len(raw):
        if raw[i] == 0x25:  # '%'
            if _HEX.fullmatch(s[i : i + 3]) is None:
                return s
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", errors="replace")


def _decode(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _values(headers: Headers, name: str) -> list[str]:
    wanted = name.lower().encode("latin-1")
    return [_decode(v) for k, v in headers if k.lower() == wanted]


def _cn(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def _orgs(cert: x509.Certificate) -> tuple[str, ...]:
    out: list[str] = []
    for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME):
        value = attr.value
        out.append(value if isinstance(value, str) else value.decode("utf-8", errors="replace"))
    return tuple(out)


def _cert_id(cert: x509.Certificate) -> str:
    return f"SN={cert.serial_number}"


def identity_header_matcher(settings: RequestHeaderSettings | None) -> Callable[[bytes], bool]:
    """Predicate for headers that carry identity and must never reach the app.

    Upstream clears them only after a successful request-header authentication; we always
    drop them (and the default X-Remote-* names) so nothing downstream can be fooled.
    """
    exact = {b"x-remote-user", b"x-remote-group", b"x-remote-uid"}
    prefixes = [b"x-remote-extra-"]
    if settings is not None:
        exact |= {h.lower().encode("latin-1") for h in settings.username_headers}
        exact |= {h.lower().encode("latin-1") for h in settings.group_headers}
        prefixes += [p.lower().encode("latin-1") for p in settings.extra_headers_prefix]

    def matches(name: bytes) -> bool:
        lowered = name.lower()
        return lowered in exact or any(lowered.startswith(p) for p in prefixes)

    return matches


def _bearer_token(headers: Headers) -> str | None:
    values = _values(headers, "authorization")
    if not values:
        return None
    auth = values[0].strip()  # Header.Get: the first value only
    if not auth:
        return None
    parts = auth.split(" ")
    if len(parts) < 2 or parts[0].lower() != "bearer":
        return None
    return parts[1] or None


class Authenticator:
    """Turns a request's certificate and headers into a UserInfo, or raises AuthenticationFailed.

    `token_reviewer` None means no cluster credentials: any bearer token is then refused (401)
    instead of silently becoming anonymous.
    """

    def __init__(
        self,
        sources: AuthSources,
        token_reviewer: TokenReviewer | None,
        *,
        now: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.sources = sources
        self.token_reviewer = token_reviewer
        self._now = now

    def identity_header_matcher(self) -> Callable[[bytes], bool]:
        return identity_header_matcher(self.sources.snapshot().request_header)

    async def authenticate(self, headers: Headers, peer_cert: x509.Certificate | None) -> UserInfo:
        snap = self.sources.snapshot()
        errors: list[str] = []
        now = self._now()
        if peer_cert is not None:
            user = self._request_header(snap, headers, peer_cert, now, errors)
            if user is None:
                user = self._client_cert(snap, peer_cert, now, errors)
            if user is not None:
                return user.with_authenticated_group()
        token = _bearer_token(headers)
        if token is not None:
            if self.token_reviewer is None:
                errors.append("bearer token presented but token review is not configured")
            else:
                try:
                    user = await self.token_reviewer.review(token)
                except AuthBackendError as exc:
                    errors.append(str(exc))
                else:
                    if user is not None:
                        return user.with_authenticated_group()
                    errors.append("invalid bearer token")
        if errors:
            raise AuthenticationFailed(errors)
        return ANONYMOUS

    def _request_header(
        self,
        snap: AuthSnapshot,
        headers: Headers,
        cert: x509.Certificate,
        now: datetime.datetime,
        errors: list[str],
    ) -> UserInfo | None:
        rh = snap.request_header
        if rh is None or rh.ca.empty:
            return None
        try:
            rh.ca.verify(cert, now)
        except CertificateRejected as exc:
            errors.append(f"request-header: verifying certificate {_cert_id(cert)} failed: {exc}")
            return None
        cn = _cn(cert)
        if rh.allowed_names and cn not in rh.allowed_names:
            errors.append(f"x509: subject with cn={cn} is not in the allowed list")
            return None
        name = ""
        for header in rh.username_headers:
            values = _values(headers, header)
            if values and values[0]:
                name = values[0]
                break
        if not name:
            return None
        groups = [v for header in rh.group_headers for v in _values(headers, header) if v]
        extra: dict[str, list[str]] = {}
        for prefix in rh.extra_headers_prefix:
            wanted = prefix.lower().encode("latin-1")
            for k, v in headers:
                lowered = k.lower()
                if lowered.startswith(wanted):
                    key = path_unescape(lowered[len(wanted) :].decode("latin-1"))
                    extra.setdefault(key, []).append(_decode(v))
        return UserInfo(
            name=name,
            groups=tuple(groups),
            extra=MappingProxyType({k: tuple(v) for k, v in extra.items()}),
            authenticated_by="request-header",
        )

    def _client_cert(
        self,
        snap: AuthSnapshot,
        cert: x509.Certificate,
        now: datetime.datetime,
        errors: list[str],
    ) -> UserInfo | None:
        if snap.client_ca.empty:
            return None
        try:
            snap.client_ca.verify(cert, now)
        except CertificateRejected as exc:
            errors.append(f"verifying certificate {_cert_id(cert)} failed: {exc}")
            return None
        cn = _cn(cert)
        if not cn:
            return None
        return UserInfo(name=cn, groups=_orgs(cert), authenticated_by="x509")
