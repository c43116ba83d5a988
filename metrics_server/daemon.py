"""Composition root: builds every part from `Options` and owns the root nursery.

Start-up order is explicit: auth lookup (fatal if it fails, like upstream) → HTTPS
listener (health endpoints answer from the first second; readyz says why it is not
ready) → scrape manager → watches. Nothing else knows every part.
"""

from __future__ import annotations

import collections
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httpx
import trio

from metrics_server.api.app import AppParts, create_app
from metrics_server.api.metrics import MetricsAPI
from metrics_server.auth.config import AuthConfig
from metrics_server.auth.middleware import ASGIApp
from metrics_server.auth.stack import build_auth_stack
from metrics_server.cli import Options
from metrics_server.health import HealthCheck, HealthEndpoint
from metrics_server.kube import credentials
from metrics_server.kube.cache import NodeCache, PodCache
from metrics_server.kube.credentials import ClusterAccess
from metrics_server.kube.watch import WatchSpec, WatchStats, run_watch
from metrics_server.scraper.kubelet import KubeletTransport, ScrapeError
from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings
from metrics_server.selfmetrics import SelfMetrics
from metrics_server.serving.server import ServingConfig, serve
from metrics_server.storage.store import MetricsStore

log = logging.getLogger(__name__)

SECOND = 1e9


@dataclass(slots=True)
class Daemon:
    """The running parts, exposed for health checks and tests."""

    options: Options
    store: MetricsStore
    nodes: NodeCache
    pods: PodCache
    manager: ScrapeManager
    node_watch: WatchStats = field(default_factory=WatchStats)
    pod_watch: WatchStats = field(default_factory=WatchStats)
    shutting_down: bool = False
    port: int = 0
    stop: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)
    """Set the first time the store has metrics to serve."""

    changes: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)
    """Woken after every scrape result and every watch event."""

    def changed(self) -> None:
        self.changes.unpark_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking after each scrape or watch event."""
        while not predicate():
            await self.changes.park()

    def after_scrape(self, node: str, seconds: float, error: ScrapeError | None) -> None:
        if not self.ready.is_set() and self.store.ready():
            self.ready.set()
            log.info("metrics are ready to serve")
        self.changed()

    # -- health checks (SPEC §6) -----------------------------------------------------

    def check_storage(self) -> str | None:
        if self.store.ready():
            return None
        if not self.node_watch.synced:
            return "no metrics to serve: node list not received yet" + _why(self.node_watch)
        if len(self.nodes) == 0:
            return "no metrics to serve: no nodes match --node-selector"
        failing = [s for s in self.manager.nodes.values() if s.last_error is not None]
        if failing and len(failing) == len(self.manager.nodes):
            return f"no metrics to serve: every node scrape fails, e.g. {failing[0].last_error}"
        return "no metrics to serve: waiting for a second sample of nodes and pods"

    def check_node_sync(self) -> str | None:
        if self.node_watch.synced:
            return None
        return "node list not received from kube-apiserver yet" + _why(self.node_watch)

    def check_pod_sync(self) -> str | None:
        if self.pod_watch.synced:
            return None
        return "pod list not received from kube-apiserver yet" + _why(self.pod_watch)

    def check_timely(self) -> str | None:
        limit = 1.5 * self.options.metric_resolution / SECOND
        age = self.manager.oldest_start_age()
        if age > limit:
            return f"a node scrape has not started for {age:.1f}s (limit {limit:.1f}s)"
        return None

    def check_shutdown(self) -> str | None:
        return "server is shutting down" if self.shutting_down else None

    def health(self) -> dict[str, HealthEndpoint]:
        ping = HealthCheck("ping", lambda: None)
        logs = HealthCheck("log", lambda: None)
        timely = HealthCheck("metric-collection-timely", self.check_timely)
        pod_sync = HealthCheck("metadata-informer-sync", self.check_pod_sync)
        live = [ping, logs, timely, pod_sync]
        ready = [
            ping,
            logs,
            HealthCheck("metric-storage-ready", self.check_storage),
            HealthCheck("metric-informer-sync", self.check_node_sync),
            pod_sync,
            HealthCheck("shutdown", self.check_shutdown),
        ]
        return {
            "livez": HealthEndpoint("livez", live),
            "healthz": HealthEndpoint("healthz", live),
            "readyz": HealthEndpoint("readyz", ready),
        }


def _why(stats: WatchStats) -> str:
    return f" (last error: {stats.last_error})" if stats.last_error else ""


def auth_config(options: Options) -> AuthConfig:
    a = options.auth
    return AuthConfig(
        client_ca_file=a.client_ca_file,
        requestheader_client_ca_file=a.requestheader_client_ca_file,
        requestheader_allowed_names=a.requestheader_allowed_names,
        requestheader_username_headers=a.requestheader_username_headers,
        requestheader_group_headers=a.requestheader_group_headers,
        requestheader_extra_headers_prefix=a.requestheader_extra_headers_prefix,
        authentication_skip_lookup=a.authentication_skip_lookup,
        authentication_tolerate_lookup_failure=a.authentication_tolerate_lookup_failure,
        token_webhook_cache_ttl=a.token_webhook_cache_ttl / SECOND,
        authorization_cache_authorized_ttl=a.authorization_cache_authorized_ttl / SECOND,
        authorization_cache_unauthorized_ttl=a.authorization_cache_unauthorized_ttl / SECOND,
        always_allow_paths=a.always_allow_paths,
    )


def serving_config(options: Options, client_ca_pem: Callable[[], bytes]) -> ServingConfig:
    s = options.serving
    return ServingConfig(
        bind_address=s.bind_address,
        secure_port=s.secure_port,
        cert_dir=s.cert_dir,
        tls_cert_file=s.tls_cert_file,
        tls_private_key_file=s.tls_private_key_file,
        tls_min_version=s.tls_min_version,
        tls_cipher_suites=s.tls_cipher_suites,
        graceful_timeout=s.shutdown_grace / SECOND,
        client_ca_pem=client_ca_pem,
    )


@dataclass(frozen=True, slots=True)
class Access:
    """Loaded credentials: the main kubeconfig and the two delegated-auth ones."""

    cluster: ClusterAccess
    authentication: ClusterAccess
    authorization: ClusterAccess


def load_access(options: Options) -> Access:
    """Blocking: load every kubeconfig the options name (before `trio.run`)."""
    main = credentials.load(options.kubeconfig)
    # Empty delegated-auth kubeconfigs fall back to the main one (in-cluster in a pod).
    authn = (
        credentials.load(options.auth.authentication_kubeconfig)
        if options.auth.authentication_kubeconfig
        else main
    )
    authz = (
        credentials.load(options.auth.authorization_kubeconfig)
        if options.auth.authorization_kubeconfig
        else main
    )
    return Access(main, authn, authz)


async def run(
    options: Options,
    access: Access,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until `Daemon.stop` is set or a signal arrives."""
    resolution = options.metric_resolution / SECOND
    store = MetricsStore(options.metric_resolution)
    nodes, pods = NodeCache(), PodCache()
    selfmetrics = SelfMetrics(resolution)
    transport = KubeletTransport(options.kubelet, access.cluster)
    manager = ScrapeManager(
        ScrapeSettings(
            resolution=resolution,
            preferred_address_types=options.kubelet.preferred_address_types,
            default_port=options.kubelet.port,
            use_node_status_port=options.kubelet.use_node_status_port,
            tls_server_name_from_node=options.kubelet.tls_server_name_from_node,
        ),
        transport,
        store,
        on_result=lambda node, seconds, error: _after_scrape(node, seconds, error),  # noqa: PLW0108
        on_node_gone=selfmetrics.forget_node,
    )
    daemon = Daemon(options=options, store=store, nodes=nodes, pods=pods, manager=manager)
    selfmetrics.bind(daemon)

    def _after_scrape(node: str, seconds: float, error: ScrapeError | None) -> None:
        selfmetrics.observe_scrape(node, seconds, error)
        daemon.after_scrape(node, seconds, error)

    api = MetricsAPI(
        store, nodes, pods, options.node_selector, on_served=selfmetrics.observe_freshness
    )
    app = create_app(AppParts(api=api, health=daemon.health(), metrics_text=selfmetrics.render))

    no_read_timeout = httpx.Timeout(10.0, read=None)
    async with (
        credentials.api_client(access.cluster, timeout=no_read_timeout) as client,
        credentials.api_client(access.authentication, timeout=15.0) as authn_client,
        credentials.api_client(access.authorization, timeout=15.0) as authz_client,
        trio.open_nursery() as root,
    ):
        stack = build_auth_stack(
            auth_config(options), authn_client, authorization_client=authz_client
        )
        await root.start(stack.run)
        secured = stack.middleware(cast(ASGIApp, app))
        serving_done = trio.Event()

        async def shutdown_trigger() -> None:
            await daemon.stop.wait()

        async def serve_until_stopped(*, task_status: trio.TaskStatus[int]) -> None:
            try:
                await serve(
                    secured,
                    serving_config(options, stack.client_ca_pem),
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
            finally:
                serving_done.set()

        daemon.port = await root.start(serve_until_stopped, name="serve")
        await root.start(manager.run)
        nodes.subscribe(manager.on_node)

        node_params = {"labelSelector": options.node_selector} if options.node_selector else {}
        node_spec = WatchSpec("nodes", "/api/v1/nodes", node_params)
        pod_spec = WatchSpec(
            "pods", "/api/v1/pods", {"fieldSelector": "status.phase=Running"}, metadata_only=True
        )
        for spec, sink, stats in (
            (node_spec, nodes, daemon.node_watch),
            (pod_spec, pods, daemon.pod_watch),
        ):
            root.start_soon(
                _watch, client, spec, sink, stats, daemon, selfmetrics, name=f"watch:{spec.name}"
            )
        root.start_soon(_startup_report, daemon, name="startup-report")
        if handle_signals:
            root.start_soon(_signals, daemon, root.cancel_scope, name="signals")
        task_status.started(daemon)
        await daemon.stop.wait()
        daemon.shutting_down = True
        # serve() returns after Hypercorn's graceful shutdown; then stop everything else.
        log.info("shutting down")
        # Hypercorn drains in-flight requests within the grace period, then returns.
        with trio.move_on_after(options.serving.shutdown_grace / SECOND + 1):
            await serving_done.wait()
        root.cancel_scope.cancel()


async def _watch(
    client: httpx.AsyncClient,
    spec: WatchSpec,
    sink: NodeCache | PodCache,
    stats: WatchStats,
    daemon: Daemon,
    selfmetrics: SelfMetrics,
) -> None:
    await run_watch(
        client,
        spec,
        sink,
        stats,
        on_restart=lambda reason: selfmetrics.watch_restart(spec.name, reason),
        on_change=daemon.changed,
    )


async def _startup_report(daemon: Daemon) -> None:
    """One INFO line once the first scrapes are in: how many nodes work, and why not."""
    await daemon.node_watch.synced_event.wait()
    daemon.manager.begin_first_round()
    await daemon.manager.first_round.wait()
    states = list(daemon.manager.nodes.values())
    failed = [s.last_error for s in states if s.last_error is not None]
    ok = len(states) - len(failed)
    if not failed:
        log.info("first scrape: scraped %d/%d nodes", ok, len(states))
        return
    reasons = collections.Counter(e.reason for e in failed)
    summary = ", ".join(f"{n}× {r}" for r, n in reasons.most_common())
    log.warning(
        "first scrape: scraped %d/%d nodes; %d failed: %s. %s",
        ok,
        len(states),
        len(failed),
        summary,
        " ".join(HINTS.get(r, "") for r in reasons).strip(),
    )


HINTS = {
    "tls_no_ip_san": "No IP SAN: use --kubelet-tls-server-name-from-node or Hostname addresses.",
    "tls_unknown_ca": "Untrusted kubelet certificates: set --kubelet-certificate-authority.",
    "timeout": "Timeouts: check kubelet load and network policy to port 10250.",
    "connect": "Connection failures: check the node address type and firewall.",
    "http_401": "401: kubelet webhook authentication must accept our token.",
    "http_403": "403: bind the service account to system:metrics-server (nodes/metrics).",
}


async def _signals(daemon: Daemon, root: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if not daemon.stop.is_set():
                log.info("received %s; draining", signal.Signals(signum).name)
                daemon.shutting_down = True
                daemon.stop.set()
            else:
                log.info("second signal; exiting now")
                root.cancel()
                return
