"""Deciding which CA bundle vouches for a client certificate.

The TLS layer has already verified the presented chain against the *union* of the client CA
and the request-header CA (Python's ssl can only load one trust store per context), so it
cannot tell us which of the two signed it. Here the leaf is re-verified against one bundle at a
time with `cryptography.x509.verification`, using the rules Go's crypto/x509 applies for
k8s.io/apiserver (`DefaultVerifyOptions`: key usage clientAuth):

* every certificate in a bundle is a trust anchor (like Go's `CertPool` roots), so an
  intermediate CA placed in the bundle works;
* issuers must have basicConstraints CA=true, and keyUsage keyCertSign when keyUsage is present;
* the leaf's extendedKeyUsage, when present, must contain clientAuth (or anyExtendedKeyUsage);
* validity periods are checked at the given time.

Limitation: Python 3.11's ssl exposes only the peer's leaf certificate (the verified chain
arrives in 3.13), so intermediates that a client sends on the wire but that are not in the
bundle cannot be used here; such clients are not authenticated by certificate.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    ClientVerifier,
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from .errors import AuthConfigError

__all__ = ["EMPTY_BUNDLE", "CABundle", "CertificateRejected", "parse_ca_bundle"]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class CertificateRejected(Exception):
    """The leaf does not chain to this bundle (or is expired, not yet valid, wrong usage)."""


def _issuer_is_ca(_policy: Policy, _cert: x509.Certificate, ext: x509.BasicConstraints) -> None:
    if not ext.ca:
        raise ValueError("issuer is not a CA (basicConstraints CA=false)")


def _issuer_may_sign(_policy: Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("issuer keyUsage lacks keyCertSign")


def _leaf_for_client_auth(
    _policy: Policy, _cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None
) -> None:
    if ext is None:
        return  # Go: no EKU extension means any usage
    usages = list(ext)
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH not in usages
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages
    ):
        raise ValueError("extendedKeyUsage lacks clientAuth")


def _policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    ca = (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _issuer_is_ca)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _issuer_may_sign)
    )
    ee = ExtensionPolicy.permit_all().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _leaf_for_client_auth
    )
    return ca, ee


ACCEPTED_TTL = datetime.timedelta(minutes=5)
ACCEPTED_MAX = 1024


@dataclass(frozen=True, slots=True)
class CABundle:
    """A parsed CA bundle: its PEM bytes (for the TLS context) and certificates (for checks)."""

    pem: bytes
    certs: tuple[x509.Certificate, ...] = field(default=(), compare=False)
    source: str = field(default="", compare=False)
    """Where it came from (a file path or `configmap/...`), for logs and errors."""
    _accepted: dict[bytes, datetime.datetime] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def empty(self) -> bool:
        return not self.certs

    def verify(self, leaf: x509.Certificate, now: datetime.datetime) -> None:
        """Raise CertificateRejected unless `leaf` chains to this bundle and is valid at `now`."""
        if not self.certs:
            raise CertificateRejected("empty CA bundle")
        # The aggregator presents the same front-proxy certificate on every request; a
        # successful verification is remembered (per bundle, so a CA rotation forgets it)
        # until the certificate expires or for ACCEPTED_TTL, whichever comes first.
        key = leaf.fingerprint(hashes.SHA256())
        until = self._accepted.get(key)
        if until is not None and now < until:
            return
        self._verify(leaf, now)
        if len(self._accepted) >= ACCEPTED_MAX:
            self._accepted.clear()
        self._accepted[key] = min(leaf.not_valid_after_utc, now + ACCEPTED_TTL)

    def _verify(self, leaf: x509.Certificate, now: datetime.datetime) -> None:
        ca_policy, ee_policy = _policies()
        verifier: ClientVerifier = (
            PolicyBuilder()
            .store(Store(list(self.certs)))
            .time(now)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, [])
        except VerificationError as exc:
            raise CertificateRejected(str(exc)) from exc


EMPTY_BUNDLE = CABundle(pem=b"", certs=(), source="")


def parse_ca_bundle(pem: bytes, source: str) -> CABundle:
    """Parse a PEM bundle; any garbage, or no certificate at all, is an AuthConfigError."""
    if not pem.strip():
        return CABundle(pem=b"", certs=(), source=source)
    if _PEM_BEGIN not in pem:
        raise AuthConfigError(f"{source}: no PEM certificate found")
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise AuthConfigError(f"{source}: invalid PEM certificate bundle: {exc}") from exc
    # Normalise so that the TLS context and the verifier see exactly the same anchors.
    normalised = b"".join(c.public_bytes(Encoding.PEM) for c in certs)
    return CABundle(pem=normalised, certs=certs, source=source)
