"""ReviewCache: one review in flight per key, background refresh of busy entries, and never an
answer past its TTL or a failure turned into an answer."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from metrics_server.auth.errors import AuthBackendError
from metrics_server.auth.ttlcache import ReviewCache


class Backend:
    """A review backend whose answers and failures the test scripts, counting calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.answers: list[str | Exception] = []
        self.release = trio.Event()
        self.hold = False

    async def fetch(self) -> str:
        self.calls += 1
        if self.hold:
            await self.release.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ten_seconds(_: str) -> float:
    return 10.0


async def test_concurrent_misses_share_one_review(autojump_clock: trio.abc.Clock) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["alice"]
    backend.hold = True
    got: list[str] = []

    async def ask() -> None:
        got.append(await cache.lookup("k", backend.fetch, ten_seconds))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        backend.release.set()
    assert got == ["alice"] * 10
    assert backend.calls == 1


async def test_a_failure_reaches_every_waiter_and_is_not_kept(
    autojump_clock: trio.abc.Clock,
) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = [AuthBackendError("tokenreview webhook error: HTTP 500"), "alice"]
    backend.hold = True
    errors: list[str] = []

    async def ask() -> None:
        with pytest.raises(AuthBackendError) as caught:
            await cache.lookup("k", backend.fetch, ten_seconds)
        errors.append(str(caught.value))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        backend.release.set()
    assert errors == ["tokenreview webhook error: HTTP 500"] * 3
    assert len(cache) == 0
    assert await cache.lookup("k", backend.fetch, ten_seconds) == "alice"
    assert backend.calls == 2


async def test_waiters_retry_when_the_leading_request_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["never returned", "alice"]
    backend.hold = True
    got: list[str] = []

    async def follower() -> None:
        got.append(await cache.lookup("k", backend.fetch, ten_seconds))

    async with trio.open_nursery() as nursery:
        leader = trio.CancelScope()

        async def lead() -> None:
            with leader:
                await cache.lookup("k", backend.fetch, ten_seconds)

        nursery.start_soon(lead)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        leader.cancel()  # the client went away mid-review
        await trio.testing.wait_all_tasks_blocked()
        backend.answers.pop(0)
        backend.release.set()
    assert got == ["alice"]
    assert backend.calls == 2


async def test_busy_entry_is_refreshed_before_it_expires(autojump_clock: trio.abc.Clock) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["allowed", "allowed again"]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed"
        await trio.sleep(5)
        # Used in its first three quarters: answered, nothing refreshed.
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed"
        await trio.testing.wait_all_tasks_blocked()
        assert backend.calls == 1
        await trio.sleep(3)  # 8 s: in the last quarter
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed"
        await trio.testing.wait_all_tasks_blocked()
        assert backend.calls == 2
        await trio.sleep(9)  # 17 s: past the first answer's TTL, inside the refreshed one's
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed again"
        assert backend.calls == 2
        nursery.cancel_scope.cancel()


async def test_a_failed_refresh_leaves_the_original_expiry(autojump_clock: trio.abc.Clock) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["allowed", AuthBackendError("subjectaccessreview webhook error: HTTP 503")]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await cache.lookup("k", backend.fetch, ten_seconds)
        await trio.sleep(9)
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed"
        await trio.testing.wait_all_tasks_blocked()
        assert backend.calls == 2
        await trio.sleep(1.5)  # 10.5 s: the first answer has expired, the refresh failed
        backend.answers = [AuthBackendError("subjectaccessreview webhook error: HTTP 503")]
        with pytest.raises(AuthBackendError):
            await cache.lookup("k", backend.fetch, ten_seconds)
        assert backend.calls == 3
        nursery.cancel_scope.cancel()


async def test_a_refreshed_denial_replaces_the_allow_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["allowed", "denied"]
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await cache.lookup("k", backend.fetch, ten_seconds)
        await trio.sleep(8)
        await cache.lookup("k", backend.fetch, ten_seconds)
        await trio.testing.wait_all_tasks_blocked()
        assert await cache.lookup("k", backend.fetch, ten_seconds) == "denied"
        nursery.cancel_scope.cancel()


async def test_without_run_there_is_no_background_work(autojump_clock: trio.abc.Clock) -> None:
    cache: ReviewCache[str] = ReviewCache(clock=trio.current_time)
    backend = Backend()
    backend.answers = ["allowed", "second"]
    await cache.lookup("k", backend.fetch, ten_seconds)
    await trio.sleep(9)
    assert await cache.lookup("k", backend.fetch, ten_seconds) == "allowed"
    await trio.testing.wait_all_tasks_blocked()
    assert backend.calls == 1
    await trio.sleep(1)
    assert await cache.lookup("k", backend.fetch, ten_seconds) == "second"
