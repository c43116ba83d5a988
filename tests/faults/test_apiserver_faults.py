"""kube-apiserver fault matrix, one test per row: watches dropped, expired (410), failing and
slow lists, the apiserver down and back, and down at start. The caches never lose what they
hold, scraping and the API go on, the watches come back within their backoff, restarts are
counted, each fault episode is logged once per change of state (one warning when a watch
starts failing, one line when it works again, debug lines in between), memory stays
bounded, and nobody unreviewable gets in.

The scenario (tests/faults/_apiserver_matrix.py) runs once for all rows; see its docstring.
"""

from __future__ import annotations

import itertools
import logging

import pytest

from tests.faults._apiserver_matrix import DOWN_SECONDS, ApiserverRun, Window
from tests.faults._observe import API_DEADLINE

RESOLUTION = 10.0
SCHEDULE_SLACK = 1.5
MARKER_LIMIT = 8.0
"""Fault to marker in the caches, for every row (the slow list takes 2 s of it)."""
FIRST_RECONNECT_LIMIT = 2.0
"""A dropped watch reconnects after the first backoff step (0.5 s ± 25 %)."""
ORIGINAL_NODES = ("node-0", "node-1", "node-2")

ROW_RSS_GROWTH_LIMIT_KIB = 32 * 1024
"""Resident and peak memory growth of the whole process over one row. Far above what a
few markers cost, far below what a watch that kept its failed streams' data would take."""
WATCHES = ("nodes", "pods")
EPISODES = {"watch-drop": 2}
"""Fault episodes per watch in a row (the watch-drop row drops the watches twice); 1 if
not listed."""

EXPECTED_RESTARTS = {
    "watch-drop": (("nodes", "error"), ("pods", "error")),
    "watch-410-gone": (("nodes", "expired"), ("pods", "expired")),
    "list-500": (("nodes", "expired"), ("pods", "expired")),
    "list-slow": (("nodes", "expired"), ("pods", "expired")),
    "apiserver-down-and-up": (("nodes", "error"), ("pods", "error")),
}


def _watch_lines(
    run: ApiserverRun, since: float, until: float, level: int = logging.WARNING
) -> list[str]:
    """The watch logger's messages of exactly `level` (WARNING: and above) in the span."""
    return [
        message
        for t, lvl, logger, message in run.logs.records
        if logger == "metrics_server.kube.watch"
        and (lvl == level or (level == logging.WARNING and lvl > level))
        and since <= t <= until
    ]


def _watch_warnings(run: ApiserverRun, window: Window) -> list[str]:
    return _watch_lines(run, window.start, window.end)


def _of(resource: str, lines: list[str], message: str) -> list[str]:
    return [m for m in lines if m.startswith(f'"{message}"') and f'resource="{resource}"' in m]


def _assert_logged_once_per_state_change(
    run: ApiserverRun, since: float, until: float, episodes: int
) -> None:
    """Per watch and episode: one warning as it starts failing (saying why and when it
    retries), one INFO line when it works again; nothing else at WARNING or INFO."""
    warnings = _watch_lines(run, since, until)
    infos = _watch_lines(run, since, until, logging.INFO)
    for resource in WATCHES:
        failed = _of(resource, warnings, "Watch failed; reconnecting")
        assert len(failed) == episodes, (resource, warnings)
        assert all(" err=" in m and " retryIn=" in m for m in failed), failed
        back = _of(resource, infos, "Watch works again")
        assert len(back) == episodes, (resource, infos)
    assert len(warnings) == episodes * len(WATCHES), warnings
    assert len(infos) == episodes * len(WATCHES), infos


@pytest.mark.parametrize("row", list(EXPECTED_RESTARTS))
def test_caches_survive_and_watches_recover(row: str, apiserver_run: ApiserverRun) -> None:
    run = apiserver_run
    window = run.windows[row]

    # What the fault hid from the daemon reaches it once the apiserver behaves.
    assert window.marker_seconds is not None, f"{row}: the marker never reached the caches"
    assert window.marker_seconds < MARKER_LIMIT

    # The caches kept everything they had throughout.
    nodes, pods = run.min_caches(window)
    assert nodes >= run.nodes_at_start and pods >= run.pods_at_start

    # Each restart is counted under its reason; the log follows the state, not the attempts.
    for key in EXPECTED_RESTARTS[row]:
        assert window.restarts(*key) >= 1, (key, window.restarts_before, window.restarts_after)
    _assert_logged_once_per_state_change(run, window.start, window.end, EPISODES.get(row, 1))

    # Memory stays bounded: nothing of the failed streams or lists is kept.
    rss_growth = window.rss_kib[1] - window.rss_kib[0]
    hwm_growth = window.hwm_kib[1] - window.hwm_kib[0]
    assert rss_growth < ROW_RSS_GROWTH_LIMIT_KIB, (row, window.rss_kib)
    assert hwm_growth < ROW_RSS_GROWTH_LIMIT_KIB, (row, window.hwm_kib)

    # Ready all along: the store has metrics even while the watches are down.
    readyz = run.readyz.during(window.start, window.end)
    assert readyz and all(status == 200 and took < API_DEADLINE for _, took, status, _ in readyz)

    # The API answered promptly; with the apiserver down, tokens whose review expired
    # from the cache are refused (fail closed), never let through unreviewed.
    answers = run.api.during(window.start, window.end)
    assert answers
    allowed = {200, 401} if row == "apiserver-down-and-up" else {200}
    for _, took, status, names in answers:
        assert status in allowed and took < API_DEADLINE
        if status == 200:
            assert set(ORIGINAL_NODES) <= names


def test_scraping_never_paused(apiserver_run: ApiserverRun) -> None:
    run = apiserver_run
    assert not run.api.failures and not run.readyz.failures
    for node in ORIGINAL_NODES:
        samples = run.scrapes.samples[node]
        assert all(s.reason is None for s in samples)
        starts = [*run.scrapes.starts(node), run.ended]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps) <= RESOLUTION + SCHEDULE_SLACK, (node, gaps)


def test_a_dropped_watch_reconnects_at_once_every_time(apiserver_run: ApiserverRun) -> None:
    """The backoff starts over after a healthy stream: drops hours apart must not add up."""
    seconds = apiserver_run.windows["watch-drop"].notes["each_marker_seconds"]
    assert isinstance(seconds, list) and len(seconds) == 2
    assert all(s is not None and s < FIRST_RECONNECT_LIMIT for s in seconds), seconds


def test_failing_lists_really_failed_and_are_retried(apiserver_run: ApiserverRun) -> None:
    window = apiserver_run.windows["list-500"]
    assert window.notes["failed_lists_left"] == 0
    # The streak began with the dropped watch (its warning); the 500s that followed are
    # repeats of it: debug lines that name the status, never another warning.
    repeats = _watch_lines(apiserver_run, window.start, window.end, logging.DEBUG)
    still = [m for m in repeats if m.startswith('"Watch still failing; reconnecting"')]
    assert any("HTTP 500" in m for m in still), repeats
    assert not any("500" in w for w in _watch_warnings(apiserver_run, window))


def test_slow_lists_do_not_slow_anything_else(apiserver_run: ApiserverRun) -> None:
    window = apiserver_run.windows["list-slow"]
    assert window.marker_seconds is not None and window.marker_seconds >= 2.0  # really slow
    answers = apiserver_run.api.during(window.start, window.end)
    assert len(answers) >= 4 and max(took for _, took, _, _ in answers) < API_DEADLINE


def test_apiserver_down_lets_no_unreviewed_token_in(apiserver_run: ApiserverRun) -> None:
    notes = apiserver_run.windows["apiserver-down-and-up"].notes
    assert notes["fresh_token_status"] == 401, notes["fresh_token_body"]
    assert '"kind":"Status"' in str(notes["fresh_token_body"])
    assert isinstance(notes["fresh_token_seconds"], float)
    assert notes["fresh_token_seconds"] < API_DEADLINE
    # The failed review was not cached: once reviews work, the same token gets in.
    assert notes["fresh_token_status_after"] == 200


def test_apiserver_down_at_start(apiserver_run: ApiserverRun) -> None:
    result = apiserver_run.down_at_start
    # Serving, not ready, and /readyz?verbose says why in words.
    assert result.readyz_status == 500
    assert "[-]metric-informer-sync failed" in result.readyz_text
    assert "[-]metadata-informer-sync failed" in result.readyz_text
    assert "connect" in result.readyz_text.lower()
    # Retrying with backoff (0.5, 1, 2 s …), not in a tight loop.
    assert 2 <= result.attempts_in_window <= 5, result
    assert result.window >= DOWN_SECONDS
    # Then the apiserver comes up and the daemon gets ready without a restart.
    assert result.ready_after_up is not None and result.ready_after_up < MARKER_LIMIT
    assert result.readyz_after == 200
    # Every failed attempt is counted under reason "error" in /metrics …
    for resource in WATCHES:
        counted = result.restarts.get((resource, "error"), 0)
        assert counted >= 2, (resource, result.restarts)
        assert counted == result.stats_restarts[resource], (resource, result)
    assert result.restarts.get(("nodes", "error"), 0) >= result.attempts_in_window
    # … but logged once: a warning when the first attempt fails, a line once it works.
    _assert_logged_once_per_state_change(apiserver_run, result.started, result.ended, 1)


def test_apiserver_down_at_start_is_still_live(apiserver_run: ApiserverRun) -> None:
    """Not ready, but alive: restarting the pod would not bring the apiserver back."""
    result = apiserver_run.down_at_start
    assert result.readyz_status == 500
    assert result.livez_status == 200, result.livez_text
