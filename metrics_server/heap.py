"""The cyclic garbage collector's policy during start-up: keep full collections short.

Start-up builds what lives for the whole run (one client and task per node, the pod cache).
Each full collection walks every tracked object, and at 5,000 nodes that is ~2 million: a
1.3 s pause every few seconds, which times out thousands of scrapes at once, so start-up never
finishes and the heap is never settled (measured: 41 % of the server in `gc_collect_main`).

So while starting, whenever a full collection was slow, what survived it is frozen
(`gc.freeze`: moved out of the collector's sight; still freed by reference counting). Once
start-up is over, one last collection and freeze. Frozen objects are only ever survivors of a
collection, so what can never be collected is bounded by cycles that were alive then.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from metrics_server.logs import log_kv

__all__ = ["FullCollectionTimer", "settle_heap"]

log = logging.getLogger(__name__)

SLOW_FULL_COLLECTION = 0.05
"""Seconds: a full collection longer than this during start-up freezes its survivors."""
POLL_SECONDS = 0.5


class FullCollectionTimer:
    """A `gc.callbacks` hook that notes when a full (generation 2) collection was slow."""

    def __init__(self, threshold: float = SLOW_FULL_COLLECTION) -> None:
        self.threshold = threshold
        self.slow = 0
        """Slow full collections since the last freeze."""
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.longest = max(self.longest, took)
        if took > self.threshold:
            self.slow += 1


async def settle_heap(
    started: Callable[[], Awaitable[None]],
    *,
    poll: float = POLL_SECONDS,
    timer: FullCollectionTimer | None = None,
    on_freeze: Callable[[], None] | None = None,
) -> None:
    """Freeze the survivors of slow full collections until `started()` returns, then collect
    and freeze once more."""
    timer = timer or FullCollectionTimer()
    freezes = 0

    async def freeze_after_slow_collections() -> None:
        nonlocal freezes
        while True:
            await trio.sleep(poll)
            if timer.slow:
                timer.slow = 0
                gc.freeze()
                freezes += 1
                if on_freeze is not None:
                    on_freeze()

    gc.callbacks.append(timer)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(freeze_after_slow_collections, name="gc-freeze-survivors")
            await started()
            nursery.cancel_scope.cancel()
    finally:
        gc.callbacks.remove(timer)
    gc.collect()
    gc.freeze()
    log_kv(
        log,
        logging.INFO,
        "Start-up heap frozen for the GC",
        objects=gc.get_freeze_count(),
        earlierFreezes=freezes,
        longestFullCollection=f"{timer.longest * 1000:.0f}ms",
    )
