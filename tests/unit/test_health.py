"""Health endpoint format, as k8s.io/apiserver's healthz handler answers."""

from __future__ import annotations

from metrics_server.health import HealthCheck, HealthEndpoint


def endpoint(fail: str | None) -> HealthEndpoint:
    return HealthEndpoint(
        "readyz",
        [HealthCheck("ping", lambda: None), HealthCheck("metric-storage-ready", lambda: fail)],
    )


def test_ok_is_terse_and_verbose_lists_checks() -> None:
    assert endpoint(None).evaluate(verbose=False) == (200, "ok")
    status, body = endpoint(None).evaluate(verbose=True)
    assert status == 200
    assert "[+]ping ok" in body and "[+]metric-storage-ready ok" in body
    assert body.endswith("readyz check passed\n")


def test_failure_withholds_reason_unless_verbose() -> None:
    status, body = endpoint("no metrics to serve").evaluate(verbose=False)
    assert status == 500
    assert "[-]metric-storage-ready failed: reason withheld" in body
    status, body = endpoint("no metrics to serve").evaluate(verbose=True)
    assert "[-]metric-storage-ready failed: no metrics to serve" in body
    assert body.endswith("readyz check failed\n")


def test_exclude_and_single_check() -> None:
    status, body = endpoint("broken").evaluate(verbose=True, exclude=["metric-storage-ready"])
    assert status == 200
    assert "excluded" in body
    assert endpoint("broken").evaluate(verbose=False, only="ping") == (200, "ok")
    status, body = endpoint("broken").evaluate(verbose=False, only="metric-storage-ready")
    assert status == 500 and "broken" in body
    assert endpoint(None).evaluate(verbose=False, only="nope")[0] == 404


def test_raising_check_is_a_failure_not_a_crash() -> None:
    def boom() -> str | None:
        raise RuntimeError("bad")

    status, body = HealthEndpoint("livez", [HealthCheck("x", boom)]).evaluate(verbose=True)
    assert status == 500 and "RuntimeError" in body
