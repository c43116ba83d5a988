"""Server-side `ssl.SSLContext`s built from the upstream TLS flags.

* `--tls-min-version` VersionTLS10|11|12|13 (default TLS 1.2, like k8s' serving default).
* `--tls-cipher-suites` takes Go/IANA names. Names Go lists in `tls.InsecureCipherSuites()` (RC4,
  3DES, CBC-SHA256) are refused at start-up although upstream only warns; unknown names are
  refused too. TLS 1.3 suites are accepted and, as in Go, not configurable (OpenSSL's defaults).
  Unset means OpenSSL's Python defaults (ECDHE with AES-GCM/ChaCha20, no SHA-1 MACs).
* ALPN offers h2 and http/1.1: Hypercorn speaks both, and kube-apiserver's aggregator reuses
  HTTP/2 connections to aggregated servers; h2 concurrency is bounded in `server.py`.
* Client certificates are requested, not required (`CERT_OPTIONAL`), and verified against the
  union of the client CA and request-header CA, like upstream's ApplyClientCert. Difference:
  Go accepts any certificate at the handshake and judges it per request, whereas OpenSSL
  aborts the handshake when a presented certificate does not verify; that is stricter, never
  laxer. With no CA at all, no certificate is requested (such connections are retired once a
  CA appears: see `peercert.py`).
"""

from __future__ import annotations

import ssl
import warnings
from dataclasses import dataclass

from .errors import ServingError

__all__ = [
    "CIPHER_SUITES",
    "INSECURE_CIPHER_SUITES",
    "TLSOptions",
    "build_server_context",
    "cipher_suite_id",
    "parse_cipher_suites",
    "parse_min_version",
    "tls_version_id",
]

# Go name → (IANA id, OpenSSL name or None for TLS 1.3 suites).
CIPHER_SUITES: dict[str, tuple[int, str | None]] = {
    "TLS_AES_128_GCM_SHA256": (0x1301, None),
    "TLS_AES_256_GCM_SHA384": (0x1302, None),
    "TLS_CHACHA20_POLY1305_SHA256": (0x1303, None),
    "TLS_RSA_WITH_AES_128_CBC_SHA": (0x002F, "AES128-SHA"),
    "TLS_RSA_WITH_AES_256_CBC_SHA": (0x0035, "AES256-SHA"),
    "TLS_RSA_WITH_AES_128_GCM_SHA256": (0x009C, "AES128-GCM-SHA256"),
    "TLS_RSA_WITH_AES_256_GCM_SHA384": (0x009D, "AES256-GCM-SHA384"),
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": (0xC009, "ECDHE-ECDSA-AES128-SHA"),
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": (0xC00A, "ECDHE-ECDSA-AES256-SHA"),
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": (0xC013, "ECDHE-RSA-AES128-SHA"),
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": (0xC014, "ECDHE-RSA-AES256-SHA"),
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": (0xC02B, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": (0xC02C, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": (0xC02F, "ECDHE-RSA-AES128-GCM-SHA256"),
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": (0xC030, "ECDHE-RSA-AES256-GCM-SHA384"),
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": (0xCCA8, "ECDHE-RSA-CHACHA20-POLY1305"),
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": (0xCCA9, "ECDHE-ECDSA-CHACHA20-POLY1305"),
}
# Legacy spellings Go and k8s still accept.
_ALIASES = {
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
INSECURE_CIPHER_SUITES = frozenset(
    {
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    }
)
_OPENSSL_TO_ID = {ossl: iana for iana, ossl in CIPHER_SUITES.values() if ossl}
_OPENSSL_TO_ID.update({name: iana for name, (iana, ossl) in CIPHER_SUITES.items() if not ossl})

_MIN_VERSIONS = {
    "VersionTLS10": ssl.TLSVersion.TLSv1,
    "VersionTLS11": ssl.TLSVersion.TLSv1_1,
    "VersionTLS12": ssl.TLSVersion.TLSv1_2,
    "VersionTLS13": ssl.TLSVersion.TLSv1_3,
}
_VERSION_IDS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
ALPN_PROTOCOLS = ("h2", "http/1.1")


def parse_min_version(value: str) -> ssl.TLSVersion:
    """`--tls-min-version`; empty means TLS 1.2."""
    if not value:
        return ssl.TLSVersion.TLSv1_2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _MIN_VERSIONS[value]
    except KeyError:
        allowed = ", ".join(_MIN_VERSIONS)
        raise ServingError(
            f"--tls-min-version: unknown TLS version {value!r} (allowed: {allowed})"
        ) from None


def parse_cipher_suites(names: tuple[str, ...]) -> tuple[str, ...]:
    """Map `--tls-cipher-suites` to OpenSSL names (TLS ≤ 1.2 only); () means defaults."""
    openssl: list[str] = []
    for raw in names:
        name = _ALIASES.get(raw.strip(), raw.strip())
        if name in INSECURE_CIPHER_SUITES:
            raise ServingError(f"--tls-cipher-suites: cipher suite {raw} is insecure; refusing it")
        if name not in CIPHER_SUITES:
            raise ServingError(f"--tls-cipher-suites: unknown cipher suite {raw}")
        ossl = CIPHER_SUITES[name][1]
        if ossl is None:
            continue
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.set_ciphers(ossl)
        except ssl.SSLError as exc:
            raise ServingError(
                f"--tls-cipher-suites: cipher suite {raw} is not available in this OpenSSL"
            ) from exc
        openssl.append(ossl)
    return tuple(openssl)


def cipher_suite_id(openssl_name: str) -> int | None:
    return _OPENSSL_TO_ID.get(openssl_name)


def tls_version_id(version: str | None) -> int | None:
    return _VERSION_IDS.get(version or "")


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """Validated TLS flags."""

    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    ciphers: tuple[str, ...] = ()
    """OpenSSL names for TLS ≤ 1.2; empty means OpenSSL's Python defaults."""
    cipher_flag_given: bool = False

    @classmethod
    def from_flags(cls, min_version: str, cipher_suites: tuple[str, ...]) -> TLSOptions:
        version = parse_min_version(min_version)
        ciphers = parse_cipher_suites(cipher_suites)
        if cipher_suites and not ciphers and version < ssl.TLSVersion.TLSv1_3:
            raise ServingError(
                "--tls-cipher-suites names only TLS 1.3 suites; "
                "set --tls-min-version=VersionTLS13 or add TLS 1.2 suites"
            )
        return cls(min_version=version, ciphers=ciphers, cipher_flag_given=bool(cipher_suites))


def build_server_context(
    cert_file: str, key_file: str, options: TLSOptions, client_ca_pem: bytes
) -> ssl.SSLContext:
    """A fresh server context. Blocking (reads the key pair): call it from a worker thread."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = options.min_version
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if options.ciphers:
        ctx.set_ciphers(":".join(options.ciphers))
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ServingError(
            f"unable to load serving certificate {cert_file} / key {key_file}: {exc}"
        ) from exc
    if client_ca_pem.strip():
        try:
            ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        except (ssl.SSLError, ValueError) as exc:
            raise ServingError(f"unable to load client CA bundle: {exc}") from exc
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
