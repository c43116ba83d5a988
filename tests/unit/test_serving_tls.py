"""TLS flag parsing and server contexts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from metrics_server.serving import ServingConfig, ServingError, TLSOptions
from metrics_server.serving.tls import build_server_context, cipher_suite_id, parse_min_version


@pytest.mark.parametrize(
    ("flag", "version"),
    [
        ("", ssl.TLSVersion.TLSv1_2),
        ("VersionTLS12", ssl.TLSVersion.TLSv1_2),
        ("VersionTLS13", ssl.TLSVersion.TLSv1_3),
    ],
)
def test_min_version(flag: str, version: ssl.TLSVersion) -> None:
    assert parse_min_version(flag) == version


def test_unknown_min_version() -> None:
    with pytest.raises(ServingError, match="VersionTLS14"):
        parse_min_version("VersionTLS14")


def test_cipher_names_map_to_openssl() -> None:
    opts = TLSOptions.from_flags(
        "",
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            "TLS_AES_128_GCM_SHA256",
        ),
    )
    assert opts.ciphers == ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305")


@pytest.mark.parametrize(
    "name",
    [
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    ],
)
def test_insecure_ciphers_rejected(name: str) -> None:
    with pytest.raises(ServingError, match=f"{name} is insecure"):
        TLSOptions.from_flags("", ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", name))


def test_unknown_cipher_rejected() -> None:
    with pytest.raises(ServingError, match="unknown cipher suite TLS_FOO"):
        TLSOptions.from_flags("", ("TLS_FOO",))


def test_only_tls13_suites_need_tls13_minimum() -> None:
    with pytest.raises(ServingError, match="VersionTLS13"):
        TLSOptions.from_flags("", ("TLS_AES_128_GCM_SHA256",))
    assert TLSOptions.from_flags("VersionTLS13", ("TLS_AES_128_GCM_SHA256",)).ciphers == ()


def test_cipher_ids() -> None:
    assert cipher_suite_id("ECDHE-RSA-AES128-GCM-SHA256") == 0xC02F
    assert cipher_suite_id("TLS_AES_256_GCM_SHA384") == 0x1302
    assert cipher_suite_id("NOPE") is None


def test_context_requests_client_certs_only_with_cas(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    crt, key = tmp_path / "c.pem", tmp_path / "k.pem"
    leaf.cert_chain_pems[0].write_to_path(str(crt))
    leaf.private_key_pem.write_to_path(str(key))
    opts = TLSOptions()
    ctx = build_server_context(str(crt), str(key), opts, b"")
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    ctx = build_server_context(str(crt), str(key), opts, trustme.CA().cert_pem.bytes())
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    with pytest.raises(ServingError, match=r"c\.pem"):
        build_server_context(str(crt), str(tmp_path / "missing.pem"), opts, b"")


def test_serving_config_validation() -> None:
    with pytest.raises(ServingError, match="together"):
        ServingConfig(tls_cert_file="a")
    with pytest.raises(ServingError, match="secure-port"):
        ServingConfig(secure_port=70000)
