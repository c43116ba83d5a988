"""How a kubelet is named, dialled and authenticated to: a Hostname that does not resolve,
certificates without IP SANs verified against the node name instead, kubelet serving
certificates nobody trusts (--kubelet-insecure-tls), client-certificate authentication to the
kubelet (--kubelet-client-certificate/-key), and the one keep-alive connection per node.

Loopback only: the resolvable node is called `localhost`, the other ends in `.invalid`
(RFC 6761: never resolves).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import trio

from metrics_server.simulator import ClusterConfig, Fault, NoIPSAN, WrongCA, open_cluster
from tests.faults._observe import (
    API_DEADLINE,
    PREFIX,
    failure_counters,
    name_in_phase,
    phase_of,
)
from tests.harness import direct_client, running_daemon

RESOLUTION = 10.0


def _unresolvable_name() -> str:
    """A `.invalid` node name whose scheduled scrape comes 1.5-4 s into the period."""
    for i in range(10_000):
        name = f"no-such-node-{i}.invalid"
        if 1.5 <= phase_of(name, RESOLUTION) < 4.0:
            return name
    raise AssertionError("no name found")


async def _resolver_behaves(bad: str) -> str | None:
    """Why this machine cannot run the test, or None."""

    def check() -> str | None:
        if ("127.0.0.1", 0) not in [a[4][:2] for a in socket.getaddrinfo("localhost", 0)]:
            return "localhost does not resolve to 127.0.0.1 here"
        try:
            socket.getaddrinfo(bad, 0)
        except socket.gaierror:
            return None
        return f"{bad} resolves here"

    with trio.move_on_after(3):
        return await trio.to_thread.run_sync(check, abandon_on_cancel=True)
    return "the resolver does not answer within 3 s"


async def test_unresolvable_hostname_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_server")
    bad = _unresolvable_name()
    if (why := await _resolver_behaves(bad)) is not None:
        pytest.skip(why)
    extra = ["--kubelet-preferred-address-types", "Hostname", "--kubelet-request-timeout", "1s"]
    with trio.fail_after(40):
        async with open_cluster(ClusterConfig(nodes=0, kubelet_refresh=0.5)) as cluster:
            cluster.add_node("localhost", pods=3)
            cluster.add_node(bad, pods=1)
            async with running_daemon(cluster, tmp_path, extra) as d, direct_client(
                cluster, d
            ) as client:
                with trio.fail_after(15):
                    await d.wait_for(
                        lambda: bad in d.manager.nodes
                        and d.manager.nodes[bad].failures >= 2
                        and d.store.node_usage("localhost") is not None
                    )
                good, failing = d.manager.nodes["localhost"], d.manager.nodes[bad]
                assert failing.last_error is not None
                assert failing.last_error.reason == "dns"
                assert bad in str(failing.last_error)
                assert good.failures == 0 and good.scrapes >= failing.scrapes
                with trio.fail_after(API_DEADLINE):
                    nodes = await client.get(f"{PREFIX}/nodes")
                    metrics = await client.get("/metrics")
    assert [i["metadata"]["name"] for i in nodes.json()["items"]] == ["localhost"]
    assert failure_counters(metrics.text)[(bad, "dns")] >= 2
    logged = [r.getMessage() for r in caplog.records if "Failed to scrape node" in r.getMessage()]
    assert len([m for m in logged if bad in m]) == 1, logged


async def test_no_ip_san_is_scraped_when_verified_against_the_node_name(tmp_path: Path) -> None:
    """--kubelet-tls-server-name-from-node: certificates naming only the node are accepted,
    and a certificate from another CA is still refused."""
    faults: dict[str, Fault] = {"node-0": NoIPSAN(), "node-1": NoIPSAN(), "node-2": WrongCA()}
    config = ClusterConfig(nodes=3, pods_per_node=2, kubelet_refresh=0.5, faults=faults)
    with trio.fail_after(30):
        async with open_cluster(config) as cluster, running_daemon(
            cluster, tmp_path, ["--kubelet-tls-server-name-from-node"]
        ) as d:
            with trio.fail_after(15):
                await d.wait_for(
                    lambda: d.store.node_usage("node-0") is not None
                    and d.store.node_usage("node-1") is not None
                    and "node-2" in d.manager.nodes
                    and d.manager.nodes["node-2"].failures >= 1
                )
            assert d.manager.nodes["node-0"].failures == 0
            assert d.manager.nodes["node-1"].failures == 0
            wrong = d.manager.nodes["node-2"].last_error
            assert wrong is not None and wrong.reason == "tls_unknown_ca"
            assert d.store.node_usage("node-2") is None


async def test_insecure_tls_scrapes_a_kubelet_whose_ca_is_unknown(tmp_path: Path) -> None:
    """The same kubelet, serving a certificate from a CA nobody was given: two daemons side
    by side, one verifying (fails with the CA hint), one with --kubelet-insecure-tls
    (scrapes it). The CA flag is reset to its default, as the two flags exclude each other."""
    config = ClusterConfig(nodes=2, pods_per_node=2, kubelet_refresh=0.5,
                           faults={"node-0": WrongCA()})
    insecure = ["--kubelet-certificate-authority=", "--kubelet-insecure-tls"]
    with trio.fail_after(40):
        async with (
            open_cluster(config) as cluster,
            running_daemon(cluster, tmp_path / "insecure", insecure, aggregate=False) as lax,
            running_daemon(cluster, tmp_path / "verified", aggregate=False) as strict,
        ):
            assert lax.options.kubelet.insecure_tls and not strict.options.kubelet.insecure_tls
            with trio.fail_after(15):
                await lax.wait_for(
                    lambda: lax.store.node_usage("node-0") is not None
                    and lax.store.node_usage("node-1") is not None
                )
                await strict.wait_for(
                    lambda: "node-0" in strict.manager.nodes
                    and strict.manager.nodes["node-0"].failures >= 1
                    and strict.store.node_usage("node-1") is not None
                )
            assert lax.manager.nodes["node-0"].failures == 0
            error = strict.manager.nodes["node-0"].last_error
            assert error is not None and error.reason == "tls_unknown_ca"
            assert "node node-0: kubelet certificate not trusted" in str(error)
            assert "check --kubelet-certificate-authority" in str(error)
            assert strict.store.node_usage("node-0") is None
            assert strict.manager.nodes["node-1"].failures == 0


async def test_kubelet_client_certificate_instead_of_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """node-0's kubelet takes only a client certificate (signed by the client CA), node-1's a
    certificate or the token. With --kubelet-client-certificate/-key the daemon scrapes both
    and sends no token; without them its token is refused by node-0 (401: logged, counted)
    and still accepted by node-1."""
    caplog.set_level(logging.INFO, logger="metrics_server")
    with trio.fail_after(60):
        async with open_cluster(ClusterConfig(nodes=2, pods_per_node=2,
                                              kubelet_refresh=0.5)) as cluster:
            only_cert, either = cluster.kubelets["node-0"], cluster.kubelets["node-1"]
            only_cert.set_client_auth("cert")
            either.set_client_auth("token-or-cert")
            cert, key = cluster.pki.kubelet_client_files()
            flags = ["--kubelet-client-certificate", str(cert), "--kubelet-client-key", str(key)]
            async with running_daemon(cluster, tmp_path / "cert", flags, aggregate=False) as d:
                with trio.fail_after(15):
                    await d.wait_for(
                        lambda: d.store.node_usage("node-0") is not None
                        and d.store.node_usage("node-1") is not None
                    )
                assert d.manager.nodes["node-0"].failures == 0
                assert d.manager.nodes["node-1"].failures == 0
            for kubelet in (only_cert, either):
                assert kubelet.cert_requests >= 2, kubelet.name
                assert kubelet.token_requests == 0, kubelet.name

            caplog.clear()
            async with running_daemon(cluster, tmp_path / "token", aggregate=False) as d, \
                    direct_client(cluster, d) as client:
                with trio.fail_after(15):
                    await d.wait_for(
                        lambda: "node-0" in d.manager.nodes
                        and d.manager.nodes["node-0"].failures >= 1
                        and d.store.node_usage("node-1") is not None
                    )
                error = d.manager.nodes["node-0"].last_error
                assert error is not None and error.reason == "http_401"
                assert "kubelet rejected our credentials" in str(error)
                assert d.manager.nodes["node-1"].failures == 0
                with trio.fail_after(API_DEADLINE * 5):
                    metrics = await client.get("/metrics")
            assert failure_counters(metrics.text)[("node-0", "http_401")] >= 1
            assert ("node-1", "http_401") not in failure_counters(metrics.text)
            assert only_cert.token_requests >= 1 and either.token_requests >= 2
    logged = [r.getMessage() for r in caplog.records if "Failed to scrape node" in r.getMessage()]
    assert len(logged) == 1, logged
    assert 'node="node-0"' in logged[0] and "HTTP 401" in logged[0], logged


async def test_one_keep_alive_connection_per_node(tmp_path: Path) -> None:
    """Every scrape of a node reuses the first one's connection to its kubelet."""
    # Scheduled 2-4 s into each period: the start-up scrape, a quick re-scrape a second later
    # and the first scheduled one all come within about 4 s.
    name = name_in_phase("keepalive", 2.0, 4.0, RESOLUTION)
    with trio.fail_after(40):
        async with open_cluster(ClusterConfig(nodes=0, kubelet_refresh=0.5)) as cluster:
            cluster.add_node(name, pods=2)
            kubelet = cluster.kubelets[name]
            async with running_daemon(cluster, tmp_path, aggregate=False) as d:
                with trio.fail_after(20):
                    await d.wait_for(lambda: name in d.manager.nodes
                                     and d.manager.nodes[name].scrapes >= 3)
                state = d.manager.nodes[name]
                assert state.failures == 0, state.last_error
                assert d.store.node_usage(name) is not None
                assert kubelet.token_requests >= 3
                assert kubelet.connections == 1
