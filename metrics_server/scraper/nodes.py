"""One long-lived scrape task per node, each on its own phase within the resolution.

The manager owns a nursery of node tasks. The node cache tells it when a node appears,
changes or goes; it starts, retargets or cancels that node's task. A task scrapes at once,
re-scrapes quickly until the store can compute a rate for the node, then settles on
its phase: `start + phase + k × resolution`, where the phase is derived from the node
name so that nodes spread evenly over the period and keep their slot across restarts.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import trio

from metrics_server.logs import log_kv
from metrics_server.models import NodeInfo, NodeMetricsBatch
from metrics_server.scraper.addresses import AddressError, kubelet_url
from metrics_server.scraper.decode import DecodeError, decode
from metrics_server.scraper.kubelet import KubeletTransport, ScrapeError

log = logging.getLogger(__name__)

QUICK_RESCRAPE_SECONDS = (1.0, 1.0, 2.0, 2.0, 4.0)
"""Delays between start-up scrapes until the node has a rate; then the normal period."""

CONNECTING_LIMIT = 32
"""Scrapes that may open a new connection at once. At start every node is due together, and
thousands of concurrent TLS handshakes on a couple of cores all finish late, past their
deadlines, together; queued before the deadline starts, they finish in a steady stream."""


class NodeSink(Protocol):
    """Where scrape results go (the store)."""

    def store_node(self, name: str, batch: NodeMetricsBatch) -> None: ...
    def drop_node(self, name: str) -> None: ...
    def node_usage(self, name: str) -> object | None: ...


ResultHook = Callable[[str, float, ScrapeError | None], None]
"""Called after each scrape with (node, seconds taken, error or None)."""


TASK_PREFIX = "scrape:"
"""The name of every node's scrape task starts with this, then the node name."""


@dataclass(slots=True)
class NodeState:
    """What the manager knows about one node's task."""

    info: NodeInfo
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    last_start: float | None = None
    """trio clock when the latest scrape began."""
    last_error: ScrapeError | None = None
    scrapes: int = 0
    failures: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    """Set as the task exits, after its connection is closed."""


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    resolution: float
    """Seconds between scrapes of one node."""
    preferred_address_types: tuple[str, ...]
    default_port: int
    use_node_status_port: bool
    tls_server_name_from_node: bool


class ScrapeManager:
    """Starts, retargets and cancels the per-node scrape tasks."""

    def __init__(
        self,
        settings: ScrapeSettings,
        transport: KubeletTransport,
        sink: NodeSink,
        *,
        on_result: ResultHook | None = None,
        on_node_gone: Callable[[str], None] | None = None,
        first_scrape_gate: trio.Event | None = None,
    ) -> None:
        self._settings = settings
        self._gate = first_scrape_gate
        """When given, node tasks wait for it before their first scrape."""
        self._transport = transport
        self._sink = sink
        self._on_result = on_result
        self._on_node_gone = on_node_gone
        self._nodes: dict[str, NodeState] = {}
        self._nursery: trio.Nursery | None = None
        self._epoch = 0.0
        self.first_round = trio.Event()
        """Set once every node known at start has been scraped at least once."""
        self._first_round_pending: set[str] | None = None
        self._connecting = trio.CapacityLimiter(CONNECTING_LIMIT)

    @property
    def nodes(self) -> dict[str, NodeState]:
        return self._nodes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the node tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._epoch = trio.current_time()
            task_status.started()
            await trio.sleep_forever()

    def begin_first_round(self) -> None:
        """Start counting the first round over the nodes known right now."""
        self._first_round_pending = set(self._nodes)
        if not self._first_round_pending:
            self.first_round.set()

    def on_node(self, name: str, info: NodeInfo | None) -> None:
        """Node cache listener: a node appeared or changed (info) or went away (None)."""
        assert self._nursery is not None, "ScrapeManager.run must be started first"
        state = self._nodes.get(name)
        if info is None:
            if state is not None:
                state.scope.cancel()
                del self._nodes[name]
                self._sink.drop_node(name)
                if self._on_node_gone is not None:
                    self._on_node_gone(name)
                self._mark_first_round(name)
                log_kv(log, logging.INFO, "Node is gone; stopped scraping it", node=name)
            return
        if state is not None:
            state.info = info  # the task reads it before each scrape
            return
        state = NodeState(info=info)
        self._nodes[name] = state
        self._nursery.start_soon(self._run_node, state, name=TASK_PREFIX + name)

    def tasks_alive(self) -> int:
        """Scrape tasks trio still runs, including those of deleted nodes that have not
        finished yet: `nodes` forgets a node when its task is cancelled, not when it exits,
        so counting it would hide a task that never does."""
        if self._nursery is None:
            return 0
        return sum(1 for t in self._nursery.child_tasks if t.name.startswith(TASK_PREFIX))

    def phase(self, name: str) -> float:
        """This node's offset in [0, resolution), stable for a name."""
        return (zlib.crc32(name.encode()) / 2**32) * self._settings.resolution

    def _next_slot(self, name: str, now: float) -> float:
        res = self._settings.resolution
        first = self._epoch + self.phase(name)
        if now < first:
            return first
        k = int((now - first) // res) + 1
        return first + k * res

    async def _run_node(self, state: NodeState) -> None:
        name = state.info.name
        client = self._transport.client()
        try:
            with state.scope:
                quick = 0
                if self._gate is not None:
                    await self._gate.wait()
                # The first scrape opens the connection that later ones keep alive.
                async with self._connecting:
                    ok = await self._scrape_once(state, client)
                while True:
                    now = trio.current_time()
                    next_slot = self._next_slot(name, now)
                    if not ok:
                        # A failure drops the node's points, so once it answers again it needs
                        # a second sample for a rate: take that one quickly too, not a whole
                        # period later.
                        quick = 0
                        next_at = next_slot
                    elif quick < len(QUICK_RESCRAPE_SECONDS) and self._sink.node_usage(
                        name
                    ) is None:
                        next_at = min(now + QUICK_RESCRAPE_SECONDS[quick], next_slot)
                        quick += 1
                    else:
                        quick = len(QUICK_RESCRAPE_SECONDS)
                        next_at = next_slot
                    await trio.sleep_until(next_at)
                    ok = await self._scrape_once(state, client)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await client.aclose()
            state.done.set()

    async def _scrape_once(self, state: NodeState, client: httpx.AsyncClient) -> bool:
        info = state.info
        state.last_start = trio.current_time()
        started = time.perf_counter()
        error: ScrapeError | None = None
        try:
            url = kubelet_url(
                info,
                self._settings.preferred_address_types,
                self._settings.default_port,
                self._settings.use_node_status_port,
            )
            server_name = info.name if self._settings.tls_server_name_from_node else None
            response = await self._transport.scrape(client, info.name, url, server_name)
            try:
                batch = decode(response.body, response.request_time)
            except DecodeError as exc:
                raise ScrapeError(
                    "decode", f"node {info.name}: kubelet answer is not valid metrics: {exc}"
                ) from exc
            if batch.node is None and not batch.pods:
                # The decoder skips lines of series it does not use, so an answer that is
                # not Prometheus text at all decodes to nothing rather than failing.
                raise ScrapeError("no_metrics", _no_metrics_message(info.name, response.body))
        except AddressError as exc:
            error = ScrapeError("address", str(exc))
        except ScrapeError as exc:
            error = exc
        elapsed = time.perf_counter() - started
        state.scrapes += 1
        if info.name not in self._nodes:  # deleted while we were scraping
            return False
        if error is None:
            self._sink.store_node(info.name, batch)
            if state.last_error is not None:
                log_kv(log, logging.INFO, "Scraping node works again", node=info.name)
        else:
            state.failures += 1
            self._sink.drop_node(info.name)
            previous = state.last_error
            if previous is None or previous.reason != error.reason:
                # Once per change of reason, not every cycle (upstream logs every cycle).
                log_kv(
                    log,
                    logging.ERROR,
                    "Failed to scrape node",
                    err=error,
                    node=info.name,
                    reason=error.reason,
                )
        state.last_error = error
        if self._on_result is not None:
            self._on_result(info.name, elapsed, error)
        self._mark_first_round(info.name)
        return error is None

    def _mark_first_round(self, name: str) -> None:
        pending = self._first_round_pending
        if pending is not None and name in pending:
            pending.discard(name)
            if not pending:
                self.first_round.set()

    def oldest_start_age(self) -> float:
        """Seconds since the least recent scrape start over all nodes (0 if none)."""
        now = trio.current_time()
        ages = [now - s.last_start for s in self._nodes.values() if s.last_start is not None]
        return max(ages, default=0.0)


def _no_metrics_message(node: str, body: bytes) -> str:
    start = body[:60].decode("utf-8", "replace")
    return (
        f"node {node}: kubelet answer holds no usable node or container metrics "
        f"({len(body)} bytes, starting {start!r}); is this port really the kubelet's?"
    )
