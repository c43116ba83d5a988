"""Credentials: kubeconfig (token, client cert, exec plugin), in-cluster, token rotation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import trustme

from metrics_server.kube import credentials
from metrics_server.kube.credentials import BearerAuth, CredentialsError, load


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def kubeconfig(tmp_path: Path, ca: trustme.CA, user: dict[str, object]) -> Path:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority": str(ca_file),
                },
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


async def test_static_token_kubeconfig(tmp_path: Path, ca: trustme.CA) -> None:
    access = load(str(kubeconfig(tmp_path, ca, {"token": "static-token"})))
    assert access.host == "https://127.0.0.1:6443"
    assert await access.token() == "static-token"
    access.ssl_context()  # the CA file is usable


async def test_client_certificate_kubeconfig(tmp_path: Path, ca: trustme.CA) -> None:
    cert = ca.issue_cert("admin")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    access = load(
        str(
            kubeconfig(
                tmp_path, ca, {"client-certificate": str(cert_file), "client-key": str(key_file)}
            )
        )
    )
    assert access.cert_file and access.key_file
    assert not access.has_token
    access.ssl_context()  # loads the client chain


async def test_exec_plugin_kubeconfig(tmp_path: Path, ca: trustme.CA) -> None:
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', 'status': {'token': 'from-exec'}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }
    access = load(str(kubeconfig(tmp_path, ca, user)))
    assert await access.token() == "from-exec"


def test_bad_kubeconfigs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="missing"):
        load(str(tmp_path / "missing"))
    garbage = tmp_path / "garbage"
    garbage.write_text("{{{ not yaml")
    with pytest.raises(CredentialsError, match="garbage"):
        load(str(garbage))


def test_in_cluster_without_service_env_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="in-cluster"):
        load("", sa_dir=str(tmp_path), environ={})


async def test_in_cluster_token_is_reread(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("token-a")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    now = [1000.0]
    monkeypatch.setattr(credentials, "_clock", lambda: now[0])
    access = load("", sa_dir=str(tmp_path), environ=env)
    assert access.host == "https://127.0.0.1:6443"
    assert await access.token() == "token-a"

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200)

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), auth=BearerAuth(access)
    ) as client:
        (tmp_path / "token").write_text("token-b")  # the kubelet rotated it
        await client.get("https://api/")
        now[0] += credentials.TOKEN_REFRESH_SECONDS  # well within a minute
        await client.get("https://api/")
        (tmp_path / "token").unlink()  # a failed re-read keeps the last good token
        now[0] += credentials.TOKEN_REFRESH_SECONDS
        await client.get("https://api/")
    assert seen == ["Bearer token-a", "Bearer token-b", "Bearer token-b"]
    assert credentials.TOKEN_REFRESH_SECONDS <= 60
