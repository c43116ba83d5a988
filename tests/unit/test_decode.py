"""Tests for decoding the kubelet's /metrics/resource text."""

# Fixtures are verbatim kubelet lines, which are longer than the line limit.
# ruff: noqa: E501

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metrics_server.models import (
    CUMULATIVE_CPU,
    MEMORY,
    START_TIME,
    TIMESTAMP,
    MetricsPoint,
    metrics_point,
)
from metrics_server.scraper.decode import DecodeError, decode

DEFAULT_TS = 1_700_000_000_123_000_000

# SPEC §3 sample (upstream test data).
SPEC_SAMPLE = b"""\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="coredns",namespace="kube-system",pod="coredns-558bd4d5db-4dpjz"} 4.710169 1633253812125
container_memory_working_set_bytes{container="coredns",namespace="kube-system",pod="coredns-558bd4d5db-4dpjz"} 1.253376e+07 1633253812125
container_start_time_seconds{container="coredns",namespace="kube-system",pod="coredns-558bd4d5db-4dpjz"} 1.633252712e+09 1633253812125
node_cpu_usage_seconds_total 357.35491 1633253809720
node_memory_working_set_bytes 1.616273408e+09 1633253809720
scrape_error 0
"""

# Shaped like a real kubelet's full output: every family, sorted, with HELP/TYPE.
KUBELET_BODY = b"""\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container="coredns",namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 0.968414 1633253812125
container_cpu_usage_seconds_total{container="etcd",namespace="kube-system",pod="etcd-kind-control-plane"} 12.102041 1633253812119
container_cpu_usage_seconds_total{container="sidecar",namespace="web",pod="shop-0"} 2 1633253812130
container_cpu_usage_seconds_total{container="shop",namespace="web",pod="shop-0"} 3.5 1633253812130
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container="coredns",namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 1.0256384e+07 1633253812125
container_memory_working_set_bytes{container="etcd",namespace="kube-system",pod="etcd-kind-control-plane"} 2.7422720e+07 1633253812119
container_memory_working_set_bytes{container="sidecar",namespace="web",pod="shop-0"} 4096 1633253812130
container_memory_working_set_bytes{container="shop",namespace="web",pod="shop-0"} 8192 1633253812130
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container="coredns",namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 1.6332527e+09 1633253812125
container_start_time_seconds{container="etcd",namespace="kube-system",pod="etcd-kind-control-plane"} 1.633252655e+09 1633253812119
container_start_time_seconds{container="shop",namespace="web",pod="shop-0"} 1.6332527125e+09 1633253812130
# HELP container_swap_usage_bytes [ALPHA] Current amount of the container swap usage in bytes
# TYPE container_swap_usage_bytes gauge
container_swap_usage_bytes{container="coredns",namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 0 1633253812125
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 357.35491 1633253809720
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.616273408e+09 1633253809720
# HELP node_swap_usage_bytes [ALPHA] Current swap usage of the node in bytes
# TYPE node_swap_usage_bytes gauge
node_swap_usage_bytes 0 1633253809720
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 1.011235 1633253812125
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="kube-system",pod="coredns-6d4b75cb6d-8vk2x"} 1.0571776e+07 1633253812125
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
"""

NODE_LINES = b"node_cpu_usage_seconds_total 10 1000\nnode_memory_working_set_bytes 2048 1000\n"


def test_spec_sample() -> None:
    batch = decode(SPEC_SAMPLE, DEFAULT_TS)
    assert batch.node == metrics_point(
        start_time=0,
        timestamp=1_633_253_809_720_000_000,
        cumulative_cpu=357_354_910_000,
        memory=1_616_273_408,
    )
    assert batch.pods == {
        ("kube-system", "coredns-558bd4d5db-4dpjz"): {
            "coredns": metrics_point(
                start_time=1_633_252_712_000_000_000,
                timestamp=1_633_253_812_125_000_000,
                cumulative_cpu=4_710_169_000,
                memory=12_533_760,
            )
        }
    }


def test_full_kubelet_output() -> None:
    batch = decode(KUBELET_BODY, DEFAULT_TS)
    assert batch.node is not None
    assert batch.node[MEMORY] == 1_616_273_408
    assert set(batch.pods) == {
        ("kube-system", "coredns-6d4b75cb6d-8vk2x"),
        ("kube-system", "etcd-kind-control-plane"),
        ("web", "shop-0"),
    }
    etcd = batch.pods["kube-system", "etcd-kind-control-plane"]["etcd"]
    assert etcd == metrics_point(
        start_time=1_633_252_655_000_000_000,
        timestamp=1_633_253_812_119_000_000,
        cumulative_cpu=12_102_041_000,
        memory=27_422_720,
    )
    shop = batch.pods["web", "shop-0"]
    assert set(shop) == {"sidecar", "shop"}
    assert shop["shop"][START_TIME] == 1_633_252_712_500_000_000
    assert shop["shop"][CUMULATIVE_CPU] == 3_500_000_000
    # No start time series for the sidecar: unknown, but the pod is still complete.
    assert shop["sidecar"][START_TIME] == 0
    assert shop["sidecar"][CUMULATIVE_CPU] == 2_000_000_000


def test_missing_timestamps_use_the_default() -> None:
    body = (
        b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} 1\n'
        b'container_memory_working_set_bytes{container="c",namespace="n",pod="p"} 2\n'
        b"node_cpu_usage_seconds_total 3\n"
        b"node_memory_working_set_bytes 4\n"
    )
    batch = decode(body, DEFAULT_TS)
    assert batch.node == (0, DEFAULT_TS, 3_000_000_000, 4)
    assert batch.pods == {("n", "p"): {"c": (0, DEFAULT_TS, 1_000_000_000, 2)}}


def test_container_timestamp_is_the_cpu_samples() -> None:
    body = NODE_LINES + (
        b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} 1 5000\n'
        b'container_memory_working_set_bytes{container="c",namespace="n",pod="p"} 2 6000\n'
    )
    assert decode(body, DEFAULT_TS).pods["n", "p"]["c"][TIMESTAMP] == 5_000_000_000


def test_escaped_label_values() -> None:
    labels = rb'{container="a\"b",namespace="ns\\x",pod="line\nbreak"}'
    body = NODE_LINES + (
        b"container_cpu_usage_seconds_total" + labels + b" 1 1000\n"
        b"container_memory_working_set_bytes" + labels + b" 2 1000\n"
    )
    batch = decode(body, DEFAULT_TS)
    assert list(batch.pods) == [("ns\\x", "line\nbreak")]
    assert list(batch.pods["ns\\x", "line\nbreak"]) == ['a"b']


def test_label_order_extra_labels_and_blanks_do_not_matter() -> None:
    body = NODE_LINES + (
        b'container_cpu_usage_seconds_total{pod="p",namespace="n",container="c"} 1 1000\n'
        b'container_memory_working_set_bytes { id="/x" , namespace = "n", pod="p",'
        b' container="c", } \t 2\t1000  \n'
        b'container_start_time_seconds{namespace="n",container="c",image="i:1",pod="p"} 7\n'
    )
    batch = decode(body, DEFAULT_TS)
    assert batch.pods == {
        ("n", "p"): {"c": (7_000_000_000, 1_000_000_000, 1_000_000_000, 2)}
    }


def test_crlf_line_endings() -> None:
    crlf = SPEC_SAMPLE.replace(b"\n", b"\r\n")
    assert decode(crlf, DEFAULT_TS) == decode(SPEC_SAMPLE, DEFAULT_TS)


def test_leading_blanks_are_ignored() -> None:
    indented = b"\n".join(b"  \t" + line for line in SPEC_SAMPLE.split(b"\n"))
    assert decode(indented, DEFAULT_TS) == decode(SPEC_SAMPLE, DEFAULT_TS)


def test_one_indented_line_in_canonical_output_still_counts() -> None:
    body = KUBELET_BODY.replace(
        b"\nnode_memory_working_set_bytes", b"\n \tnode_memory_working_set_bytes"
    )
    assert body != KUBELET_BODY
    assert decode(body, DEFAULT_TS) == decode(KUBELET_BODY, DEFAULT_TS)
    assert decode(body, DEFAULT_TS).node is not None


def test_a_pod_with_a_zero_memory_container_is_dropped_others_stay() -> None:
    body = NODE_LINES + (
        b'container_cpu_usage_seconds_total{container="a",namespace="n",pod="bad"} 1 1000\n'
        b'container_cpu_usage_seconds_total{container="b",namespace="n",pod="bad"} 1 1000\n'
        b'container_cpu_usage_seconds_total{container="a",namespace="n",pod="good"} 1 1000\n'
        b'container_memory_working_set_bytes{container="a",namespace="n",pod="bad"} 5 1000\n'
        b'container_memory_working_set_bytes{container="b",namespace="n",pod="bad"} 0 1000\n'
        b'container_memory_working_set_bytes{container="a",namespace="n",pod="good"} 5 1000\n'
    )
    assert set(decode(body, DEFAULT_TS).pods) == {("n", "good")}


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [
        (b"0", b"5"),
        (b"NaN", b"5"),
        (b"+Inf", b"5"),
        (b"-1", b"5"),
        (b"1", b"-Inf"),
        (b"1", b"1e999"),
        (b"1e-10", b"5"),  # rounds to 0 ns
        (None, b"5"),
        (b"1", None),
    ],
)
def test_incomplete_container_drops_its_pod(cpu: bytes | None, memory: bytes | None) -> None:
    body = NODE_LINES
    if cpu is not None:
        body += b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} '
        body += cpu + b" 1000\n"
    if memory is not None:
        body += b'container_memory_working_set_bytes{container="c",namespace="n",pod="p"} '
        body += memory + b" 1000\n"
    body += b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="q"} 1\n'
    body += b'container_memory_working_set_bytes{container="c",namespace="n",pod="q"} 1\n'
    assert set(decode(body, DEFAULT_TS).pods) == {("n", "q")}


def test_only_a_start_time_drops_the_pod() -> None:
    body = NODE_LINES + (
        b'container_start_time_seconds{container="c",namespace="n",pod="p"} 1.6e9 1000\n'
    )
    assert decode(body, DEFAULT_TS).pods == {}


@pytest.mark.parametrize(
    "node",
    [
        b"node_cpu_usage_seconds_total 0 1000\nnode_memory_working_set_bytes 5 1000\n",
        b"node_cpu_usage_seconds_total 1 1000\nnode_memory_working_set_bytes 0 1000\n",
        b"node_cpu_usage_seconds_total 1 0\nnode_memory_working_set_bytes 5 0\n",
        b"node_cpu_usage_seconds_total NaN 1000\nnode_memory_working_set_bytes 5 1000\n",
        b"node_memory_working_set_bytes 5 1000\n",
        b"node_cpu_usage_seconds_total 1 1000\n",
        b"",
    ],
)
def test_incomplete_node_is_none(node: bytes) -> None:
    body = node + (
        b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} 1\n'
        b'container_memory_working_set_bytes{container="c",namespace="n",pod="p"} 1\n'
    )
    batch = decode(body, DEFAULT_TS)
    assert batch.node is None
    assert set(batch.pods) == {("n", "p")}


def test_unknown_series_and_garbage_in_them_are_ignored() -> None:
    body = SPEC_SAMPLE + (
        b'pod_cpu_usage_seconds_total{namespace="n",pod="p" this is not parsed\n'
        b'container_cpu_usage_seconds_total_extra{container="x"} oops\n'
        b"node_cpu_usage_seconds_totalx 99\n"
        b"something_else \xff\xfe not utf-8\n"
        b"\n\n# a comment with \xff\n"
    )
    assert decode(body, DEFAULT_TS) == decode(SPEC_SAMPLE, DEFAULT_TS)


def test_empty_body() -> None:
    batch = decode(b"", DEFAULT_TS)
    assert batch.node is None
    assert batch.pods == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} abc 1',
            'line 3: bad value "abc" for container_cpu_usage_seconds_total',
        ),
        (
            b'container_cpu_usage_seconds_total{container="c",namespace="n",pod="p"} 1_0',
            'line 3: bad value "1_0"',
        ),
        (
            b'container_memory_working_set_bytes{container="c",namespace="n",pod="p} 1 1',
            "line 3: unterminated value of label pod",
        ),
        (
            b'container_memory_working_set_bytes{container="c",namespace="n",pod="p" 1 1',
            'line 3: expected "," or "}" after label pod',
        ),
        (
            b'container_start_time_seconds{container="c",namespace="n",pod="p"}',
            "line 3: missing value for container_start_time_seconds",
        ),
        (
            b'container_start_time_seconds{container="c",namespace="n",pod="p"} 1 12x',
            'line 3: bad timestamp "12x"',
        ),
        (
            b'container_start_time_seconds{container="c",namespace="n",pod="p"} 1 2 3',
            'line 3: unexpected text "3"',
        ),
        (
            b'container_cpu_usage_seconds_total{container="c",namespace="n"} 1 1',
            'line 3: container_cpu_usage_seconds_total is missing label "pod"',
        ),
        (
            b'container_cpu_usage_seconds_total{container="c",container="d"} 1 1',
            "line 3: duplicate label container",
        ),
        (b'node_cpu_usage_seconds_total {9x="a"} 1', "line 3: bad label name"),
        (b"node_memory_working_set_bytes 1 99999999999999999999", "line 3: bad timestamp"),
        (b"node_memory_working_set_bytes 0x10", 'line 3: bad value "0x10"'),
        (
            b'container_cpu_usage_seconds_total{container="\xff",namespace="n",pod="p"} 1',
            "line 3: invalid UTF-8 in container_cpu_usage_seconds_total",
        ),
    ],
)
def test_malformed_used_line_names_the_line(line: bytes, message: str) -> None:
    body = b"# HELP x y\nscrape_error 0\n" + line + b"\nnode_cpu_usage_seconds_total 1 1\n"
    with pytest.raises(DecodeError) as info:
        decode(body, DEFAULT_TS)
    assert message in str(info.value)


def test_crlf_errors_still_count_lines() -> None:
    body = SPEC_SAMPLE.replace(b"\n", b"\r\n") + b"node_memory_working_set_bytes x\r\n"
    with pytest.raises(DecodeError, match=r"^line 9: "):
        decode(body, DEFAULT_TS)


# --- properties ----------------------------------------------------------------------

_names = st.sampled_from(["a", "b", "web-1", "x.y_z", "ünï"])
_values = st.sampled_from(
    ["0", "1", "2.5", "1e3", "1.253376e+07", "4.710169", "NaN", "+Inf", "-2", "1E2", "abc"]
)
_timestamps = st.sampled_from(["", " 1633253812125", " 0", " -5", " 12x"])
_series = st.sampled_from(
    [
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        "container_start_time_seconds",
    ]
)


@st.composite
def _container_line(draw: st.DrawFn) -> str:
    labels = [
        f'container="{draw(_names)}"',
        f'namespace="{draw(_names)}"',
        f'pod="{draw(_names)}"',
    ]
    if draw(st.booleans()):
        labels = draw(st.permutations(labels))
    return f"{draw(_series)}{{{','.join(labels)}}} {draw(_values)}{draw(_timestamps)}"


_lines = st.one_of(
    _container_line(),
    st.sampled_from(
        [
            "node_cpu_usage_seconds_total 357.35491 1633253809720",
            "node_memory_working_set_bytes 1.616273408e+09 1633253809720",
            "node_cpu_usage_seconds_total 0",
            "# HELP container_cpu_usage_seconds_total help",
            'pod_cpu_usage_seconds_total{namespace="a",pod="b"} 1 2',
            "resource_scrape_error 0",
            "",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, max_size=30), st.booleans())
def test_canonical_fast_path_agrees_with_the_line_parser(lines: list[str], sort: bool) -> None:
    if sort:
        # Sorted bodies are what kubelets write, and what the fast path accepts.
        lines = sorted(lines)
    body = "\n".join(lines).encode()
    # A leading blank line forces the general line parser.
    forced = b" \n" + body
    try:
        expected = decode(forced, DEFAULT_TS)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode(body, DEFAULT_TS)
        return
    assert decode(body, DEFAULT_TS) == expected


@st.composite
def _kubelet_containers(draw: st.DrawFn) -> list[tuple[str, str, str, float, int, int]]:
    keys = draw(st.lists(st.tuples(_names, _names, _names), unique=True, min_size=1, max_size=8))
    return [
        (
            ns,
            pod,
            container,
            draw(st.floats(0, 1e6, allow_nan=False)),
            draw(st.integers(0, 2**40)),
            draw(st.integers(1, 2**40)),
        )
        for ns, pod, container in sorted(keys)
    ]


@settings(max_examples=100, deadline=None)
@given(_kubelet_containers())
def test_generated_kubelet_output_matches_a_reference_model(
    containers: list[tuple[str, str, str, float, int, int]],
) -> None:
    cpu_lines, mem_lines = [], []
    expected: dict[tuple[str, str], dict[str, MetricsPoint]] = {}
    dropped: set[tuple[str, str]] = set()
    for ns, pod, container, cpu_s, memory, ms in containers:
        labels = f'{{container="{container}",namespace="{ns}",pod="{pod}"}}'
        cpu_lines.append(f"container_cpu_usage_seconds_total{labels} {cpu_s!r} {ms}")
        mem_lines.append(f"container_memory_working_set_bytes{labels} {memory} {ms}")
        cpu_ns = round(cpu_s * 1e9)
        if cpu_ns == 0 or memory == 0:
            dropped.add((ns, pod))
        else:
            expected.setdefault((ns, pod), {})[container] = (
                0, ms * 1_000_000, cpu_ns, memory
            )
    for key in dropped:
        expected.pop(key, None)
    body = "\n".join(["# TYPE x counter", *cpu_lines, *mem_lines, ""]).encode()
    assert decode(body, DEFAULT_TS).pods == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(body, DEFAULT_TS)


_fragments = st.sampled_from(
    [
        b"container_cpu_usage_seconds_total",
        b"container_memory_working_set_bytes",
        b"container_start_time_seconds",
        b"node_cpu_usage_seconds_total",
        b"node_memory_working_set_bytes",
        b'{container="c",namespace="n",pod="p"}',
        b"{",
        b"}",
        b'"',
        b"\\",
        b",",
        b"=",
        b" ",
        b"\t",
        b"\n",
        b"\r\n",
        b"1",
        b"1e999",
        b"NaN",
        b"-",
        b"99999999999999999999",
        b"\xff",
        b"pod=",
    ]
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_fragments, max_size=40))
def test_near_miss_bodies_decode_or_raise_decode_error(fragments: list[bytes]) -> None:
    with contextlib.suppress(DecodeError):
        decode(b"".join(fragments), DEFAULT_TS)
