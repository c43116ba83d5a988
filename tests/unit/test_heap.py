"""Start-up GC policy: survivors of slow full collections are frozen; fast ones change nothing;
the settled heap is frozen once start-up is over."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio

from metrics_server.heap import FullCollectionTimer, settle_heap


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the suite shares one interpreter)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_timer_counts_only_slow_full_collections() -> None:
    slow = FullCollectionTimer(threshold=0.0)
    never = FullCollectionTimer(threshold=60.0)
    gc.callbacks.extend([slow, never])
    try:
        gc.collect(0)  # young collections are not timed
        assert slow.slow == 0
        gc.collect()
    finally:
        gc.callbacks.remove(slow)
        gc.callbacks.remove(never)
    assert slow.slow == 1 and slow.longest > 0
    assert never.slow == 0 and never.longest > 0


async def test_slow_full_collections_freeze_their_survivors() -> None:
    timer = FullCollectionTimer(threshold=0.0)  # every full collection counts as slow
    keep = [[i] for i in range(50_000)]  # tracked objects that survive
    done = trio.Event()
    froze = trio.Event()

    async def started() -> None:
        await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: settle_heap(started, poll=0.01, timer=timer, on_freeze=froze.set)
        )
        await trio.sleep(0.05)
        assert gc.get_freeze_count() == 0  # nothing slow yet: nothing frozen
        gc.collect()
        with trio.fail_after(5):
            await froze.wait()
        assert gc.get_freeze_count() >= len(keep)
        assert timer in gc.callbacks
        done.set()
    assert timer not in gc.callbacks  # removed once start-up is over
    assert gc.get_freeze_count() >= len(keep)


async def test_fast_collections_freeze_nothing_until_started() -> None:
    timer = FullCollectionTimer(threshold=60.0)
    done = trio.Event()

    async def started() -> None:
        await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: settle_heap(started, poll=0.01, timer=timer))
        gc.collect()
        await trio.sleep(0.1)
        assert gc.get_freeze_count() == 0
        done.set()
    assert gc.get_freeze_count() > 0  # the final freeze of the settled heap
