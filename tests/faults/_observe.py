"""What the fault scenarios record while they run: log records, every node's scrapes, API
answers and their latency, self-metrics and memory. Tests assert on the records afterwards.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import trio

from metrics_server.daemon import Daemon

PREFIX = "/apis/metrics.k8s.io/v1beta1"

@contextmanager
def debug_logs(name: str) -> Iterator[None]:
    """Let one logger's debug lines through to the collector while the block runs."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.setLevel(old)


API_DEADLINE = 1.0
"""Every API answer during a fault must come within this many seconds."""

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def series(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The labelled samples of one metric in Prometheus text, in any label order."""
    return [
        (dict(_LABEL.findall(labels)), float(value))
        for metric, labels, value in _SAMPLE.findall(metrics_text)
        if metric == name
    ]


def failure_counters(metrics_text: str) -> dict[tuple[str, str], float]:
    """`metrics_server_scrape_failures_total` by (node, reason) from /metrics text."""
    return {
        (labels["node"], labels["reason"]): value
        for labels, value in series(metrics_text, "metrics_server_scrape_failures_total")
    }


def watch_restarts(metrics_text: str) -> dict[tuple[str, str], float]:
    """`metrics_server_watch_restarts_total` by (resource, reason) from /metrics text."""
    return {
        (labels["resource"], labels["reason"]): value
        for labels, value in series(metrics_text, "metrics_server_watch_restarts_total")
    }


def phase_of(name: str, resolution: float) -> float:
    """The scrape manager's phase for a node name (`ScrapeManager.phase`)."""
    return zlib.crc32(name.encode()) / 2**32 * resolution


def name_in_phase(prefix: str, low: float, high: float, resolution: float) -> str:
    """The first `prefix-N` whose node would be scraped `low`..`high` s into each period.

    Lets a scenario know when a node's scheduled scrapes come, so it can see two failures
    of it within seconds instead of waiting up to a whole resolution.
    """
    for i in range(100_000):
        name = f"{prefix}-{i}"
        if low <= phase_of(name, resolution) < high:
            return name
    raise AssertionError(f"no name for phase {low}..{high}")


def rss_kib(key: str = "VmRSS") -> int:
    """This process's resident memory (or peak, with VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class LogRecords(logging.Handler):
    """Collects the rendered messages of the `metrics_server` loggers during a scenario."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, int, str, str]] = []
        """(trio time, level, logger name, message)."""
        self._logger = logging.getLogger("metrics_server")
        self._old_level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:
            now = -1.0
        self.records.append((now, record.levelno, record.name, record.getMessage()))

    def __enter__(self) -> LogRecords:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._old_level)

    def matching(self, *needles: str) -> list[str]:
        """Messages containing every needle (case-insensitive)."""
        lowered = [n.lower() for n in needles]
        return [m for _, _, _, m in self.records if all(n in m.lower() for n in lowered)]


@dataclass(slots=True)
class ScrapeSample:
    t: float
    scrapes: int
    failures: int
    last_start: float | None
    reason: str | None


@dataclass(slots=True)
class ScrapeLog:
    """Every node's scrape results as the daemon reported them, in order."""

    samples: dict[str, list[ScrapeSample]] = field(default_factory=dict)

    def record(self, d: Daemon) -> None:
        now = trio.current_time()
        for name, state in list(d.manager.nodes.items()):
            seen = self.samples.setdefault(name, [])
            if seen and seen[-1].scrapes == state.scrapes:
                continue
            reason = state.last_error.reason if state.last_error is not None else None
            seen.append(ScrapeSample(now, state.scrapes, state.failures, state.last_start, reason))

    async def run(self, d: Daemon) -> None:
        """Record after every scrape result until cancelled."""
        while True:
            self.record(d)
            await d.changes.park()

    def starts(self, node: str, since: float = 0.0, until: float = float("inf")) -> list[float]:
        """Start times of the node's scrapes whose results came in `since`..`until`."""
        return [
            s.last_start
            for s in self.samples.get(node, [])
            if s.last_start is not None and since <= s.t <= until
        ]


@dataclass(slots=True)
class ApiProbe:
    """Polls one path (the node list by default); records every answer and how long it took.

    A poll that gets no answer within API_DEADLINE is a failure."""

    path: str = f"{PREFIX}/nodes"
    answers: list[tuple[float, float, int, frozenset[str]]] = field(default_factory=list)
    """(trio time, seconds taken, status, node names served)."""
    failures: list[str] = field(default_factory=list)

    async def run(self, client: httpx.AsyncClient, interval: float = 0.25) -> None:
        while True:
            began = trio.current_time()
            try:
                with trio.fail_after(API_DEADLINE):
                    response = await client.get(self.path)
            except (trio.TooSlowError, httpx.HTTPError) as exc:
                self.failures.append(f"at {began:.1f}: {exc!r}")
            else:
                names: frozenset[str] = frozenset()
                if response.status_code == 200 and self.path.endswith("/nodes"):
                    names = frozenset(i["metadata"]["name"] for i in response.json()["items"])
                self.answers.append(
                    (began, trio.current_time() - began, response.status_code, names)
                )
            await trio.sleep(interval)

    def during(self, since: float, until: float) -> list[tuple[float, float, int, frozenset[str]]]:
        return [a for a in self.answers if since <= a[0] <= until]
