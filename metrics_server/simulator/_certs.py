"""The simulated cluster's PKI: its certificate authorities, leaf certificates and PEM files.

Four CAs as in a kubeadm cluster (cluster, kubelet, front-proxy, client) plus a stray "wrong"
CA used to fake a kubelet whose certificate nobody trusts. Everything is generated with
trustme in memory and the files a client needs are written under `<workdir>/pki`.

Healthy kubelets share one serving context, so 5,000 kubelets cost one key and one
certificate, not 5,000: it presents a certificate for 127.0.0.1, and a client that asks for a
name by SNI (`--kubelet-tls-server-name-from-node`) gets a certificate for that name, issued on
first use and cached. A real kubelet only holds its own name; our clients only ever ask a
kubelet for its own name, so the difference is never observable to them.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["PKI", "KubeletCertKind"]

KubeletCertKind = str
""""normal", "no-ip-san" or "wrong-ca": which certificate a kubelet presents."""

LOCAL_IDENTITIES = ("127.0.0.1", "localhost")


@dataclass(slots=True, frozen=True)
class _Pair:
    cert: Path
    key: Path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    # A bare server context: create_default_context would also load the system trust store,
    # which costs ~1 ms per kubelet and is useless for a server that asks for no client cert.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    return ctx


class PKI:
    """Generates and holds every key and certificate of one simulated cluster."""

    def __init__(self, directory: Path, *, kubelet_ca: trustme.CA | None = None) -> None:
        self.directory = directory
        self._kubelet_shared: ssl.SSLContext | None = None
        self._kubelet_named: dict[str, ssl.SSLContext] = {}
        directory.mkdir(parents=True, exist_ok=True)
        self.cluster_ca = trustme.CA(organization_name="kubernetes")
        # Kubelet shard processes (`_shards.py`) serve with the main process's kubelet CA.
        self.kubelet_ca = kubelet_ca or trustme.CA(organization_name="kubelet")
        self.front_proxy_ca = trustme.CA(organization_name="front-proxy")
        self.client_ca = trustme.CA(organization_name="client")
        self.wrong_ca = trustme.CA(organization_name="somebody-else")

        self.cluster_ca_file = self._ca_file("ca.crt", self.cluster_ca)
        self.kubelet_ca_file = self._ca_file("kubelet-ca.crt", self.kubelet_ca)
        self.front_proxy_ca_file = self._ca_file("front-proxy-ca.crt", self.front_proxy_ca)
        self.client_ca_file = self._ca_file("client-ca.crt", self.client_ca)
        self.wrong_ca_file = self._ca_file("wrong-ca.crt", self.wrong_ca)

        self._apiserver_leaf = self.cluster_ca.issue_cert(
            *LOCAL_IDENTITIES, common_name="kube-apiserver"
        )
        apiserver = self._pair("apiserver", self._apiserver_leaf)
        self.apiserver_cert_file, self.apiserver_key_file = apiserver.cert, apiserver.key
        metrics = self._pair(
            "metrics-server",
            self.cluster_ca.issue_cert(*LOCAL_IDENTITIES, common_name="metrics-server"),
        )
        self.metrics_server_cert_file, self.metrics_server_key_file = metrics.cert, metrics.key
        # Client certificates carry their CN as a DNS SAN too: trustme always writes a SAN
        # extension, and cryptography >= 51 refuses an empty one.
        front = self._pair(
            "front-proxy-client",
            self.front_proxy_ca.issue_cert("front-proxy-client", common_name="front-proxy-client"),
        )
        self.front_proxy_client_cert_file, self.front_proxy_client_key_file = front.cert, front.key
        admin = self._pair(
            "admin",
            self.client_ca.issue_cert(
                "kubernetes-admin",
                common_name="kubernetes-admin",
                organization_name="system:masters",
            ),
        )
        self.admin_client_cert_file, self.admin_client_key_file = admin.cert, admin.key

    def _ca_file(self, name: str, ca: trustme.CA) -> Path:
        return _write(self.directory / name, ca.cert_pem.bytes())

    def _pair(self, stem: str, leaf: trustme.LeafCert) -> _Pair:
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return _Pair(
            cert=_write(self.directory / f"{stem}.crt", chain),
            key=_write(self.directory / f"{stem}.key", leaf.private_key_pem.bytes()),
        )

    def apiserver_context(self) -> ssl.SSLContext:
        """Server context of the fake kube-apiserver; client certificates are optional."""
        ctx = _server_context(self._apiserver_leaf)
        return ctx

    def kubelet_context(self, node: str, kind: KubeletCertKind = "normal") -> ssl.SSLContext:
        """A serving context for one kubelet: the shared one when healthy, else a fresh one."""
        if kind == "normal":
            return self._shared_kubelet_context()
        if kind == "no-ip-san":
            leaf = self.kubelet_ca.issue_cert(node, common_name=node)
        elif kind == "wrong-ca":
            leaf = self.wrong_ca.issue_cert("127.0.0.1", node, common_name=node)
        else:
            raise ValueError(f"unknown kubelet certificate kind {kind!r}")
        return _server_context(leaf)

    def _shared_kubelet_context(self) -> ssl.SSLContext:
        if self._kubelet_shared is None:
            ctx = _server_context(
                self.kubelet_ca.issue_cert("127.0.0.1", common_name="kubelet")
            )
            ctx.sni_callback = self._kubelet_by_name
            self._kubelet_shared = ctx
        return self._kubelet_shared

    def _kubelet_by_name(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        if not server_name:
            return
        ctx = self._kubelet_named.get(server_name)
        if ctx is None:
            leaf = self.kubelet_ca.issue_cert("127.0.0.1", server_name, common_name=server_name)
            ctx = self._kubelet_named[server_name] = _server_context(leaf)
        conn.context = ctx

    def proxy_client_context(self, ca_file: Path) -> ssl.SSLContext:
        """Client context the aggregator uses towards the metrics server."""
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(
            str(self.front_proxy_client_cert_file), str(self.front_proxy_client_key_file)
        )
        return ctx

    def cluster_ca_pem(self) -> str:
        return self.cluster_ca.cert_pem.bytes().decode()
