"""The serving certificate when no `--tls-cert-file`/`--tls-private-key-file` are given.

Like k8s `MaybeDefaultWithSelfSignedCerts`, a certificate for "localhost", 127.0.0.1 and this
host's name is generated into `--cert-dir` as `apiserver.crt`/`apiserver.key` and reused on the
next start when it is still usable. Unlike k8s we write one self-signed certificate (no
separate throw-away CA); clients pin it or, behind kube-apiserver, the APIService skips
verification or carries a caBundle for a real certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ServingError

__all__ = ["CERT_NAME", "KEY_NAME", "ServingCertPaths", "default_hosts", "ensure_serving_cert"]

CERT_NAME = "apiserver.crt"
KEY_NAME = "apiserver.key"
_VALIDITY = datetime.timedelta(days=365)
_RENEW_BEFORE = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ServingCertPaths:
    cert_file: str
    key_file: str
    generated: bool
    """True when this call wrote new files."""


def default_hosts() -> tuple[str, ...]:
    hosts = ["localhost", "127.0.0.1"]
    name = socket.gethostname()
    if name and name not in hosts:
        hosts.append(name)
    return tuple(hosts)


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _generate(hosts: tuple[str, ...], now: datetime.datetime) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"{hosts[0]}@{int(now.timestamp())}")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _usable(cert_path: str, key_path: str, hosts: tuple[str, ...], now: datetime.datetime) -> bool:
    """Existing files are reused only if they parse, match, cover `hosts` and are in date."""
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ) != key.public_key().public_bytes(serialization.Encoding.DER, pub):
        return False
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - _RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return all(name in san for name in _san(hosts))


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _ensure_sync(cert_dir: str, hosts: tuple[str, ...]) -> ServingCertPaths:
    cert_path = os.path.join(cert_dir, CERT_NAME)
    key_path = os.path.join(cert_dir, KEY_NAME)
    now = datetime.datetime.now(datetime.UTC)
    if _usable(cert_path, key_path, hosts, now):
        return ServingCertPaths(cert_path, key_path, generated=False)
    try:
        os.makedirs(cert_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ServingError(f"unable to create --cert-dir {cert_dir}: {exc}") from exc
    cert_pem, key_pem = _generate(hosts, now)
    # Key first: a crash in between leaves a mismatched pair, which _usable rejects next time.
    for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
        try:
            _write_atomically(path, data, mode)
        except OSError as exc:
            raise ServingError(
                f"unable to write self-signed serving certificate {path}: {exc}"
            ) from exc
    return ServingCertPaths(cert_path, key_path, generated=True)


async def ensure_serving_cert(
    cert_dir: str, hosts: tuple[str, ...] | None = None
) -> ServingCertPaths:
    """Return usable apiserver.crt/apiserver.key paths in `cert_dir`, generating them if needed."""
    chosen = hosts if hosts is not None else default_hosts()
    return await trio.to_thread.run_sync(_ensure_sync, cert_dir, chosen)
