"""Fault rows about how a kubelet is named and dialled: a Hostname that does not resolve, and
certificates without IP SANs verified against the node name instead.

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
from tests.faults._observe import API_DEADLINE, PREFIX, failure_counters, phase_of
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
