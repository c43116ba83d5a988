"""The remembered verification of a client certificate never outlives what it proved."""

from __future__ import annotations

import datetime

import pytest
import trustme
from cryptography import x509

from metrics_server.auth.certverify import (
    ACCEPTED_TTL,
    CertificateRejected,
    parse_ca_bundle,
)


def leaf_of(ca: trustme.CA, days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    cert = ca.issue_cert("front-proxy-client", not_after=now + datetime.timedelta(days=days))
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


def test_accepted_until_expiry_only() -> None:
    ca = trustme.CA()
    bundle = parse_ca_bundle(ca.cert_pem.bytes(), "test")
    leaf = leaf_of(ca, days=1)
    now = datetime.datetime.now(datetime.UTC)
    bundle.verify(leaf, now)
    bundle.verify(leaf, now + ACCEPTED_TTL / 2)  # remembered
    after_expiry = leaf.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(CertificateRejected):
        bundle.verify(leaf, after_expiry)


def test_rotated_bundle_does_not_inherit_acceptance() -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    leaf = leaf_of(old_ca, days=1)
    now = datetime.datetime.now(datetime.UTC)
    parse_ca_bundle(old_ca.cert_pem.bytes(), "old").verify(leaf, now)
    rotated = parse_ca_bundle(new_ca.cert_pem.bytes(), "new")
    with pytest.raises(CertificateRejected):
        rotated.verify(leaf, now)


def test_unknown_ca_is_rejected_every_time() -> None:
    ca, other = trustme.CA(), trustme.CA()
    bundle = parse_ca_bundle(ca.cert_pem.bytes(), "test")
    leaf = leaf_of(other, days=1)
    now = datetime.datetime.now(datetime.UTC)
    for _ in range(2):
        with pytest.raises(CertificateRejected):
            bundle.verify(leaf, now)
