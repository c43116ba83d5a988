"""Decoding of the kubelet's `/metrics/resource` Prometheus text into a cleaned batch.

Owns the parsing of the five series metrics-server uses, unit conversion to integer
nanoseconds/bytes, and the SPEC §3 cleaning rules (incomplete nodes and pods are dropped).
"""

from __future__ import annotations

import math
import re
from itertools import repeat
from operator import mul
from typing import Final

from metrics_server.models import MetricsPoint, NodeMetricsBatch, PodKey

__all__ = ["DecodeError", "decode"]


class DecodeError(ValueError):
    """The body could not be parsed as the kubelet's resource metrics."""


_NODE_CPU: Final = "node_cpu_usage_seconds_total"
_NODE_MEMORY: Final = "node_memory_working_set_bytes"
_CONTAINER_CPU: Final = "container_cpu_usage_seconds_total"
_CONTAINER_MEMORY: Final = "container_memory_working_set_bytes"
_CONTAINER_START: Final = "container_start_time_seconds"

# Longest first, so a name that is a prefix of another can never shadow it.
_USED: Final = tuple(
    sorted(
        (_NODE_CPU, _NODE_MEMORY, _CONTAINER_CPU, _CONTAINER_MEMORY, _CONTAINER_START),
        key=len,
        reverse=True,
    )
)

_FAST_NUMBERS: Final = re.compile(r"[0-9][0-9.eE+-]*(?: [0-9][0-9.eE+-]*)*")
# Up to 18 digits always fits an int64 of milliseconds.
_FAST_TIMESTAMPS: Final = re.compile(r"-?[0-9]{1,18}(?: -?[0-9]{1,18})*")

# Go's ParseFloat also reads hexadecimal floats; kubelets never write them.
_GO_FLOAT: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity)|nan",
    re.IGNORECASE,
)
_LEADING_BLANKS: Final = re.compile(r"\n[ \t]")
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_BLANKS: Final = " \t\r"
_INF: Final = float("inf")
_INT64_MAX: Final = (1 << 63) - 1
_NS_PER_MS: Final = 1_000_000

# Indexes into a container record: [start_time_ns, timestamp_ns, cpu_ns, memory_bytes];
# cpu/memory are None until a valid sample is seen.
_START, _TS, _CPU, _MEM = 0, 1, 2, 3
_Record = list[int | None]


def decode(body: bytes, default_timestamp: int) -> NodeMetricsBatch:
    """Parse one `/metrics/resource` response.

    `default_timestamp` (ns since epoch) is used for samples without their own timestamp;
    a point's timestamp is its CPU sample's. NaN, infinite and negative values count as
    missing. Raises DecodeError naming the line when a line of a used series is malformed; lines of
    other series are skipped without being validated.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes are tolerated in series we ignore, so keep them as surrogates and
        # reject only the used lines that carry some.
        text = body.decode("utf-8", "surrogateescape")
        _reject_undecodable_used_lines(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    try:
        return _decode_sections(text, default_timestamp)
    except _NotCanonical:
        return _decode_lines(text, default_timestamp)


class _NotCanonical(Exception):
    """The body is not laid out the way kubelets write it; use the line-by-line parser."""


def _decode_sections(text: str, default_timestamp: int) -> NodeMetricsBatch:
    """Fast path for canonical kubelet output, doing nearly all work in C string methods.

    Kubelets write each series as one contiguous block of lines shaped exactly
    `name{container="…",namespace="…",pod="…"} value [timestamp]`. Per series this takes
    the block from its first to its last line, checks that every line in it belongs to the
    series, and converts all of it at once. Anything unexpected raises _NotCanonical, so
    the line parser (which also produces the error messages) decides instead.
    """
    text = "\n" + text
    spans: list[tuple[int, int]] = []
    node_blocks, node_cpu, node_times, _ = _section(text, _NODE_CPU, 1e9, default_timestamp, spans)
    mem_blocks, node_mem, _, _ = _section(text, _NODE_MEMORY, 1.0, None, spans)
    if any(node_blocks) or any(mem_blocks):
        raise _NotCanonical  # node series with labels
    # As in the line parser, the last of repeated node samples wins.
    node = _node_point(
        [
            0,
            node_times[-1] if node_times else None,
            node_cpu[-1] if node_cpu else None,
            node_mem[-1] if node_mem else None,
        ]
    )

    cpu_blocks, cpu_values, cpu_times, cpu_raw_times = _section(
        text, _CONTAINER_CPU, 1e9, default_timestamp, spans
    )
    if len(set(cpu_blocks)) != len(cpu_blocks):
        raise _NotCanonical  # duplicate series
    mem_blocks, mem_values, _, _ = _section(
        text, _CONTAINER_MEMORY, 1.0, None, spans, cpu_raw_times
    )
    start_blocks, start_values, _, _ = _section(
        text, _CONTAINER_START, 1e9, None, spans, cpu_raw_times
    )
    mem_values = _aligned(cpu_blocks, mem_blocks, mem_values)
    start_values = _aligned(cpu_blocks, start_blocks, start_values)

    # A used line indented by blanks would have escaped the blocks above. Lines inside
    # them all start with their series' name, so only the rest of the text needs a look.
    pos = 0
    for first, end in sorted(spans):
        if _LEADING_BLANKS.search(text, pos, first) is not None:
            raise _NotCanonical
        pos = end
    if _LEADING_BLANKS.search(text, pos) is not None:
        raise _NotCanonical

    containers, pod_keys = _split_blocks(cpu_blocks)
    # Values are never negative here (the number pattern has no leading sign).
    points = zip(start_values, cpu_times, cpu_values, mem_values, strict=False)
    pods: dict[PodKey, dict[str, MetricsPoint]] = {}
    for key, container, point in zip(pod_keys, containers, points, strict=True):
        by_container = pods.get(key)
        if by_container is None:
            pods[key] = {container: point}
        else:
            by_container[container] = point
    if 0 in cpu_values or 0 in mem_values:
        for key, cpu, mem in zip(pod_keys, cpu_values, mem_values, strict=True):
            if not cpu or not mem:
                pods.pop(key, None)
    return NodeMetricsBatch(node=node, pods=pods)


def _split_blocks(blocks: list[str]) -> tuple[list[str], list[PodKey]]:
    """Container names and (namespace, pod) keys of canonical label blocks, all at once.

    Joined by spaces (which tokens cannot contain) and split on quotes, n canonical blocks
    yield exactly this pattern, so checking the separators validates every block.
    """
    n = len(blocks)
    if n == 0:
        return [], []
    parts = " ".join(blocks).split('"')
    if (
        len(parts) != 6 * n + 1
        or parts[0] != "{container="
        or parts[-1] != "}"
        or parts[2::6].count(",namespace=") != n
        or parts[4::6].count(",pod=") != n
        or parts[6:-1:6].count("} {container=") != n - 1
    ):
        raise _NotCanonical
    return parts[1::6], list(zip(parts[3::6], parts[5::6], strict=True))


def _aligned(cpu_blocks: list[str], blocks: list[str], values: list[int]) -> list[int]:
    """`values` reordered to follow `cpu_blocks`, 0 for containers the series lacks."""
    # Kubelets sort every series the same way, so the orders nearly always agree.
    if blocks == cpu_blocks:
        return values
    by_block = dict(zip(blocks, values, strict=True))
    if len(by_block) != len(blocks):
        raise _NotCanonical  # duplicate series
    aligned = [by_block.pop(block, 0) for block in cpu_blocks]
    if by_block:
        raise _NotCanonical  # a container without a CPU series
    return aligned


def _section(
    text: str,
    name: str,
    factor: float,
    default_timestamp: int | None,
    spans: list[tuple[int, int]],
    valid_times: list[str] | None = None,
) -> tuple[list[str], list[int], list[int], list[str]]:
    """Label blocks, values × factor (rounded), ns and raw timestamps of a series' block.

    Timestamps are only validated, not converted, when `default_timestamp` is None, and
    not even validated when they equal `valid_times`. The block's [start, end) offsets
    are appended to `spans`.
    """
    marker = "\n" + name
    first = text.find(marker)
    if first < 0:
        return [], [], [], []
    end = text.find("\n", text.rfind(marker) + 1)
    if end < 0:
        end = len(text)
    spans.append((first, end))
    region = text[first:end]
    pieces = region.split(marker)
    spaced = " ".join(pieces)
    if "\n" in spaced or "\\" in spaced:
        raise _NotCanonical  # other lines mixed into the block, or escaped label values
    lines = len(pieces) - 1
    # Every line now starts with a space, so the first token is always empty.
    tokens = spaced.split(" ")
    if len(tokens) == 3 * lines + 1:
        blocks, raw_values, raw_times = tokens[1::3], tokens[2::3], tokens[3::3]
    elif len(tokens) == 2 * lines + 1:
        blocks, raw_values, raw_times = tokens[1::2], tokens[2::2], []
    else:
        raise _NotCanonical
    # float() and int() accept underscores, whitespace and non-ASCII digits; Go does not.
    if _FAST_NUMBERS.fullmatch(" ".join(raw_values)) is None:
        raise _NotCanonical
    if (
        raw_times
        and raw_times != valid_times
        and _FAST_TIMESTAMPS.fullmatch(" ".join(raw_times)) is None
    ):
        raise _NotCanonical
    try:
        floats = map(float, raw_values)
        if factor != 1.0:
            floats = map(mul, floats, repeat(factor))
        values = list(map(round, floats))
    except (ValueError, OverflowError):
        raise _NotCanonical from None  # malformed, or too large to be finite
    if default_timestamp is None:
        times = []
    elif raw_times:
        times = list(map(mul, map(int, raw_times), repeat(_NS_PER_MS)))
    else:
        times = [default_timestamp] * lines
    return blocks, values, times, raw_times


def _decode_lines(text: str, default_timestamp: int) -> NodeMetricsBatch:
    """General line-by-line parser: any label order, escapes, blanks; precise errors."""
    lines = text.split("\n")
    if text[:1] in (" ", "\t") or _LEADING_BLANKS.search(text) is not None:
        lines = [line.lstrip(" \t") for line in lines]
    records: dict[tuple[str, str, str], _Record] = {}
    node: _Record = [0, None, None, None]
    used = _USED
    for lineno, line in enumerate(lines, 1):
        if line.startswith(used):
            _decode_general_line(line, lineno, default_timestamp, node, records)
    return NodeMetricsBatch(node=_node_point(node), pods=_clean_pods(records))


def _decode_general_line(
    line: str,
    lineno: int,
    default_timestamp: int,
    node: _Record,
    records: dict[tuple[str, str, str], _Record],
) -> None:
    name = next(n for n in _USED if line.startswith(n))
    rest = line[len(name) :]
    if rest and rest[0] not in "{ \t\r":
        # A different metric that merely shares a prefix with a used one.
        return
    labels, pos = _parse_labels(rest, lineno, name)
    raw_value, raw_ts = _split_value_and_timestamp(rest, pos, lineno, name)
    value = _parse_value(raw_value, lineno, name)
    timestamp = default_timestamp if raw_ts is None else _parse_timestamp(raw_ts, lineno, name)

    if name in (_NODE_CPU, _NODE_MEMORY):
        rec = node
    else:
        key: list[str] = []
        for label in ("namespace", "pod", "container"):
            label_value = labels.get(label)
            if label_value is None:
                raise DecodeError(f'line {lineno}: {name} is missing label "{label}"')
            key.append(label_value)
        rec = _record_for(records, (key[0], key[1], key[2]))

    if name == _CONTAINER_START:
        rec[_START] = _scaled(value, 1e9) or 0
        return
    if name in (_NODE_CPU, _CONTAINER_CPU):
        # The CPU sample's time is the point's: rates divide CPU deltas by it.
        rec[_TS] = timestamp
        rec[_CPU] = _scaled(value, 1e9)
    else:
        rec[_MEM] = _scaled(value, 1.0)


def _scaled(value: float | None, factor: float) -> int | None:
    """`value * factor` rounded, or None when it is not a finite non-negative number."""
    if value is None:
        return None
    scaled = value * factor
    return round(scaled) if 0.0 <= scaled < _INF else None


def _parse_labels(rest: str, lineno: int, name: str) -> tuple[dict[str, str], int]:
    """Parse an optional `{...}` block at the start of `rest`; return labels and end offset."""
    pos = 0
    end = len(rest)
    while pos < end and rest[pos] in _BLANKS:
        pos += 1
    labels: dict[str, str] = {}
    if pos >= end or rest[pos] != "{":
        return labels, pos
    pos += 1
    while True:
        while pos < end and rest[pos] in _BLANKS:
            pos += 1
        if pos >= end:
            raise DecodeError(f"line {lineno}: unterminated label set for {name}")
        if rest[pos] == "}":
            return labels, pos + 1
        m = _LABEL_NAME.match(rest, pos)
        if m is None:
            raise DecodeError(
                f"line {lineno}: bad label name at column {len(name) + pos + 1} for {name}"
            )
        label = m.group()
        pos = m.end()
        while pos < end and rest[pos] in _BLANKS:
            pos += 1
        if pos >= end or rest[pos] != "=":
            raise DecodeError(f'line {lineno}: expected "=" after label {label} for {name}')
        pos += 1
        while pos < end and rest[pos] in _BLANKS:
            pos += 1
        if pos >= end or rest[pos] != '"':
            raise DecodeError(f"line {lineno}: expected '\"' to open label {label} for {name}")
        label_value, pos = _parse_label_value(rest, pos + 1, lineno, name, label)
        if label in labels:
            raise DecodeError(f"line {lineno}: duplicate label {label} for {name}")
        labels[label] = label_value
        while pos < end and rest[pos] in _BLANKS:
            pos += 1
        if pos < end and rest[pos] == ",":
            pos += 1
        elif pos >= end or rest[pos] != "}":
            raise DecodeError(f'line {lineno}: expected "," or "}}" after label {label} for {name}')


def _parse_label_value(rest: str, pos: int, lineno: int, name: str, label: str) -> tuple[str, int]:
    """Read a label value whose opening quote precedes `pos`; return it and the offset after."""
    close = rest.find('"', pos)
    backslash = rest.find("\\", pos)
    if close != -1 and (backslash == -1 or backslash > close):
        return rest[pos:close], close + 1
    parts: list[str] = []
    end = len(rest)
    while pos < end:
        ch = rest[pos]
        if ch == '"':
            return "".join(parts), pos + 1
        if ch == "\\" and pos + 1 < end:
            escaped = rest[pos + 1]
            # Prometheus defines only these three escapes; others stay literal.
            if escaped == "n":
                parts.append("\n")
            elif escaped in '"\\':
                parts.append(escaped)
            else:
                parts.append(ch + escaped)
            pos += 2
            continue
        parts.append(ch)
        pos += 1
    raise DecodeError(f"line {lineno}: unterminated value of label {label} for {name}")


def _split_value_and_timestamp(
    rest: str, pos: int, lineno: int, name: str
) -> tuple[str, str | None]:
    tail = rest[pos:].replace("\t", " ").replace("\r", " ")
    tokens = [token for token in tail.split(" ") if token]
    if not tokens:
        raise DecodeError(f"line {lineno}: missing value for {name}")
    if len(tokens) > 2:
        raise DecodeError(f'line {lineno}: unexpected text "{tokens[2]}" for {name}')
    return tokens[0], tokens[1] if len(tokens) == 2 else None


def _parse_value(raw: str, lineno: int, name: str) -> float | None:
    """A decimal float as Go's ParseFloat reads it; None for NaN and infinities."""
    # float() alone would also take underscores, blanks and non-ASCII digits.
    if _GO_FLOAT.fullmatch(raw) is None:
        raise _bad_value(lineno, raw, name)
    value = float(raw)
    return value if math.isfinite(value) else None


def _parse_timestamp(raw: str, lineno: int, name: str) -> int:
    digits = raw[1:] if raw[:1] in ("-", "+") else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise DecodeError(f'line {lineno}: bad timestamp "{raw}" for {name}')
    ms = int(raw)
    if not -_INT64_MAX - 1 <= ms <= _INT64_MAX:
        raise DecodeError(f'line {lineno}: timestamp "{raw}" out of range for {name}')
    return ms * _NS_PER_MS


def _bad_value(lineno: int, raw: str, name: str) -> DecodeError:
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    return DecodeError(f'line {lineno}: bad value "{shown}" for {name}')


def _record_for(records: dict[tuple[str, str, str], _Record], key: tuple[str, str, str]) -> _Record:
    rec = records.get(key)
    if rec is None:
        rec = records[key] = [0, None, None, None]
    return rec


def _node_point(rec: _Record) -> MetricsPoint | None:
    start, timestamp, cpu, memory = rec
    if not timestamp or not cpu or not memory or timestamp < 0:
        return None
    return (start or 0, timestamp, cpu, memory)


def _clean_pods(
    records: dict[tuple[str, str, str], _Record],
) -> dict[PodKey, dict[str, MetricsPoint]]:
    pods: dict[PodKey, dict[str, MetricsPoint]] = {}
    incomplete: set[PodKey] = set()
    for (namespace, pod, container), (start, timestamp, cpu, memory) in records.items():
        key = (namespace, pod)
        if not cpu or not memory or timestamp is None:
            incomplete.add(key)
            continue
        containers = pods.get(key)
        if containers is None:
            containers = pods[key] = {}
        containers[container] = (start or 0, timestamp, cpu, memory)
    for key in incomplete:
        pods.pop(key, None)
    return pods


def _reject_undecodable_used_lines(text: str) -> None:
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.lstrip(" \t")
        if stripped.startswith(_USED) and not line.isascii():
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:
                name = next(n for n in _USED if stripped.startswith(n))
                raise DecodeError(f"line {lineno}: invalid UTF-8 in {name}") from None
