"""The simulated cluster's PKI: its certificate authorities, leaf certificates and PEM files.

Four CAs as in a kubeadm cluster (cluster, kubelet, front-proxy, client) plus a stray "wrong"
CA used to fake a kubelet whose certificate nobody trusts. Everything is generated with
trustme in memory and the files a client needs are written under `<workdir>/pki`.

A kubelet told to authenticate clients by certificate (`FakeKubelet.set_client_auth`) asks for
one in the handshake and verifies it against the client CA; `kubelet_client_files()` issues
the metrics server a certificate for that (`--kubelet-client-certificate/-key`).

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


def _server_context(
    leaf: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> ssl.SSLContext:
    # A bare server context: create_default_context would also load the system trust store,
    # which costs ~1 ms per kubelet and is useless for a server that asks for no client cert.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    if client_ca is not None:
        # Asked for, not required, as a kubelet with --client-ca-file does (Go's
        # VerifyClientCertIfGiven): a request without one may still carry a token. A
        # certificate from another CA fails the handshake.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        client_ca.configure_trust(ctx)
    return ctx


class PKI:
    """Generates and holds every key and certificate of one simulated cluster."""

    def __init__(self, directory: Path, *, kubelet_ca: trustme.CA | None = None) -> None:
        self.directory = directory
        # Keyed by whether the context verifies client certificates.
        self._kubelet_shared: dict[bool, ssl.SSLContext] = {}
        self._kubelet_named: dict[tuple[str, bool], ssl.SSLContext] = {}
        self._kubelet_client: _Pair | None = None
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

    def kubelet_context(
        self, node: str, kind: KubeletCertKind = "normal", *, verify_clients: bool = False
    ) -> ssl.SSLContext:
        """A serving context for one kubelet: the shared one when healthy, else a fresh one.
        With `verify_clients` it asks for a client certificate signed by the client CA."""
        client_ca = self.client_ca if verify_clients else None
        if kind == "normal":
            return self._shared_kubelet_context(verify_clients)
        if kind == "no-ip-san":
            leaf = self.kubelet_ca.issue_cert(node, common_name=node)
        elif kind == "wrong-ca":
            leaf = self.wrong_ca.issue_cert("127.0.0.1", node, common_name=node)
        else:
            raise ValueError(f"unknown kubelet certificate kind {kind!r}")
        return _server_context(leaf, client_ca)

    def _shared_kubelet_context(self, verify_clients: bool) -> ssl.SSLContext:
        ctx = self._kubelet_shared.get(verify_clients)
        if ctx is None:
            ctx = _server_context(
                self.kubelet_ca.issue_cert("127.0.0.1", common_name="kubelet"),
                self.client_ca if verify_clients else None,
            )
            ctx.sni_callback = (
                self._verifying_kubelet_by_name if verify_clients else self._kubelet_by_name
            )
            self._kubelet_shared[verify_clients] = ctx
        return ctx

    def _kubelet_by_name(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        self._switch_to_named(conn, server_name, verify_clients=False)

    def _verifying_kubelet_by_name(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        self._switch_to_named(conn, server_name, verify_clients=True)

    def _switch_to_named(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, *, verify_clients: bool
    ) -> None:
        if not server_name:
            return
        # The named context verifies clients as the shared one does, so switching by SNI
        # changes the certificate presented and nothing else.
        ctx = self._kubelet_named.get((server_name, verify_clients))
        if ctx is None:
            leaf = self.kubelet_ca.issue_cert("127.0.0.1", server_name, common_name=server_name)
            ctx = _server_context(leaf, self.client_ca if verify_clients else None)
            self._kubelet_named[(server_name, verify_clients)] = ctx
        conn.context = ctx

    def kubelet_client_files(self) -> tuple[Path, Path]:
        """(certificate, key) PEM files of a client certificate kubelets that verify clients
        accept: what `--kubelet-client-certificate`/`--kubelet-client-key` take. Issued on
        first use."""
        if self._kubelet_client is None:
            # CN also as a DNS SAN: see the client certificates in __init__.
            self._kubelet_client = self._pair(
                "kubelet-client",
                self.client_ca.issue_cert(
                    "metrics-server-kubelet-client",
                    common_name="metrics-server-kubelet-client",
                    organization_name="system:metrics-server",
                ),
            )
        return self._kubelet_client.cert, self._kubelet_client.key

    def proxy_client_context(self, ca_file: Path) -> ssl.SSLContext:
        """Client context the aggregator uses towards the metrics server."""
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(
            str(self.front_proxy_client_cert_file), str(self.front_proxy_client_key_file)
        )
        return ctx

    def cluster_ca_pem(self) -> str:
        return self.cluster_ca.cert_pem.bytes().decode()
