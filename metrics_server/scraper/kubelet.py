"""One GET of a kubelet's /metrics/resource: TLS, credentials, deadline, size cap → bytes.

httpx errors never leave this module: every failure becomes a `ScrapeError` with a short
`reason` (for metrics and the start-up report) and a message that names the node and,
where we know the usual cause, a hint at the fix.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
import zlib
from dataclasses import dataclass

import httpx
import trio

from metrics_server.cli import KubeletOptions
from metrics_server.kube.credentials import BearerAuth, ClusterAccess, CredentialsError
from metrics_server.scraper.connection import KubeletConnection

MAX_BODY_BYTES = 32 * 1024 * 1024
"""A kubelet with 250 pods of 10 containers sends ~2 MB; anything past this is broken."""
CONNECT_MARGIN = 1.0
"""TCP connect and TLS handshake each time out this many seconds (at most half the timeout)
before --kubelet-request-timeout, so a busy process still sees them expire first."""


class ScrapeError(Exception):
    """One node's scrape failed. `reason` is a stable label: timeout, connect, tls, ..."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KubeletResponse:
    body: bytes
    request_time: int
    """Wall clock when the request started, ns since epoch (default sample time)."""


class KubeletTransport:
    """Shared TLS and auth settings; makes one keep-alive client per node."""

    def __init__(self, options: KubeletOptions, access: ClusterAccess) -> None:
        self._options = options
        self._auth: httpx.Auth | None = None
        ctx = self._ssl_context(options, access)
        if options.client_certificate:
            try:
                ctx.load_cert_chain(options.client_certificate, options.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise CredentialsError(
                    f"--kubelet-client-certificate/--kubelet-client-key unusable: {exc}"
                ) from exc
        elif access.cert_file and access.key_file:
            ctx.load_cert_chain(access.cert_file, access.key_file)
        if not options.client_certificate and access.has_token:
            self._auth = BearerAuth(access)
        self._ssl = ctx

    @staticmethod
    def _ssl_context(options: KubeletOptions, access: ClusterAccess) -> ssl.SSLContext:
        if options.insecure_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        cafile = options.certificate_authority or access.ca_file
        try:
            return ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            flag = (
                "--kubelet-certificate-authority"
                if options.certificate_authority
                else "the kubeconfig's certificate authority"
            )
            raise CredentialsError(f"{flag} ({cafile}) unusable: {exc}") from exc

    def client(self) -> httpx.AsyncClient:
        """A client holding at most one keep-alive connection (one per node)."""
        timeout = self._options.request_timeout / 1e9
        return httpx.AsyncClient(
            transport=KubeletConnection(self._ssl),
            auth=self._auth,
            # The caller's trio deadline bounds the whole request; the read timeout is a
            # backstop. Connecting gets its own, earlier timeout, so that a kubelet that
            # accepts and never completes the handshake is reported as such.
            timeout=httpx.Timeout(timeout + 1, connect=max(timeout / 2, timeout - CONNECT_MARGIN)),
            # gzip as Go's client asks for it: a kubelet's answer shrinks ~13x (42 KB to 3 KB
            # for 30 pods), and inflating it costs less than decrypting the difference.
            headers={
                "User-Agent": "metrics-server-py",
                "Accept": "text/plain",
                "Accept-Encoding": "gzip",
            },
            follow_redirects=False,
            trust_env=False,
        )

    async def scrape(
        self, client: httpx.AsyncClient, node: str, url: str, server_name: str | None
    ) -> KubeletResponse:
        """GET `url` within --kubelet-request-timeout; raise ScrapeError on any failure."""
        timeout = self._options.request_timeout / 1e9
        request_time = time.time_ns()
        extensions = {"sni_hostname": server_name} if server_name else None
        with trio.move_on_after(timeout) as deadline:
            try:
                request = client.build_request("GET", url, extensions=extensions)
                response = await client.send(request, stream=True)
                try:
                    body = await _read_capped(response, node)
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                raise _map_error(node, url, server_name, exc) from exc
        if deadline.cancelled_caught:
            raise ScrapeError(
                "timeout",
                f"node {node}: no complete answer from {url} within {timeout:g}s "
                "(--kubelet-request-timeout); is the kubelet overloaded or the port blocked?",
            )
        return KubeletResponse(body=body, request_time=request_time)


async def _read_capped(response: httpx.Response, node: str) -> bytes:
    if response.status_code != 200:
        raw = await _read_some(response, 300)
        if response.headers.get("content-encoding", "").strip().lower() == "gzip":
            with contextlib.suppress(zlib.error):  # else the raw bytes are still worth showing
                raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, 300)
        snippet = raw.decode("utf-8", "replace").strip()
        hint = ""
        if response.status_code in (401, 403):
            hint = (
                "; the kubelet rejected our credentials: check that the service account is "
                "bound to system:metrics-server (nodes/metrics get) and kubelet webhook authn/z"
            )
        raise ScrapeError(
            f"http_{response.status_code}",
            f"node {node}: kubelet answered HTTP {response.status_code}"
            f"{': ' + snippet if snippet else ''}{hint}",
        )
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ScrapeError(
            "body_too_large",
            f"node {node}: kubelet announced {int(length)} bytes, over the "
            f"{MAX_BODY_BYTES} byte limit",
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ScrapeError(
            "protocol",
            f"node {node}: kubelet answered with Content-Encoding {encoding!r}; "
            "only gzip and identity are understood",
        )
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        if inflate is not None:
            try:
                # At most one byte past the cap: a gzip bomb never expands in memory.
                chunk = inflate.decompress(chunk, MAX_BODY_BYTES - size + 1)  # noqa: PLW2901
            except zlib.error as exc:
                raise ScrapeError(
                    "protocol", f"node {node}: kubelet sent a corrupt gzip body: {exc}"
                ) from exc
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ScrapeError(
                "body_too_large",
                f"node {node}: kubelet body exceeds the {MAX_BODY_BYTES} byte limit",
            )
        parts.append(chunk)
    if inflate is not None and not inflate.eof:
        raise ScrapeError("protocol", f"node {node}: kubelet's gzip body ends before its end")
    return b"".join(parts)


async def _read_some(response: httpx.Response, limit: int) -> bytes:
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _map_error(
    node: str, url: str, server_name: str | None, exc: httpx.HTTPError
) -> ScrapeError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        # OpenSSL's sentences end with a full stop; ours continue after a semicolon.
        detail = (cause.verify_message or str(cause)).rstrip(".")
        host = url.split("//", 1)[1].rsplit(":", 1)[0]
        if "IP address mismatch" in detail:
            return ScrapeError(
                "tls_no_ip_san",
                f"node {node}: certificate has no IP SAN for {host}: {detail}; "
                "dial by name with --kubelet-preferred-address-types=Hostname, or keep "
                "verification and use --kubelet-tls-server-name-from-node "
                "(never --kubelet-insecure-tls in production)",
            )
        if "Hostname mismatch" in detail:
            name = server_name or host
            return ScrapeError(
                "tls_name_mismatch",
                f"node {node}: kubelet certificate is not valid for {name}: {detail}",
            )
        if "expired" in detail or "not yet valid" in detail:
            return ScrapeError("tls_expired", f"node {node}: kubelet certificate {detail}")
        return ScrapeError(
            "tls_unknown_ca",
            f"node {node}: kubelet certificate not trusted: {detail}; "
            "check --kubelet-certificate-authority (default: the cluster CA)",
        )
    if isinstance(cause, ssl.SSLError):
        return ScrapeError("tls", f"node {node}: TLS handshake with {url} failed: {cause}")
    if isinstance(exc, httpx.ConnectError):
        text = str(exc) or type(exc).__name__
        # The resolver's wording varies by libc and by cause; its exception type does not.
        reason = "dns" if _caused_by(exc, socket.gaierror) else "connect"
        return ScrapeError(reason, f"node {node}: cannot connect to {url}: {text}")
    if isinstance(exc, httpx.ConnectTimeout):
        return ScrapeError(
            "timeout",
            f"node {node}: no connection to {url} within --kubelet-request-timeout "
            "(TCP connect or TLS handshake did not finish); is the kubelet overloaded or the "
            "port blocked?",
        )
    if isinstance(exc, httpx.TimeoutException):
        return ScrapeError("timeout", f"node {node}: {url} timed out: {type(exc).__name__}")
    if isinstance(exc, httpx.RemoteProtocolError) and "closed" not in str(exc):
        return ScrapeError("protocol", f"node {node}: kubelet answer is not valid HTTP/1.1: {exc}")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ScrapeError(
            "protocol",
            f"node {node}: kubelet connection broke mid-answer: {exc or type(exc).__name__}",
        )
    return ScrapeError("http", f"node {node}: request to {url} failed: {exc!r}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
