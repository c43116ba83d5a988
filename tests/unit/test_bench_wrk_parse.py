"""The API benchmark reads wrk's summary correctly (units, errors) and fails loudly otherwise."""

from __future__ import annotations

import pytest

from tests.bench.api_wrk import parse_wrk, wrk_script

WRK_OUTPUT = """Running 30s test @ https://127.0.0.1:4443
  1 threads and 6 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.80ms    4.11ms  81.20ms   91.02%
    Req/Sec   212.10     20.33   260.00     70.00%
  Latency Distribution
     50%  850.00us
     75%    8.90ms
     90%    9.70ms
     99%    1.04s
  6361 requests in 30.01s, 9.87MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    211.96
Transfer/sec:    336.78KB
"""


def test_units_rates_and_errors() -> None:
    got = parse_wrk(WRK_OUTPUT)
    assert got == {
        "p50_ms": 0.85, "p75_ms": 8.9, "p90_ms": 9.7, "p99_ms": 1040.0,
        "req_per_s": 211.96, "errors": 7,
    }


def test_output_without_a_latency_distribution_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        parse_wrk("Requests/sec: 10\n")


def test_script_rotates_paths_and_thinks() -> None:
    script = wrk_script(["/a?x=1", "/b"], "tok", 20)
    assert '"/a?x=1",\n  "/b"' in script
    assert 'wrk.headers["Authorization"] = "Bearer tok"' in script
    assert "math.log(1 - math.random()) * 20" in script  # exponential, mean 20 ms
