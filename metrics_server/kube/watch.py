"""List-then-watch loop for one resource, feeding a cache; never ends gracefully.

One `run_watch` per resource: list (paginated) and hand the whole set to the sink, then
watch from the list's resourceVersion with bookmarks, applying events as they arrive.
A 410 Gone means our resourceVersion is too old: relist. Any other failure: reconnect
after a capped, jittered exponential backoff. The sink keeps its contents across
failures, so a dropped watch never empties a cache.

Logs follow the state, not the attempts: the first failure of a streak is a warning (with
the error and the backoff), further attempts of the same streak are debug lines, and one
INFO line says when the watch works again (a list answered, or the watch delivered an
event). An apiserver down for an hour is two lines per watch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httpx
import orjson
import trio

from metrics_server.logs import log_kv
from metrics_server.quantity import format_go_duration

log = logging.getLogger(__name__)

METADATA_LIST_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
METADATA_WATCH_ACCEPT = (
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)

BACKOFF_SECONDS = (0.5, 1, 2, 4, 8, 16, 30)
"""Reconnect delays; the last repeats. Each gets ±25 % jitter so replicas don't align."""
LIST_TIMEOUT = 60.0
"""Per list page request (kube-apiserver's own default --request-timeout)."""
WATCH_INACTIVITY_TIMEOUT = 90.0
"""No byte (not even a bookmark) for this long means the stream is dead."""
PAGE_SIZE = 500


class Sink(Protocol):
    """What a watch feeds: a cache that understands Kubernetes objects.

    A list arrives in pages; each object is turned into the cache's compact form as its page
    arrives (`compact`, None to skip it), so a 150,000-pod list never holds 150,000 decoded
    JSON objects, and the whole set is handed over at the end (`replace_compact`).
    """

    def compact(self, obj: dict[str, Any]) -> Any: ...
    def replace_compact(self, items: list[Any]) -> None: ...
    def upsert(self, obj: dict[str, Any]) -> None: ...
    def delete(self, obj: dict[str, Any]) -> None: ...


class WatchError(Exception):
    """A list or watch failed; the message says what and where."""


class Gone(WatchError):
    """The resourceVersion expired (HTTP 410): relist."""


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What to list and watch."""

    name: str
    """Short name for logs and metrics, e.g. "nodes"."""
    path: str
    params: Mapping[str, str]
    metadata_only: bool = False


@dataclass(slots=True)
class WatchStats:
    """Counters a health check and /metrics read."""

    synced: bool = False
    synced_event: trio.Event = field(default_factory=trio.Event)
    running: bool = False
    """True while `run_watch` is looping (listing, watching or backing off)."""
    restarts: int = 0
    last_error: str = ""
    last_event_time: float = 0.0


async def run_watch(
    client: httpx.AsyncClient,
    spec: WatchSpec,
    sink: Sink,
    stats: WatchStats,
    *,
    on_restart: Callable[[str], None] | None = None,
    on_change: Callable[[], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `sink` in step with the apiserver forever; `started()` after the first list."""
    stats.running = True
    try:
        await _run(client, spec, sink, stats, on_restart, on_change, task_status)
    finally:
        stats.running = False


async def _run(
    client: httpx.AsyncClient,
    spec: WatchSpec,
    sink: Sink,
    stats: WatchStats,
    on_restart: Callable[[str], None] | None,
    on_change: Callable[[], None] | None,
    task_status: trio.TaskStatus[None],
) -> None:
    attempt = 0
    started = False
    resource_version = ""
    streak = _Streak(spec.name)

    def connected() -> None:
        # The apiserver took the watch: whatever ends this stream starts a new series of
        # retries. Without this only a list or a clean end reset the backoff, so a watch
        # dropped now and then over hours reconnected later and later, up to the cap.
        # (Not yet "works again": a too-old resourceVersion is a 200 and then a 410 event.)
        nonlocal attempt
        attempt = 0

    while True:
        try:
            if not resource_version:
                resource_version = await _list(client, spec, sink)
                stats.synced = True
                stats.synced_event.set()
                if on_change is not None:
                    on_change()
                stats.last_error = ""
                stats.last_event_time = trio.current_time()
                if not started:
                    started = True
                    task_status.started()
                log.debug("listed %s at resourceVersion %s", spec.name, resource_version)
                attempt = 0
                streak.recovered()
            resource_version = await _watch(
                client, spec, sink, stats, resource_version, on_change, connected,
                streak.recovered,
            )
            # Server closed the stream normally (timeoutSeconds): resume from where we are.
            attempt = 0
            streak.recovered()
            continue
        except Gone:
            resource_version = ""
            reason = "expired"
            delay = _backoff(attempt)
            # A routine relist on its own; inside a failure streak, part of coming back.
            level = logging.DEBUG if streak.failing else logging.INFO
            log_kv(log, level, "Watch expired (410 Gone); relisting", resource=spec.name)
        except WatchError as exc:
            stats.last_error = str(exc)
            reason = "error"
            delay = _backoff(attempt)
            streak.failed(exc, delay)
        stats.restarts += 1
        if on_restart is not None:
            on_restart(reason)
        attempt += 1
        await trio.sleep(delay)


def _backoff(attempt: int) -> float:
    """The jittered delay before reconnect number `attempt` (0-based) of a streak."""
    return BACKOFF_SECONDS[min(attempt, len(BACKOFF_SECONDS) - 1)] * random.uniform(0.75, 1.25)


def _millis(seconds: float) -> str:
    """A Go duration to the millisecond ("1.234s"): more digits are noise in a log line."""
    return format_go_duration(round(seconds * 1000) * 1_000_000)


@dataclass(slots=True)
class _Streak:
    """Failures since the watch last worked, for logging once per change of state."""

    resource: str
    failing: bool = False
    attempts: int = 0
    since: float = 0.0

    def failed(self, exc: WatchError, delay: float) -> None:
        self.attempts += 1
        retry_in = _millis(delay)
        if self.failing:
            log_kv(
                log,
                logging.DEBUG,
                "Watch still failing; reconnecting",
                err=exc,
                resource=self.resource,
                attempt=self.attempts,
                retryIn=retry_in,
            )
            return
        self.failing, self.since = True, trio.current_time()
        log_kv(
            log,
            logging.WARNING,
            "Watch failed; reconnecting",
            err=exc,
            resource=self.resource,
            retryIn=retry_in,
        )

    def recovered(self) -> None:
        if not self.failing:
            return
        down = _millis(trio.current_time() - self.since)
        log_kv(
            log,
            logging.INFO,
            "Watch works again",
            resource=self.resource,
            failedAttempts=self.attempts,
            downFor=down,
        )
        self.failing, self.attempts = False, 0


async def _list(client: httpx.AsyncClient, spec: WatchSpec, sink: Sink) -> str:
    headers = {"Accept": METADATA_LIST_ACCEPT} if spec.metadata_only else {}
    items: list[Any] = []
    cont = ""
    rv = ""
    pages = 0
    while True:
        params = dict(spec.params, limit=str(PAGE_SIZE))
        if cont:
            params["continue"] = cont
        # Per page, like client-go's per-request timeout: a 150,000-pod list is 300 pages
        # and may take longer than any one request should.
        with trio.move_on_after(LIST_TIMEOUT) as scope:
            body = await _get_json(client, spec, params, headers)
        if scope.cancelled_caught:
            raise WatchError(
                f"list {spec.name}: no answer to page {pages + 1} within {LIST_TIMEOUT:.0f}s"
            )
        pages += 1
        if body.get("kind") == "Status":
            raise WatchError(f"list {spec.name}: {body.get('message', 'error status')}")
        page = body.get("items") or []
        if not isinstance(page, list):
            raise WatchError(f"list {spec.name}: items is not a list")
        for obj in page:
            if isinstance(obj, dict) and (item := sink.compact(obj)) is not None:
                items.append(item)
        meta = body.get("metadata") or {}
        rv = str(meta.get("resourceVersion", ""))
        cont = str(meta.get("continue") or "")
        if not cont:
            break
    if not rv:
        raise WatchError(f"list {spec.name}: answer has no resourceVersion")
    sink.replace_compact(items)
    return rv


async def _get_json(
    client: httpx.AsyncClient,
    spec: WatchSpec,
    params: Mapping[str, str],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    try:
        response = await client.get(spec.path, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise WatchError(f"list {spec.name}: {type(exc).__name__}: {exc}") from exc
    if response.status_code == 410:
        raise Gone(f"list {spec.name}: 410 Gone")
    if response.status_code != 200:
        raise WatchError(
            f"list {spec.name}: HTTP {response.status_code}: {_status_message(response.content)}"
        )
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise WatchError(f"list {spec.name}: invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise WatchError(f"list {spec.name}: answer is not an object")
    return body


async def _watch(
    client: httpx.AsyncClient,
    spec: WatchSpec,
    sink: Sink,
    stats: WatchStats,
    resource_version: str,
    on_change: Callable[[], None] | None,
    on_connected: Callable[[], None],
    on_working: Callable[[], None],
) -> str:
    params = dict(
        spec.params,
        watch="1",
        resourceVersion=resource_version,
        allowWatchBookmarks="true",
        # Spread reconnects: the server ends each watch after 5-10 minutes.
        timeoutSeconds=str(random.randint(300, 600)),
    )
    headers = {"Accept": METADATA_WATCH_ACCEPT} if spec.metadata_only else {}
    request = client.build_request("GET", spec.path, params=params, headers=headers)
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise WatchError(f"watch {spec.name}: {type(exc).__name__}: {exc}") from exc
    chunks: AsyncGenerator[bytes, None] | None = None
    try:
        if response.status_code == 410:
            raise Gone(f"watch {spec.name}: 410 Gone")
        if response.status_code != 200:
            body = await response.aread()
            raise WatchError(
                f"watch {spec.name}: HTTP {response.status_code}: {_status_message(body)}"
            )
        on_connected()
        buffer = b""
        chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
        while True:
            with trio.move_on_after(WATCH_INACTIVITY_TIMEOUT) as idle:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return resource_version
            if idle.cancelled_caught:
                raise WatchError(
                    f"watch {spec.name}: nothing received for {WATCH_INACTIVITY_TIMEOUT:.0f}s"
                )
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    resource_version = _apply(spec, sink, line, resource_version)
                    stats.last_event_time = trio.current_time()
                    on_working()
                    if on_change is not None:
                        on_change()
    except httpx.HTTPError as exc:
        raise WatchError(f"watch {spec.name}: stream broke: {type(exc).__name__}: {exc}") from exc
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            if chunks is not None:
                await chunks.aclose()
            await response.aclose()


def _apply(spec: WatchSpec, sink: Sink, line: bytes, resource_version: str) -> str:
    try:
        event = orjson.loads(line)
        kind = event["type"]
        obj = event["object"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise WatchError(f"watch {spec.name}: malformed event: {exc}") from exc
    if not isinstance(obj, dict):
        raise WatchError(f"watch {spec.name}: event object is not an object")
    if kind == "ERROR":
        code = obj.get("code")
        if code == 410:
            raise Gone(f"watch {spec.name}: {obj.get('message', '410 Gone')}")
        raise WatchError(f"watch {spec.name}: error event: {obj.get('message', obj)}")
    new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
    if kind in ("ADDED", "MODIFIED"):
        sink.upsert(obj)
    elif kind == "DELETED":
        sink.delete(obj)
    elif kind != "BOOKMARK":
        log.debug("watch %s: ignoring event type %r", spec.name, kind)
    return new_rv


def _status_message(body: bytes) -> str:
    try:
        status = orjson.loads(body)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    except orjson.JSONDecodeError:
        pass
    return body[:200].decode("utf-8", "replace") or "(empty body)"
