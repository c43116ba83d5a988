"""Tests for Kubernetes quantity, Go duration and timestamp formatting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics_server.quantity import (
    format_cpu,
    format_go_duration,
    format_memory,
    format_timestamp,
    parse_go_duration,
)

INT64 = st.integers(-(2**63), 2**63 - 1)


@pytest.mark.parametrize(
    ("nanocores", "text"),
    [
        (0, "0"),
        (1, "1n"),
        (311_155_148, "311155148n"),
        (1_000, "1u"),
        (1_500, "1500n"),
        (250_000, "250u"),
        (1_000_000, "1m"),
        (500_000_000, "500m"),
        (1_500_000_000, "1500m"),
        (1_000_000_000, "1"),
        (100_000_000_000, "100"),
        (1_000_000_000_000, "1k"),
        (2_500_000_000_000, "2500"),
        (12_000_000_000_000, "12k"),
        (10**18, "1G"),
        (2**63 - 1, "9223372036854775807n"),
        (-500_000_000, "-500m"),
    ],
)
def test_format_cpu(nanocores: int, text: str) -> None:
    assert format_cpu(nanocores) == text


@pytest.mark.parametrize(
    ("bytes_", "text"),
    [
        (0, "0"),
        (1, "1"),
        (100, "100"),
        (999, "999"),
        (1_000, "1k"),  # below 1024 BinarySI falls back to DecimalSI
        (1_020, "1020"),
        (1_023, "1023"),
        (1_024, "1Ki"),
        (1_025, "1025"),
        (1_536, "1536"),
        (2_000, "2000"),
        (2_881_016 * 1024, "2881016Ki"),
        (1_024_000, "1000Ki"),
        (2**20, "1Mi"),
        (3 * 2**20, "3Mi"),
        (2**30, "1Gi"),
        (1_000_000_000, "1000000000"),
        (2**60, "1Ei"),
        (2**63 - 1, "9223372036854775807"),
        (-1_024, "-1Ki"),
        (-1_000, "-1k"),
    ],
)
def test_format_memory(bytes_: int, text: str) -> None:
    assert format_memory(bytes_) == text


_DECIMAL_EXPONENTS = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12}
_DECIMAL_EXPONENTS |= {"P": 15, "E": 18}
_BINARY_POWERS = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}


def _parse_cpu_nanocores(text: str) -> int:
    m = re.fullmatch(r"(-?)([0-9]+)([numkMGTPE]?)", text)
    assert m is not None, text
    sign, digits, suffix = m.groups()
    exponent = _DECIMAL_EXPONENTS[suffix] + 9
    assert exponent >= 0
    return (-1 if sign else 1) * int(digits) * 10**exponent


def _parse_memory_bytes(text: str) -> int:
    m = re.fullmatch(r"(-?)([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", text)
    assert m is not None, text
    sign, digits, suffix = m.groups()
    if suffix in _BINARY_POWERS:
        scale = 1024 ** _BINARY_POWERS[suffix]
    else:
        scale = 10 ** _DECIMAL_EXPONENTS[suffix or ""]
    return (-1 if sign else 1) * int(digits) * scale


@given(INT64)
def test_format_cpu_round_trips_and_is_canonical(nanocores: int) -> None:
    text = format_cpu(nanocores)
    assert _parse_cpu_nanocores(text) == nanocores
    m = re.fullmatch(r"-?([0-9]+)([numkMGTPE]?)", text)
    assert m is not None
    digits, suffix = m.groups()
    # Canonical: no leading zeros and, unless the smallest suffix is in use, the mantissa
    # could not move to the next larger suffix.
    assert digits == "0" or not digits.startswith("0")
    if suffix not in ("n", "E") and nanocores != 0:
        assert not digits.endswith("000")


@given(INT64)
def test_format_memory_round_trips_and_prefers_binary_suffixes(bytes_: int) -> None:
    text = format_memory(bytes_)
    assert _parse_memory_bytes(text) == bytes_
    if bytes_ == -(2**63):
        assert text == str(bytes_)  # Go cannot negate MinInt64, so it strips no factor
    elif abs(bytes_) >= 1024:
        m = re.fullmatch(r"-?([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei)?", text)
        assert m is not None
        digits, suffix = m.groups()
        if suffix != "Ei":
            assert int(digits) % 1024 != 0


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (2, "2ns"),
        (999, "999ns"),
        (1_000, "1µs"),
        (1_500, "1.5µs"),
        (1_001, "1.001µs"),
        (500_000_000, "500ms"),
        (1_234_567, "1.234567ms"),
        (1_000_000_000, "1s"),
        (1_500_000_000, "1.5s"),
        (15_692_000_000, "15.692s"),
        (1_000_000_001, "1.000000001s"),
        (60_000_000_000, "1m0s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (100 * 3_600_000_000_000, "100h0m0s"),
        (-1_500_000_000, "-1.5s"),
        (-2, "-2ns"),
        (2**63 - 1, "2562047h47m16.854775807s"),
        (-(2**63), "-2562047h47m16.854775808s"),
    ],
)
def test_format_go_duration(ns: int, text: str) -> None:
    assert format_go_duration(ns) == text


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("-0", 0),
        ("+0", 0),
        ("0s", 0),
        ("15s", 15_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("-1.5h", -5_400_000_000_000),
        ("+5s", 5_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
        ("1h2m3.5s", 3_723_500_000_000),
        ("10ms", 10_000_000),
        ("3ns", 3),
        ("7us", 7_000),
        ("7µs", 7_000),
        ("7μs", 7_000),
        ("1s1s", 2_000_000_000),
        ("1m1h", 3_660_000_000_000),
        ("0.1234567891s", 123_456_789),  # digits below 1ns truncate
        ("1.0000000000000000000001s", 1_000_000_000),
        ("2562047h47m16.854775807s", 2**63 - 1),
        ("-2562047h47m16.854775808s", -(2**63)),
        ("9223372036854775807ns", 2**63 - 1),
    ],
)
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'invalid duration "": empty'),
        ("-", 'invalid duration "-"'),
        ("1", 'invalid duration "1": missing unit'),
        ("1x", 'invalid duration "1x": unknown unit "x"'),
        ("1S", 'unknown unit "S"'),
        ("1 s", 'unknown unit " s"'),
        ("s", 'invalid duration "s"'),
        (".s", 'invalid duration ".s"'),
        ("1..2s", "missing unit"),
        ("1s2", "missing unit"),
        ("--1s", 'invalid duration "--1s"'),
        (" 1s", 'invalid duration " 1s"'),
        ("2562047h47m16.854775808s", "out of range"),
        ("9223372036854775808ns", "out of range"),
        ("99999999999999999999s", "out of range"),
        ("١s", 'invalid duration "١s"'),
    ],
)
def test_parse_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_go_duration(text)


@given(INT64)
def test_go_duration_round_trips(ns: int) -> None:
    assert parse_go_duration(format_go_duration(ns)) == ns


@given(st.text(max_size=30))
def test_parse_go_duration_only_raises_value_error(text: str) -> None:
    try:
        result = parse_go_duration(text)
    except ValueError:
        return
    assert -(2**63) <= result <= 2**63 - 1


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_558_868_092_000_000_000, "2019-05-26T10:54:52Z"),
        (1_558_868_092_999_999_999, "2019-05-26T10:54:52Z"),
        (-1, "1969-12-31T23:59:59Z"),
        (951_782_400 * 10**9, "2000-02-29T00:00:00Z"),
        (-(2**63), "1677-09-21T00:12:43Z"),
        (2**63 - 1, "2262-04-11T23:47:16Z"),
    ],
)
def test_format_timestamp(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text


def test_format_timestamp_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside years"):
        format_timestamp(10**30)
