"""Quantity and duration text against independent transcriptions of Go's algorithms.

`format_cpu` must equal `resource.NewScaledQuantity(n, resource.Nano).String()` and
`format_memory` must equal `resource.NewQuantity(n, resource.BinarySI).String()` for every
int64; `format_go_duration` must equal `time.Duration(n).String()`. The references below
follow apimachinery's `Quantity.CanonicalizeBytes` (int64Amount, with the inf.Dec fallback on
overflow) and Go's `Duration.format` step by step, with Go's int64/uint64 wrap-around,
rather than the arithmetic shortcuts metrics_server.quantity takes.
(tests/unit/test_quantity.py checks round trips and hand-picked cases.)
"""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from metrics_server.quantity import format_cpu, format_go_duration, format_memory

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT64 = st.integers(INT64_MIN, INT64_MAX)
# Values that exercise every suffix: multiples of powers of 10 and of 1024, and neighbours.
ROUND = st.builds(
    lambda m, e, d, sign: max(INT64_MIN, min(INT64_MAX, sign * (m * 10**e + d))),
    st.integers(1, 999), st.integers(0, 16), st.integers(-1, 1), st.sampled_from((1, -1)),
)
BINARY = st.builds(
    lambda m, p, d, sign: max(INT64_MIN, min(INT64_MAX, sign * (m * 1024**p + d))),
    st.integers(1, 2047), st.integers(0, 6), st.integers(-1, 1), st.sampled_from((1, -1)),
)

_DECIMAL_SUFFIX = {-9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T",
                   15: "P", 18: "E"}
_BINARY_SUFFIX = {0: "", 10: "Ki", 20: "Mi", 30: "Gi", 40: "Ti", 50: "Pi", 60: "Ei"}


def _wrap(v: int) -> int:
    """Go int64 arithmetic: wrap around on overflow."""
    return (v + (1 << 63)) % (1 << 64) - (1 << 63)


def _go_rem(a: int, b: int) -> int:
    """Go's %: the sign follows the dividend."""
    r = abs(a) % abs(b)
    return -r if a < 0 else r


def _remove_int64_factors(value: int, base: int) -> tuple[int, int]:
    times, result = 0, value
    negative = result < 0
    if negative:
        result = _wrap(-result)  # -MinInt64 stays negative in Go
    while result >= base and result % base == 0:
        times += 1
        result //= base
    if negative:
        result = _wrap(-result)
    return result, times


def _multiply(a: int, factor: int) -> tuple[int, bool]:
    """int64MultiplyScale10/100: the product, and whether it fit."""
    c = a * factor
    return c, INT64_MIN <= c <= INT64_MAX


def _inf_dec_canonical(value: int, scale: int) -> tuple[str, int]:
    """infDecAmount.AsCanonicalBytes: big integers, same rules."""
    amount, exponent = value, scale
    while amount != 0 and amount % 10 == 0:  # removeBigIntFactors (Euclidean DivMod)
        amount //= 10
        exponent += 1
    while _go_rem(exponent, 3) != 0:
        amount *= 10
        exponent -= 1
    return str(amount), exponent


def _int64_canonical(value: int, scale: int) -> tuple[str, int]:
    """int64Amount.AsCanonicalBytes."""
    amount, times = _remove_int64_factors(value, 10)
    exponent = scale + times
    remainder = _go_rem(exponent, 3)
    if remainder in (1, -2):
        amount, ok = _multiply(amount, 10)
        if not ok:
            return _inf_dec_canonical(value, scale)
        exponent -= 1
    elif remainder in (2, -1):
        amount, ok = _multiply(amount, 100)
        if not ok:
            return _inf_dec_canonical(value, scale)
        exponent -= 2
    return str(amount), exponent


def reference_quantity(value: int, scale: int, binary: bool) -> str:
    """`Quantity{i: int64Amount{value, scale}, Format: DecimalSI|BinarySI}.String()`."""
    if value == 0:
        return "0"
    if binary:
        actual = Fraction(value) * Fraction(10) ** scale
        if -1024 < actual < 1024 or actual.denominator != 1:
            binary = False  # small, or inexact at scale 0: shown as DecimalSI
    if not binary:
        number, exponent = _int64_canonical(value, scale)
        return number + _DECIMAL_SUFFIX[exponent]
    whole = int(Fraction(value) * Fraction(10) ** scale)
    number_int, power = _remove_int64_factors(whole, 1024)
    return str(number_int) + _BINARY_SUFFIX[power * 10]


def _fmt_frac(v: int, prec: int) -> tuple[str, int]:
    out, printing = "", False
    for _ in range(prec):
        digit = v % 10
        printing = printing or digit != 0
        if printing:
            out = str(digit) + out
        v //= 10
    return ("." + out if printing else ""), v


def reference_duration(d: int) -> str:
    """Go's `time.Duration(d).String()` (time/time.go, Duration.format)."""
    u = d % (1 << 64)  # uint64(d)
    negative = d < 0
    if negative:
        u = (-u) % (1 << 64)
    second = 1_000_000_000
    if u < second:
        if u == 0:
            return "0s"
        if u < 1_000:
            prec, unit = 0, "ns"
        elif u < 1_000_000:
            prec, unit = 3, "µs"
        else:
            prec, unit = 6, "ms"
        frac, u = _fmt_frac(u, prec)
        text = f"{u}{frac}{unit}"
    else:
        frac, u = _fmt_frac(u, 9)
        text = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            text = f"{u % 60}m{text}"
            u //= 60
            if u > 0:
                text = f"{u}h{text}"
    return "-" + text if negative else text


@settings(max_examples=400, deadline=None)
@given(st.one_of(INT64, ROUND))
@example(INT64_MAX)
@example(INT64_MIN)
@example(1)
@example(-1)
def test_cpu_matches_apimachinery(nanocores: int) -> None:
    assert format_cpu(nanocores) == reference_quantity(nanocores, -9, binary=False)


@settings(max_examples=400, deadline=None)
@given(st.one_of(INT64, BINARY, ROUND))
@example(INT64_MAX)
@example(INT64_MIN)
@example(1023)
@example(-1024)
@example(1 << 62)
def test_memory_matches_apimachinery(bytes_: int) -> None:
    assert format_memory(bytes_) == reference_quantity(bytes_, 0, binary=True)


def test_memory_of_min_int64_matches_apimachinery() -> None:
    assert format_memory(INT64_MIN) == reference_quantity(INT64_MIN, 0, binary=True)


@settings(max_examples=400, deadline=None)
@given(st.one_of(INT64, ROUND))
@example(INT64_MIN)
@example(INT64_MAX)
@example(999)
@example(1_000)
@example(59_999_999_999)
def test_duration_matches_go(ns: int) -> None:
    assert format_go_duration(ns) == reference_duration(ns)


def test_references_agree_with_known_go_output() -> None:
    """The references themselves, against strings Go prints."""
    assert reference_quantity(311_155_148, -9, binary=False) == "311155148n"
    assert reference_quantity(500_000_000, -9, binary=False) == "500m"
    assert reference_quantity(10**9, -9, binary=False) == "1"
    assert reference_quantity(2_881_016 * 1024, 0, binary=True) == "2881016Ki"
    assert reference_quantity(1_000, 0, binary=True) == "1k"
    assert reference_quantity(1_536, 0, binary=True) == "1536"
    assert reference_duration(15_692_000_000) == "15.692s"
    assert reference_duration(90_000_000_000) == "1m30s"
    assert reference_duration(-1_500) == "-1.5µs"
    assert reference_duration(INT64_MIN) == "-2562047h47m16.854775808s"
