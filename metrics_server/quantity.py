"""Kubernetes and Go text forms of the numbers the API serves: canonical quantities,
Go durations and metav1.Time timestamps, matching upstream byte for byte.
"""

from __future__ import annotations

import datetime
from typing import Final

__all__ = [
    "format_cpu",
    "format_go_duration",
    "format_memory",
    "format_timestamp",
    "parse_go_duration",
]

# Decimal SI suffixes by power-of-ten exponent (apimachinery's suffixer).
_DECIMAL_SUFFIXES: Final = {
    -9: "n",
    -6: "u",
    -3: "m",
    0: "",
    3: "k",
    6: "M",
    9: "G",
    12: "T",
    15: "P",
    18: "E",
}
_BINARY_SUFFIXES: Final = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


def format_cpu(nanocores: int) -> str:
    """CPU as `resource.NewScaledQuantity(nanocores, resource.Nano)` serializes it.

    E.g. 311155148 -> "311155148n", 500000000 -> "500m", 10**9 -> "1", 0 -> "0".
    """
    return _format_decimal(nanocores, -9)


_INT64_MIN = -(1 << 63)


def format_memory(bytes_: int) -> str:
    """Memory as `resource.NewQuantity(bytes_, resource.BinarySI)` serializes it.

    Magnitudes of 1024 and more use the largest exact binary suffix ("2881016Ki", "1Mi",
    "1536" when not a multiple of 1024); smaller ones fall back to decimal SI, so 1000
    becomes "1k", as in Kubernetes.
    """
    if bytes_ == 0:
        return "0"
    if -1024 < bytes_ < 1024:
        return _format_decimal(bytes_, 0)
    if bytes_ == _INT64_MIN:
        # Go negates the value to strip 1024 factors; MinInt64 stays negative, so none go.
        return str(bytes_)
    mantissa = abs(bytes_)
    power = 0
    while mantissa % 1024 == 0 and power < len(_BINARY_SUFFIXES) - 1:
        mantissa //= 1024
        power += 1
    sign = "-" if bytes_ < 0 else ""
    return f"{sign}{mantissa}{_BINARY_SUFFIXES[power]}"


def _format_decimal(value: int, exponent: int) -> str:
    """Canonical DecimalSI text of value × 10**exponent."""
    if value == 0:
        return "0"
    mantissa = abs(value)
    while mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    # Move down to a multiple of three, where the suffixes are.
    shift = exponent % 3
    mantissa *= 10**shift
    exponent -= shift
    # Beyond the largest suffix the mantissa just grows (int64 values never get there).
    if exponent > 18:
        mantissa *= 10 ** (exponent - 18)
        exponent = 18
    sign = "-" if value < 0 else ""
    return f"{sign}{mantissa}{_DECIMAL_SUFFIXES[exponent]}"


_NANOSECOND: Final = 1
_MICROSECOND: Final = 1_000
_MILLISECOND: Final = 1_000_000
_SECOND: Final = 1_000_000_000
_MINUTE: Final = 60 * _SECOND
_HOUR: Final = 60 * _MINUTE
_UNITS: Final = {
    "ns": _NANOSECOND,
    "us": _MICROSECOND,
    "µs": _MICROSECOND,  # U+00B5 micro sign
    "μs": _MICROSECOND,  # U+03BC Greek small letter mu
    "ms": _MILLISECOND,
    "s": _SECOND,
    "m": _MINUTE,
    "h": _HOUR,
}
_MAX_DURATION: Final = (1 << 63) - 1


def format_go_duration(ns: int) -> str:
    """Go's `time.Duration(ns).String()`: "0s", "1.5s", "1m0s", "1h2m3.5s", "500ms", "2ns"."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < _SECOND:
        # Sub-second values use the largest unit that keeps a non-zero integer part.
        if u < _MICROSECOND:
            return f"{sign}{u}ns"
        if u < _MILLISECOND:
            return f"{sign}{_with_fraction(u, 3)}µs"
        return f"{sign}{_with_fraction(u, 6)}ms"
    seconds = _with_fraction(u % _MINUTE, 9)
    minutes_total = u // _MINUTE
    if minutes_total == 0:
        return f"{sign}{seconds}s"
    hours, minutes = divmod(minutes_total, 60)
    if hours == 0:
        return f"{sign}{minutes}m{seconds}s"
    # Go stops at hours because days vary in length.
    return f"{sign}{hours}h{minutes}m{seconds}s"


def _with_fraction(value: int, digits: int) -> str:
    """value / 10**digits in decimal, without trailing zeros in the fraction."""
    whole, fraction = divmod(value, 10**digits)
    if fraction == 0:
        return str(whole)
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")


def parse_go_duration(s: str) -> int:
    """Nanoseconds of a Go duration string, accepting exactly what `time.ParseDuration` does.

    Raises ValueError, e.g. `invalid duration "1x": unknown unit "x"`.
    """
    rest = s
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise _invalid(s, "no number after the sign" if s else "empty")
    total = 0
    while rest:
        if not (rest[0] == "." or "0" <= rest[0] <= "9"):
            raise _invalid(s, f"expected a number at {_quote(rest)}")
        whole, rest, consumed_whole = _leading_int(rest, s)
        fraction, scale, consumed_fraction = 0, 1.0, False
        if rest[:1] == ".":
            fraction, scale, rest, consumed_fraction = _leading_fraction(rest[1:])
        if not consumed_whole and not consumed_fraction:
            raise _invalid(s, "a number needs at least one digit")
        end = 0
        while end < len(rest) and not (rest[end] == "." or "0" <= rest[end] <= "9"):
            end += 1
        if end == 0:
            raise _invalid(s, "missing unit")
        unit_name, rest = rest[:end], rest[end:]
        unit = _UNITS.get(unit_name)
        if unit is None:
            raise _invalid(s, f"unknown unit {_quote(unit_name)}")
        if whole > (1 << 63) // unit:
            raise _invalid(s, "out of range")
        value = whole * unit
        if fraction > 0:
            # Go computes fractions in float64 too; truncating the same way keeps every
            # result identical (and exact to the nanosecond for up to hours).
            value += int(float(fraction) * (float(unit) / scale))
            if value > 1 << 63:
                raise _invalid(s, "out of range")
        total += value
        if total > 1 << 63:
            raise _invalid(s, "out of range")
    if negative:
        return -total
    if total > _MAX_DURATION:
        raise _invalid(s, "out of range")
    return total


def _leading_int(rest: str, original: str) -> tuple[int, str, bool]:
    end = 0
    value = 0
    while end < len(rest) and "0" <= rest[end] <= "9":
        value = value * 10 + ord(rest[end]) - 48
        if value > 1 << 63:
            raise _invalid(original, "out of range")
        end += 1
    return value, rest[end:], end > 0


def _leading_fraction(rest: str) -> tuple[int, float, str, bool]:
    """Digits after the point as (value, 10**kept digits, rest, any digits consumed)."""
    end = 0
    value = 0
    scale = 1.0
    overflow = False
    while end < len(rest) and "0" <= rest[end] <= "9":
        if not overflow:
            candidate = value * 10 + ord(rest[end]) - 48
            # Like Go, digits beyond int64 precision are read but ignored.
            if value > _MAX_DURATION // 10 or candidate > 1 << 63:
                overflow = True
            else:
                value = candidate
                scale *= 10
        end += 1
    return value, scale, rest[end:], end > 0


def _invalid(s: str, problem: str) -> ValueError:
    return ValueError(f"invalid duration {_quote(s)}: {problem}")


def _quote(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def format_timestamp(ns: int) -> str:
    """RFC 3339 UTC time with whole seconds, as metav1.Time marshals: "2019-05-26T10:54:52Z".

    Sub-second parts are truncated toward the past. Raises ValueError outside years 1-9999.
    """
    try:
        moment = _EPOCH + datetime.timedelta(seconds=ns // _SECOND)
    except OverflowError as exc:
        raise ValueError(f"timestamp {ns} ns is outside years 1-9999") from exc
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )
