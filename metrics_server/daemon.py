"""Composition root: builds every part from `Options` and owns the root nursery.

Start-up order is explicit: signal handling → auth lookup (fatal if it fails, like
upstream) → HTTPS listener (health endpoints answer from the first second; readyz says why
it is not ready) → scrape manager → watches. Shutdown (first SIGTERM/SIGINT): readyz fails
at once, the listener stays open for --shutdown-delay-duration, then stops accepting while
in-flight requests get --shutdown-grace-period to finish; then everything is cancelled and
the process exits 0. A second signal exits at once with status 1, as k8s.io/apiserver does.
Nothing else knows every part.
"""

from __future__ import annotations

import logging
import os
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
from metrics_server.cli import Options, version_text
from metrics_server.health import HealthCheck, HealthEndpoint
from metrics_server.heap import settle_heap
from metrics_server.kube import credentials
from metrics_server.kube.cache import NodeCache, PodCache
from metrics_server.kube.credentials import ClusterAccess
from metrics_server.kube.watch import WatchSpec, WatchStats, run_watch
from metrics_server.logs import RequestLog, log_kv
from metrics_server.quantity import format_go_duration
from metrics_server.scraper.kubelet import KubeletTransport, ScrapeError
from metrics_server.scraper.nodes import ScrapeManager, ScrapeSettings
from metrics_server.selfmetrics import SelfMetrics
from metrics_server.serving.server import ServingConfig, serve
from metrics_server.storage.store import MetricsStore

log = logging.getLogger(__name__)

SECOND = 1e9
TIMELY_FACTOR = 1.5
POD_LIST_HEAD_START = 30.0
"""Seconds the first scrapes wait for the pod list at most (see `pods_first`)."""
"""metric-collection-timely fails when a node's last collection started longer ago than
this many resolutions (upstream's factor)."""


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
    """Set on the first signal (or `request_shutdown`): readyz fails from then on."""
    port: int = 0
    shutdown_requested: trio.Event = field(default_factory=trio.Event)
    """Set by `request_shutdown`; `stop` follows after --shutdown-delay-duration."""
    stop: trio.Event = field(default_factory=trio.Event)
    """Stop accepting connections and drain; setting it directly skips the delay (tests)."""
    serving_done: trio.Event = field(default_factory=trio.Event)
    """Set when the HTTPS server has drained and returned."""
    ready: trio.Event = field(default_factory=trio.Event)
    """Set the first time the store has metrics to serve."""
    startup_report: str | None = None
    """The first-scrape summary line, once logged."""
    reported: trio.Event = field(default_factory=trio.Event)

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
            log_kv(log, logging.INFO, "Metrics are ready to serve")
        self.changed()

    def request_shutdown(self, reason: str) -> bool:
        """Begin a graceful shutdown (what SIGTERM does); False if one is already under way."""
        if self.shutdown_requested.is_set():
            return False
        self.shutting_down = True
        self.shutdown_requested.set()
        delay = self.options.serving.shutdown_delay
        log_kv(
            log,
            logging.INFO,
            "Shutting down: readyz now fails",
            reason=reason,
            shutdownDelay=format_go_duration(delay),
            gracePeriod=format_go_duration(self.options.serving.shutdown_grace),
        )
        return True

    # -- gauges for /metrics (selfmetrics.LiveState) ---------------------------------

    def storage_points(self) -> tuple[int, int]:
        return self.store.counts()

    def scrape_tasks_alive(self) -> int:
        return self.manager.tasks_alive()

    def pods_known(self) -> int:
        return len(self.pods)

    # -- health checks (SPEC §6) -----------------------------------------------------

    def check_storage(self) -> str | None:
        if self.store.ready():
            return None
        if not self.node_watch.synced:
            return "no metrics to serve: " + _not_listed("node", self.node_watch)
        if len(self.nodes) == 0:
            if self.options.node_selector:
                return (
                    "no metrics to serve: no node matches --node-selector "
                    f"{self.options.node_selector!r}"
                )
            return "no metrics to serve: the cluster has no nodes"
        states = list(self.manager.nodes.items())
        failing = [(name, s.last_error) for name, s in states if s.last_error is not None]
        if failing and len(failing) == len(states):
            summary, fixes = summarize_failures(failing)
            return (
                f"no metrics to serve: every node scrape fails: {summary}. Fix: {fixes}. "
                f"E.g. {failing[0][1]}"
            )
        scraped = sum(1 for _, s in states if s.scrapes > 0 and s.last_error is None)
        text = (
            "no metrics to serve: waiting for a second sample of nodes and pods "
            f"({scraped}/{len(states)} nodes scraped so far"
        )
        if failing:
            summary, fixes = summarize_failures(failing)
            text += f"; failing: {summary}. Fix: {fixes}"
        return text + ")"

    def check_node_sync(self) -> str | None:
        if self.node_watch.synced:
            return None
        return _not_listed("node", self.node_watch)

    def check_pod_watch_running(self) -> str | None:
        return None if self.pod_watch.running else "the pod watch has stopped"

    def check_pod_sync(self) -> str | None:
        if self.pod_watch.synced:
            return None
        return _not_listed("pod", self.pod_watch)

    def check_timely(self) -> str | None:
        """Each node task must have started a collection within 1.5 resolutions."""
        limit = TIMELY_FACTOR * self.options.metric_resolution / SECOND
        now = trio.current_time()
        late = sorted(
            (
                (now - s.last_start, name)
                for name, s in self.manager.nodes.items()
                if s.last_start is not None and now - s.last_start > limit
            ),
            reverse=True,
        )
        if not late:
            return None
        age, name = late[0]
        more = f" (and {len(late) - 1} more nodes)" if len(late) > 1 else ""
        log_kv(
            log,
            logging.INFO,
            "Failed probe",
            probe="metric-collection-timely",
            node=name,
            duration=f"{age:.1f}s",
            maxDuration=f"{limit:g}s",
        )
        return (
            f"metric collection didn't start on time: the scrape task of node {name} last "
            f"started a collection {age:.1f}s ago{more}, limit {limit:g}s "
            "(1.5 × --metric-resolution); the task is stuck"
        )

    def check_shutdown(self) -> str | None:
        return "process is shutting down" if self.shutting_down else None

    def health(self) -> dict[str, HealthEndpoint]:
        # Upstream: ping and log everywhere; metadata-informer-sync is added with
        # AddHealthChecks (healthz, livez and readyz); the others to one endpoint each.
        ping = HealthCheck("ping", lambda: None)
        # klog's check fails when a log flush has been stuck for 2 minutes; our writes are
        # synchronous, so a stuck stderr would block this handler too: nothing to report.
        logs = HealthCheck("log", lambda: None)
        pod_sync = HealthCheck("metadata-informer-sync", self.check_pod_sync)
        # Liveness asks only that the pod watch is still trying: an unreachable apiserver
        # must make us unready, not restart us (a restart can't bring it back).
        pod_watch_alive = HealthCheck("metadata-informer-sync", self.check_pod_watch_running)
        live = [
            ping,
            logs,
            HealthCheck("metric-collection-timely", self.check_timely),
            pod_watch_alive,
        ]
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
            "healthz": HealthEndpoint("healthz", [ping, logs, pod_sync]),
            "readyz": HealthEndpoint("readyz", ready),
        }


def _not_listed(kind: str, stats: WatchStats) -> str:
    text = f"{kind} list not received from kube-apiserver yet"
    if stats.last_error:
        return f"{text}; last error: {stats.last_error} (check --kubeconfig and the network path)"
    return text


@dataclass(frozen=True, slots=True)
class FailureClass:
    """How a scrape failure reason reads in summaries, and what usually fixes it."""

    label: str
    fix: str


FAILURE_CLASSES: dict[str, FailureClass] = {
    "tls_no_ip_san": FailureClass(
        "x509 no IP SAN",
        "kubelet certificates do not name the node's IP: use --kubelet-tls-server-name-from-node "
        "or --kubelet-preferred-address-types=Hostname",
    ),
    "tls_name_mismatch": FailureClass(
        "x509 name mismatch",
        "kubelet certificates do not name the node: reissue them (kubelet serverTLSBootstrap) "
        "or dial another --kubelet-preferred-address-types",
    ),
    "tls_unknown_ca": FailureClass(
        "x509 unknown authority",
        "set --kubelet-certificate-authority to the CA that signs kubelet serving certificates",
    ),
    "tls_expired": FailureClass("x509 expired", "renew the kubelet serving certificates"),
    "tls": FailureClass(
        "TLS handshake failed", "check that the kubelet port (--kubelet-port) serves HTTPS"
    ),
    "timeout": FailureClass(
        "timeout",
        "check kubelet load and firewalls or network policies to the kubelet port "
        "(--kubelet-request-timeout bounds each scrape)",
    ),
    "connect": FailureClass(
        "connection failed",
        "check --kubelet-preferred-address-types, --kubelet-port and firewalls to the kubelet",
    ),
    "dns": FailureClass(
        "DNS lookup failed",
        "node names do not resolve here: put InternalIP first in --kubelet-preferred-address-types",
    ),
    "address": FailureClass(
        "no usable address", "the node has none of --kubelet-preferred-address-types"
    ),
    "http_401": FailureClass(
        "HTTP 401", "the kubelet rejects our token: enable kubelet webhook authentication"
    ),
    "http_403": FailureClass(
        "HTTP 403",
        "bind the service account to the system:metrics-server ClusterRole (nodes/metrics)",
    ),
    "protocol": FailureClass("connection broke mid-answer", "check the kubelet on the node"),
    "body_too_large": FailureClass(
        "answer too large", "the kubelet sent more than 32 MiB: check the kubelet on the node"
    ),
    "decode": FailureClass(
        "unparsable answer",
        "the kubelet's /metrics/resource is not Prometheus text: check the kubelet version",
    ),
    "no_metrics": FailureClass(
        "no usable metrics",
        "the answer holds no node or container metrics: check that --kubelet-port (or the "
        "node's status port) is the kubelet's",
    ),
    "http": FailureClass("request failed", "see the node's error in this log"),
}


def describe_failure(reason: str) -> FailureClass:
    known = FAILURE_CLASSES.get(reason)
    if known is not None:
        return known
    if reason.startswith("http_"):
        return FailureClass(f"HTTP {reason[5:]}", "see the kubelet's log on the node")
    return FailureClass(reason, "see the node's error in this log")


def summarize_failures(failed: list[tuple[str, ScrapeError]]) -> tuple[str, str]:
    """("2× x509 no IP SAN (n1, n2), 1× timeout (n3)", "x509 no IP SAN: <fix>; timeout: <fix>").

    Classes by count (most first), then by label; at most three node names per class.
    """
    by_reason: dict[str, list[str]] = {}
    for node, error in failed:
        by_reason.setdefault(error.reason, []).append(node)
    ordered = sorted(
        by_reason.items(), key=lambda item: (-len(item[1]), describe_failure(item[0]).label)
    )
    parts: list[str] = []
    fixes: list[str] = []
    for reason, names in ordered:
        cls = describe_failure(reason)
        shown = ", ".join(sorted(names)[:3]) + (", …" if len(names) > 3 else "")
        parts.append(f"{len(names)}× {cls.label} ({shown})")
        fixes.append(f"{cls.label}: {cls.fix}")
    return ", ".join(parts), "; ".join(fixes)


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
    scrapes_may_start = trio.Event()
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
        first_scrape_gate=scrapes_may_start,
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
    grace = options.serving.shutdown_grace / SECOND

    no_read_timeout = httpx.Timeout(10.0, read=None)
    async with (
        credentials.api_client(access.cluster, timeout=no_read_timeout) as client,
        credentials.api_client(access.authentication, timeout=15.0) as authn_client,
        credentials.api_client(access.authorization, timeout=15.0) as authz_client,
        trio.open_nursery() as root,
    ):
        if handle_signals:
            await root.start(_signals, daemon, root.cancel_scope, name="signals")
        log_kv(log, logging.INFO, "Starting metrics-server", version=version_text())
        root.start_soon(
            _stop_after_delay, daemon, options.serving.shutdown_delay / SECOND, name="shutdown"
        )
        stack = build_auth_stack(
            auth_config(options), authn_client, authorization_client=authz_client
        )
        stack.watcher.on_failure = selfmetrics.auth_config_lookup_failure
        await root.start(stack.run)
        # The request log is outermost so that rejected requests are logged too.
        secured = RequestLog(stack.middleware(cast(ASGIApp, app)))

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
                daemon.serving_done.set()

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
        root.start_soon(
            pods_first,
            daemon.pod_watch.synced_event,
            scrapes_may_start,
            POD_LIST_HEAD_START,
            name="pods-first",
        )
        root.start_soon(_startup_report, daemon, name="startup-report")
        if handle_signals:  # we own the process (not a test running us in its own)
            root.start_soon(_settle_heap, daemon, name="settle-heap")
        task_status.started(daemon)
        await daemon.stop.wait()
        daemon.shutting_down = True
        log_kv(
            log,
            logging.INFO,
            "Stopped accepting connections; draining in-flight requests",
            gracePeriod=format_go_duration(options.serving.shutdown_grace),
        )
        # serve() returns once Hypercorn has drained (or cancelled what was left after the
        # grace period); the extra second only guards against a serve() that never returns.
        with trio.move_on_after(grace + 1):
            await daemon.serving_done.wait()
        root.cancel_scope.cancel()
    log_kv(log, logging.INFO, "Stopped")


async def pods_first(pods_synced: trio.Event, release: trio.Event, limit: float) -> None:
    """Hold the first scrapes until the pod list is in (at most `limit` seconds).

    Pod metrics need the pod cache as much as two scrapes. On one event loop, thousands of
    first scrapes (each a TLS handshake) would run beside the pod list and starve it: at
    5,000 nodes its 300 pages waited minutes for turns. The list alone takes seconds, and
    start-up is CPU-bound either way, so the order costs node metrics almost nothing. An
    apiserver that fails the pod list must not stop node metrics, hence the limit."""
    with trio.move_on_after(limit) as waited:
        await pods_synced.wait()
    if waited.cancelled_caught:
        log_kv(
            log,
            logging.WARNING,
            "Pod list not synced yet; scraping nodes anyway",
            waited=format_go_duration(int(limit * SECOND)),
        )
    release.set()


async def _stop_after_delay(daemon: Daemon, delay: float) -> None:
    """Once shutdown is requested, keep serving (with readyz failing) for `delay`, then stop."""
    await daemon.shutdown_requested.wait()
    if delay > 0:
        # Like --shutdown-delay-duration upstream: load balancers and the aggregator see
        # readyz fail and move away while requests are still answered.
        await trio.sleep(delay)
    daemon.stop.set()


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
    """One INFO line once every node known at start has been scraped once: how many work,
    and for those that do not, the failure classes with a fix for each."""
    await daemon.node_watch.synced_event.wait()
    daemon.manager.begin_first_round()
    await daemon.manager.first_round.wait()
    states = list(daemon.manager.nodes.items())
    failed = [(name, s.last_error) for name, s in states if s.last_error is not None]
    text = f"first scrape: scraped {len(states) - len(failed)}/{len(states)} nodes"
    fixes = None
    if failed:
        summary, fixes = summarize_failures(failed)
        text += f"; {len(failed)} failed: {summary}"
    daemon.startup_report = text
    log_kv(log, logging.INFO, text, fix=fixes)
    daemon.reported.set()


async def _settle_heap(daemon: Daemon) -> None:
    """Keep full GC collections short until the caches are listed and every node scraped
    once, then take what start-up built out of the cyclic GC's sight (see heap.py)."""

    async def started() -> None:
        await daemon.reported.wait()
        await daemon.pod_watch.synced_event.wait()

    await settle_heap(started)


async def _signals(
    daemon: Daemon,
    root: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if daemon.port == 0:
                # Not serving yet: there is nothing to drain.
                log_kv(log, logging.INFO, "Received a signal during start-up; exiting", signal=name)
                root.cancel()
                return
            if daemon.request_shutdown(name):
                continue
            log_kv(log, logging.WARNING, "Received a second signal; exiting at once", signal=name)
            _exit_now(1)


def _exit_now(status: int) -> None:
    """Exit without unwinding, like Go's os.Exit on a second signal: the operator asked twice."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(status)
