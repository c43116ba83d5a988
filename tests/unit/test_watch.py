"""The list/watch loop against a scripted apiserver (httpx.MockTransport, fake clock)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import httpx
import orjson
import pytest
import trio

from metrics_server.kube import watch as watch_module
from metrics_server.kube.cache import PodCache
from metrics_server.kube.watch import BACKOFF_SECONDS, WatchSpec, WatchStats, run_watch


def pod(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv)}}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


class Chunks:
    """An async byte iterator without generator finalization (trio warns on those)."""

    def __init__(self, chunks: list[bytes], hang: bool) -> None:
        self._chunks = list(chunks)
        self._hang = hang

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._chunks:
            return self._chunks.pop(0)
        if self._hang:
            await trio.sleep_forever()
        raise StopAsyncIteration


class ScriptedApiserver:
    """Answers lists and watches from a script; records what was asked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.lists = 0
        self.watches = 0
        self.final_watch = trio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        params = request.url.params
        if params.get("watch") != "1":
            self.lists += 1
            if self.lists == 1:
                body = {"metadata": {"resourceVersion": "10"}, "items": [pod("a", 5)]}
            elif self.lists == 2:
                return httpx.Response(500, json={"kind": "Status", "message": "etcd down"})
            else:
                body = {
                    "metadata": {"resourceVersion": "20"},
                    "items": [pod("a", 5), pod("b", 11), pod("c", 19)],
                }
            return httpx.Response(200, json=body)
        self.watches += 1
        if self.watches == 1:
            assert params["resourceVersion"] == "10"
            return httpx.Response(200, content=self._stream([event("ADDED", pod("b", 11))]))
        if self.watches == 2:
            # Resumed from the last event's resourceVersion, then told it is too old.
            assert params["resourceVersion"] == "11"
            status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            return httpx.Response(200, content=self._stream([event("ERROR", status)]))
        assert params["resourceVersion"] == "20"
        self.final_watch.set()
        return httpx.Response(200, content=self._stream([], hang=True))

    def _stream(self, chunks: list[bytes], hang: bool = False) -> Chunks:
        return Chunks(chunks, hang)


async def test_list_watch_resume_relist_and_keep_cache(autojump_clock: trio.abc.Clock) -> None:
    server = ScriptedApiserver()
    cache = PodCache()
    stats = WatchStats()
    restarts: list[str] = []
    spec = WatchSpec("pods", "/api/v1/pods", {"fieldSelector": "status.phase=Running"}, True)
    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(server.handle), base_url="https://api"
        ) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            lambda task_status: run_watch(
                client, spec, cache, stats, on_restart=restarts.append, task_status=task_status
            )
        )
        assert stats.synced
        assert stats.running
        with trio.fail_after(600):
            await server.final_watch.wait()
        assert stats.running  # through the 410 relist and the failed list's backoff
        nursery.cancel_scope.cancel()
    assert not stats.running  # what livez's metadata-informer-sync reads
    assert sorted(p.name for p in cache.all_sorted()) == ["a", "b", "c"]
    # 410 → relist; failed relist (500) → backoff and retry; the cache was never emptied.
    assert restarts == ["expired", "error"]
    assert stats.last_error == ""  # cleared by the successful relist
    first = server.requests[0]
    assert first.headers["accept"].startswith("application/json;as=PartialObjectMetadataList")
    assert first.url.params["fieldSelector"] == "status.phase=Running"
    watch = next(r for r in server.requests if r.url.params.get("watch") == "1")
    assert watch.url.params["allowWatchBookmarks"] == "true"
    assert watch.headers["accept"].startswith("application/json;as=PartialObjectMetadata;")


async def test_cache_survives_when_apiserver_fails(autojump_clock: trio.abc.Clock) -> None:
    calls = 0
    gave_up = trio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(
                200, json={"metadata": {"resourceVersion": "1"}, "items": [pod("a", 1)]}
            )
        if calls > 6:
            gave_up.set()
        raise httpx.ConnectError("connection refused")

    cache = PodCache()
    stats = WatchStats()
    spec = WatchSpec("pods", "/api/v1/pods", {}, True)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="https://api") as c,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            lambda task_status: run_watch(c, spec, cache, stats, task_status=task_status)
        )
        start = trio.current_time()
        await gave_up.wait()
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert len(cache) == 1  # a dead apiserver never empties the cache
    assert stats.restarts >= 5
    assert "connection refused" in stats.last_error
    # Backoff grows: 5 retries take at least 0.375+0.75+1.5+3+6 s (lower jitter bound).
    assert elapsed >= 11


async def test_list_timeout_is_per_page(autojump_clock: trio.abc.Clock) -> None:
    """Three pages of 45 s each (135 s in all) make a complete list, as with client-go's
    per-request timeout; a page that takes longer than 60 s fails, naming the page."""
    slow_page = 2  # 0 = never too slow
    pages_served = 0
    listed = trio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal pages_served
        params = request.url.params
        if params.get("watch") == "1":
            listed.set()
            await trio.sleep_forever()
        assert params["limit"] == "500"
        page = int(params.get("continue") or 0)
        await trio.sleep(61 if page + 1 == slow_page else 45)
        pages_served += 1
        meta = {"resourceVersion": "7", **({"continue": str(page + 1)} if page < 2 else {})}
        return httpx.Response(200, json={"metadata": meta, "items": [pod(f"p{page}", 1)]})

    spec = WatchSpec("pods", "/api/v1/pods", {}, True)
    cache, stats = PodCache(), WatchStats()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="https://api") as c,
        trio.open_nursery() as nursery,
    ):
        failed = trio.Event()
        nursery.start_soon(
            lambda: run_watch(c, spec, cache, stats, on_restart=lambda _: failed.set())
        )
        with trio.fail_after(1000):
            await failed.wait()
        assert stats.last_error == "list pods: no answer to page 2 within 60s"
        assert len(cache) == 0 and not stats.synced
        slow_page = 0
        with trio.fail_after(1000):
            await listed.wait()
        nursery.cancel_scope.cancel()
    assert sorted(p.name for p in cache.all_sorted()) == ["p0", "p1", "p2"]


class _Extreme:
    """A stand-in for the `random` module that always draws one end of the range."""

    def __init__(self, end: int) -> None:
        self._end = end
        self._rng = random.Random(0)

    def uniform(self, a: float, b: float) -> float:
        return (a, b)[self._end]

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)


@pytest.mark.parametrize("jitter", ["seeded", "always-max", "always-min"])
@pytest.mark.parametrize("failing", ["list", "watch"])
async def test_reconnect_backoff_never_exceeds_its_cap(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, jitter: str, failing: str
) -> None:
    """60 failures in a row (of the list, or of the watch request after one good list): the
    delay before each retry grows through the schedule, stays within ±25 % of its step, and
    never passes the cap plus jitter, however the jitter falls."""
    source: Any = {
        "seeded": random.Random(20240601),
        "always-max": _Extreme(1),
        "always-min": _Extreme(0),
    }[jitter]
    monkeypatch.setattr(watch_module, "random", source)
    failures = 60
    attempts: list[float] = []  # trio clock at each failing request
    done = trio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        is_watch = request.url.params.get("watch") == "1"
        if failing == "watch" and not is_watch:
            assert not attempts, "relisted although the list's resourceVersion was kept"
            return httpx.Response(200, json={"metadata": {"resourceVersion": "3"}, "items": []})
        attempts.append(trio.current_time())
        if len(attempts) > failures:
            done.set()
            await trio.sleep_forever()
        raise httpx.ConnectError("connection refused")

    spec = WatchSpec("pods", "/api/v1/pods", {}, True)
    cache, stats = PodCache(), WatchStats()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="https://api") as c,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(lambda: run_watch(c, spec, cache, stats))
        with trio.fail_after(failures * 60):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert stats.restarts == failures
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(gaps) == failures
    cap = max(BACKOFF_SECONDS)
    assert BACKOFF_SECONDS[-1] == cap  # the last step is the one that repeats
    eps = 1e-6
    for i, gap in enumerate(gaps):
        step = BACKOFF_SECONDS[min(i, len(BACKOFF_SECONDS) - 1)]
        assert 0.75 * step - eps <= gap <= 1.25 * step + eps, (i, gap)
        assert gap <= 1.25 * cap + eps, (i, gap)
    capped = gaps[len(BACKOFF_SECONDS) :]
    # It did reach the cap and stayed there: this is not a schedule that never grows.
    assert min(capped) >= 0.75 * cap - eps
    if jitter == "seeded":
        assert len({round(g, 6) for g in capped}) > len(capped) // 2  # really jittered
    elif jitter == "always-max":
        assert max(gaps) == pytest.approx(1.25 * cap)
