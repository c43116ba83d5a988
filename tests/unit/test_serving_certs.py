"""Self-signed serving certificate generation and reuse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from cryptography import x509

from metrics_server.serving import ServingError, ensure_serving_cert

HOSTS = ("localhost", "127.0.0.1", "myhost")


async def test_generates_then_reuses(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    first = await ensure_serving_cert(str(d), HOSTS)
    assert first.generated and d.is_dir()
    cert = x509.load_pem_x509_certificate(await trio.Path(first.cert_file).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "myhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.issuer == cert.subject
    assert os.stat(first.key_file).st_mode & 0o077 == 0
    again = await ensure_serving_cert(str(d), HOSTS)
    assert not again.generated
    assert (
        await trio.Path(again.cert_file).read_bytes()
        == await trio.Path(first.cert_file).read_bytes()
    )


async def test_regenerates_when_broken_or_hosts_change(tmp_path: Path) -> None:
    first = await ensure_serving_cert(str(tmp_path), HOSTS)
    assert (await ensure_serving_cert(str(tmp_path), (*HOSTS, "other"))).generated
    await trio.Path(first.key_file).write_bytes(b"junk")
    assert (await ensure_serving_cert(str(tmp_path), HOSTS)).generated


async def test_unwritable_dir_is_a_serving_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub"  # a directory under a regular file: ENOTDIR even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro
    with pytest.raises(ServingError, match=str(target)):
        await ensure_serving_cert(str(target), HOSTS)
