"""The ASGI middleware that authenticates and authorizes every request before the API app.

Order and responses follow k8s.io/apiserver's handler chain:
* authentication first, on every path (a rejected credential is 401 even on /healthz):
  `Status` "Unauthorized";
* then authorization (always-allow groups and paths, then SubjectAccessReview): a denial is 403
  with upstream's exact message, e.g. `pods.metrics.k8s.io is forbidden: User "jane" cannot
  list resource "pods" in API group "metrics.k8s.io" in the namespace "default"`;
* a review backend failure is 500 `Internal Server Error: "<uri>": <error>` (text/plain), the
  way upstream's InternalError reports a webhook error. Nothing fails open.

The app sees the request without identity headers and without the Authorization header, and
finds the caller in `scope["extensions"]["user"]` (a UserInfo) and the parsed RequestInfo in
`scope["extensions"]["request_info"]`. The verified client certificate is read from the ASGI TLS
extension that `metrics_server.serving.peercert` puts in the scope.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509

from .authn import Authenticator
from .authz import Attributes, Authorizer, Decision
from .errors import AuthBackendError, AuthenticationFailed
from .requestinfo import parse_request_info

__all__ = ["AuthMiddleware", "forbidden_message", "go_quote"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}
_HTML_SANITIZE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def go_quote(s: str) -> str:
    """Go's %q (strconv.Quote) for valid UTF-8 strings."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def forbidden_message(attrs: Attributes, reason: str) -> str:
    """responsewriters.Forbidden + apierrors.NewForbidden, character for character."""
    user = go_quote(attrs.user.name)
    if not attrs.is_resource_request:
        msg = f"User {user} cannot {attrs.verb} path {go_quote(attrs.path)}"
    else:
        resource = attrs.resource
        if attrs.subresource:
            resource = f"{resource}/{attrs.subresource}"
        msg = (
            f"User {user} cannot {attrs.verb} resource {go_quote(resource)} "
            f"in API group {go_quote(attrs.api_group)}"
        )
        if attrs.namespace:
            msg += f" in the namespace {go_quote(attrs.namespace)}"
        else:
            msg += " at the cluster scope"
    msg = msg.translate(_HTML_SANITIZE)
    if reason:
        msg = f"{msg}: {reason}"
    if not attrs.resource:
        return f"forbidden: {msg}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    if attrs.name:
        return f"{qualified} {go_quote(attrs.name)} is forbidden: {msg}"
    return f"{qualified} is forbidden: {msg}"


def _status_body(code: int, reason: str, message: str, details: dict[str, str] | None) -> bytes:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def _respond(send: Send, code: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-cache, private"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _peer_cert(scope: Scope) -> x509.Certificate | None:
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    first = chain[0]
    try:
        return x509.load_pem_x509_certificate(first.encode() if isinstance(first, str) else first)
    except ValueError:
        return None


def _request_uri(scope: Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else scope["path"]
    qs = scope.get("query_string") or b""
    return f"{path}?{qs.decode('latin-1')}" if qs else path


class AuthMiddleware:
    """ASGI middleware: authenticate, authorize, then call `app` with a cleaned scope."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, authorizer: Authorizer) -> None:
        self.app = app
        self.authenticator = authenticator
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No websocket endpoints exist; refuse rather than skip the checks.
            await send({"type": "websocket.close", "code": 1008})
            return

        headers = list(scope.get("headers") or [])
        try:
            user = await self.authenticator.authenticate(headers, _peer_cert(scope))
        except AuthenticationFailed as exc:
            log.info("authentication failed for %s: %s", scope.get("path"), exc)
            await _respond(
                send,
                401,
                _status_body(401, "Unauthorized", "Unauthorized", None),
                b"application/json",
            )
            return

        info = parse_request_info(scope["method"], scope["path"], scope.get("query_string", b""))
        attrs = Attributes.from_request_info(user, info)
        try:
            decision, reason = await self.authorizer.authorize(attrs)
        except AuthBackendError as exc:
            log.warning("authorization failed for user %r on %s: %s", user.name, info.path, exc)
            message = f"Internal Server Error: {go_quote(_request_uri(scope))}: {exc}"
            await _respond(
                send,
                500,
                message.translate(_HTML_SANITIZE).encode() + b"\n",
                b"text/plain; charset=utf-8",
            )
            return
        if decision is not Decision.ALLOW:
            details = {
                k: v
                for k, v in (
                    ("name", attrs.name),
                    ("group", attrs.api_group),
                    ("kind", attrs.resource),
                )
                if v
            }
            body = _status_body(403, "Forbidden", forbidden_message(attrs, reason), details)
            log.info("forbidden: user %r %s %s", user.name, info.verb, info.path)
            await _respond(send, 403, body, b"application/json")
            return

        strip = self.authenticator.identity_header_matcher()
        clean = [(k, v) for k, v in headers if not strip(k) and k.lower() != b"authorization"]
        new_scope = dict(scope)
        new_scope["headers"] = clean
        extensions = dict(scope.get("extensions") or {})
        extensions["user"] = user
        extensions["request_info"] = info
        new_scope["extensions"] = extensions
        await self.app(new_scope, receive, send)
