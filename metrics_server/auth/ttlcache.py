"""Caches for token and access reviews: a bounded TTL map, and the review cache built on it.

Keys are always digests (never tokens). Only definitive answers are stored; callers never
put errors here, so a backend failure can't be replayed as an answer, let alone as an allow.

`ReviewCache` adds two things upstream's cached authenticator and authorizer lack, both aimed
at the latency tail when an entry expires under steady traffic (measured: `nox -s bench-api`):
one review in flight per key (concurrent misses wait for it instead of each asking
kube-apiserver), and a refresh in the background when an entry in use nears its expiry.
Neither serves an answer past the TTL it was stored with.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

__all__ = ["ReviewCache", "TTLCache"]

V = TypeVar("V")

REFRESH_FRACTION = 0.25
"""An entry used in the last quarter of its TTL is reviewed again in the background."""


class TTLCache(Generic[V]):
    """Maps key → value until `clock() >= expiry`; the oldest entries go first when full."""

    def __init__(self, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._entries: OrderedDict[str, tuple[float, float, V]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def get(self, key: str) -> V | None:
        entry = self.entry(key)
        return None if entry is None else entry[0]

    def entry(self, key: str) -> tuple[V, float, float] | None:
        """(value, seconds left, the TTL it was stored with), or None when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expiry, ttl, value = entry
        left = expiry - self._clock()
        if left <= 0:
            del self._entries[key]
            return None
        return value, left, ttl

    def put(self, key: str, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + ttl, ttl, value)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class _Flight(Generic[V]):
    """One review in progress; waiters read its outcome once `done` is set."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: Exception | None = None


class ReviewCache(Generic[V]):
    """A TTLCache whose misses are coalesced per key and whose busy entries refresh early.

    `lookup(key, fetch, ttl_of)`: a fresh entry answers at once; in its last quarter it also
    starts one background `fetch` (when `run` is serving a nursery). A miss runs `fetch` once
    for all concurrent callers of that key; its exception reaches each of them and is never
    stored. Without `run`, it is a coalescing TTL cache.
    """

    def __init__(self, *, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        self._cache: TTLCache[V] = TTLCache(max_entries=max_entries, clock=clock)
        self._flights: dict[str, _Flight[V]] = {}
        self._refreshing: set[str] = set()
        self._nursery: trio.Nursery | None = None

    def __len__(self) -> int:
        return len(self._cache)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background refreshes until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def lookup(
        self, key: str, fetch: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float]
    ) -> V:
        while True:
            hit = self._cache.entry(key)
            if hit is not None:
                value, left, ttl = hit
                if left <= REFRESH_FRACTION * ttl:
                    self._refresh_soon(key, fetch, ttl_of)
                return value
            flight = self._flights.get(key)
            if flight is None:
                return await self._fly(key, fetch, ttl_of)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.value is not None:
                return flight.value
            # The review was cancelled along with the request that started it: try again.

    async def _fly(
        self, key: str, fetch: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float]
    ) -> V:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            value = await fetch()
        except Exception as exc:
            flight.error = exc
            raise
        else:
            self._cache.put(key, value, ttl_of(value))
            flight.value = value
            return value
        finally:
            del self._flights[key]
            flight.done.set()

    def _refresh_soon(
        self, key: str, fetch: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float]
    ) -> None:
        if self._nursery is None or key in self._refreshing or key in self._flights:
            return
        self._refreshing.add(key)
        self._nursery.start_soon(
            self._refresh, key, fetch, ttl_of, name=f"review-refresh:{key[:8]}"
        )

    async def _refresh(
        self, key: str, fetch: Callable[[], Awaitable[V]], ttl_of: Callable[[V], float]
    ) -> None:
        try:
            await self._fly(key, fetch, ttl_of)
        except Exception:
            pass  # the entry simply expires; the next miss meets the error itself
        finally:
            self._refreshing.discard(key)
