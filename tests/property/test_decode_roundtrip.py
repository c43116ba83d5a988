"""The kubelet decoder on generated expositions: a random node and set of pods and containers
is rendered as Prometheus text in one of many legal layouts, decoded, and compared with what
the model says metrics-server must keep (SPEC §3); and damaged expositions raise nothing but
DecodeError.

Beyond tests/unit/test_decode.py (one layout of container lines; arbitrary short byte
strings): node series, start times, per-line timestamps or none, label values that need
escaping or are not ASCII, values written as Go, Python and C would (exponents, signs, 17
digits), NaN/Inf/negative values, and layouts kubelets and other exporters produce — HELP
and TYPE or not, families interleaved, labels in any order with extra labels, blanks around
tokens, trailing commas, CRLF, indentation, comments, blank lines and unused series.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from metrics_server.models import CUMULATIVE_CPU, START_TIME, MetricsPoint, NodeMetricsBatch, PodKey
from metrics_server.models import MEMORY as MEMORY_AT
from metrics_server.scraper.decode import DecodeError, decode

DEFAULT_TS = 1_700_000_000_000_000_000
CPU = "container_cpu_usage_seconds_total"
MEMORY = "container_memory_working_set_bytes"
START = "container_start_time_seconds"
NODE_CPU = "node_cpu_usage_seconds_total"
NODE_MEMORY = "node_memory_working_set_bytes"
FAMILIES = (CPU, MEMORY, START, NODE_CPU, NODE_MEMORY)


@dataclass(frozen=True, slots=True)
class Value:
    text: str
    """As written in the exposition."""
    number: float | None
    """What it means; None when metrics-server must treat it as missing."""


@dataclass(frozen=True, slots=True)
class Series:
    value: Value
    timestamp_ms: int | None


@dataclass(frozen=True, slots=True)
class Container:
    namespace: str
    pod: str
    name: str
    cpu: Series | None
    memory: Series | None
    start: Series | None


@dataclass(frozen=True, slots=True)
class Model:
    node_cpu: Series | None
    node_memory: Series | None
    containers: tuple[Container, ...]


# --- generation -------------------------------------------------------------------------

_FLOAT_FORMATS: tuple[Callable[[float], str], ...] = (
    repr,
    lambda v: f"{v:.17g}",
    lambda v: f"{v:.17e}",
    lambda v: f"{v:.17E}",
    lambda v: "+" + repr(v),
)
_INT_FORMATS: tuple[Callable[[int], str], ...] = (
    str,
    lambda m: f"{float(m):.17e}",
    lambda m: repr(float(m)),
    lambda m: f"{m}.0",
)
_MISSING = st.sampled_from(
    [Value("NaN", None), Value("+Inf", None), Value("-Inf", None), Value("-2.5", None)]
)


def _floats(low: float, high: float) -> st.SearchStrategy[Value]:
    # Mostly values that survive (hypothesis favours 0 and subnormals, which round to 0 ns
    # and drop the pod), sometimes the whole range. one_of leans to its first branch.
    usual = st.floats(min_value=1e-3, max_value=high, allow_nan=False, allow_infinity=False)
    edges = st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False)
    return st.tuples(st.one_of(usual, edges), st.sampled_from(_FLOAT_FORMATS)).map(
        lambda pair: Value(pair[1](pair[0]), pair[0])
    )


# Memory up to 2**53 is exact in a float, so every format reads back to the integer.
_MEMORY = st.tuples(
    st.one_of(st.integers(1, 2**53), st.integers(0, 2**53)),
    st.sampled_from(_INT_FORMATS),
).map(lambda pair: Value(pair[1](pair[0]), float(pair[0])))
_TIMESTAMP = st.one_of(st.integers(1, 2**41), st.none(), st.integers(0, 2**41))


@st.composite
def _series(draw: st.DrawFn, values: st.SearchStrategy[Value]) -> Series | None:
    """Mostly present and valid; 1 in 16 absent, 1 in 16 NaN, infinite or negative."""
    # A roll rather than one_of: hypothesis does not pick one_of branches evenly.
    roll = draw(st.integers(0, 15))
    if roll == 0:
        return None
    return Series(draw(_MISSING) if roll == 1 else draw(values), draw(_TIMESTAMP))


_NAME_ALPHABET = "abcxyz019-._ü名\"\\\n ,}{=#"
_NAMES = st.text(alphabet=_NAME_ALPHABET, min_size=1, max_size=6)
# Built once: building strategies inside the composite costs more than drawing from them.
_CPU_SERIES = _series(_floats(0.0, 1e7))
_START_SERIES = _series(_floats(0.0, 2e9))
_MEMORY_SERIES = _series(_MEMORY)
_NODE_CPU_SERIES = _series(_floats(0.0, 1e8))


@st.composite
def models(draw: st.DrawFn) -> Model:
    keys = draw(st.lists(st.tuples(_NAMES, _NAMES, _NAMES), unique=True, max_size=10))
    # Containers of the same pod share it: reuse pod keys half of the time.
    containers: list[Container] = []
    for drawn_namespace, drawn_pod, name in keys:
        namespace, pod = drawn_namespace, drawn_pod
        share = draw(st.booleans())
        if containers and share:
            other = draw(st.sampled_from(containers))
            namespace, pod = other.namespace, other.pod
        if any((c.namespace, c.pod, c.name) == (namespace, pod, name) for c in containers):
            continue
        containers.append(
            Container(
                namespace, pod, name,
                cpu=draw(_CPU_SERIES),
                memory=draw(_MEMORY_SERIES),
                start=draw(_START_SERIES),
            )
        )
    return Model(
        node_cpu=draw(_NODE_CPU_SERIES),
        node_memory=draw(_MEMORY_SERIES),
        containers=tuple(containers),
    )


# --- the oracle -------------------------------------------------------------------------


def _scaled(series: Series | None, factor: float) -> int | None:
    if series is None or series.value.number is None:
        return None
    return round(series.value.number * factor)


def _timestamp(series: Series | None) -> int | None:
    if series is None:
        return None
    if series.timestamp_ms is None:
        return DEFAULT_TS
    return series.timestamp_ms * 1_000_000


def expected(model: Model) -> NodeMetricsBatch:
    """SPEC §3: a point's time is its CPU sample's; zero or missing CPU or memory drops the
    node, or the whole pod of such a container; an unknown start time is 0."""
    node_cpu, node_memory = _scaled(model.node_cpu, 1e9), _scaled(model.node_memory, 1.0)
    node_ts = _timestamp(model.node_cpu)
    node = (
        (0, node_ts, node_cpu, node_memory)
        if node_ts and node_cpu and node_memory
        else None
    )
    pods: dict[PodKey, dict[str, MetricsPoint]] = {}
    incomplete: set[PodKey] = set()
    for c in model.containers:
        if c.cpu is None and c.memory is None and c.start is None:
            continue  # not in the exposition at all
        key = (c.namespace, c.pod)
        cpu, memory, ts = _scaled(c.cpu, 1e9), _scaled(c.memory, 1.0), _timestamp(c.cpu)
        if not cpu or not memory or ts is None:
            incomplete.add(key)
            continue
        start = _scaled(c.start, 1e9) or 0
        pods.setdefault(key, {})[c.name] = (start, ts, cpu, memory)
    for key in incomplete:
        pods.pop(key, None)
    return NodeMetricsBatch(node=node, pods=pods)


# --- rendering --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    shuffle: bool
    label_order: str
    """"kubelet" (container, namespace, pod) or "any"."""
    extra_labels: bool
    loose: bool
    """Blanks around =, commas and between value and timestamp."""
    trailing_comma: bool
    headers: bool
    noise: bool
    crlf: bool
    indent: bool


layouts = st.builds(
    Layout,
    shuffle=st.booleans(),
    label_order=st.sampled_from(["kubelet", "any"]),
    extra_labels=st.booleans(),
    loose=st.booleans(),
    trailing_comma=st.booleans(),
    headers=st.booleans(),
    noise=st.booleans(),
    crlf=st.booleans(),
    indent=st.booleans(),
)

_NOISE = [
    "# a comment that mentions container_cpu_usage_seconds_total 1 2",
    "",
    'pod_cpu_usage_seconds_total{namespace="n",pod="p"} 1.5 1700000000000',
    'container_swap_usage_bytes{container="c",namespace="n",pod="p"} 0',
    "resource_scrape_error 0",
    "scrape_error{not valid at all",
    "node_cpu_usage_seconds_totalx 99",
    "container_cpu_usage_seconds_total_extra{container=\"x\"} oops",
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(model: Model, layout: Layout, rng: random.Random) -> bytes:
    """The exposition; `rng` (from hypothesis) picks the blanks and orders within the layout."""

    def blank() -> str:
        return rng.choice([" ", "  ", "\t", " \t"]) if layout.loose else ""

    def sep() -> str:
        return rng.choice([" ", "  ", "\t"]) if layout.loose else " "

    def line(family: str, container: Container | None, series: Series) -> str:
        text = family
        if container is not None:
            labels = [
                ("container", container.name),
                ("namespace", container.namespace),
                ("pod", container.pod),
            ]
            if layout.extra_labels:
                labels.append(("image", "registry/x:1"))
                labels.insert(0, ("id", "/kubepods/burstable"))
            if layout.label_order == "any":
                rng.shuffle(labels)
            parts = [f'{blank()}{k}{blank()}={blank()}"{_escape(v)}"' for k, v in labels]
            body = ",".join(parts) + ("," if layout.trailing_comma else "")
            text += "{" + body + blank() + "}"
        text += sep() + series.value.text
        if series.timestamp_ms is not None:
            text += sep() + str(series.timestamp_ms)
        if layout.indent and rng.random() < 0.5:
            text = rng.choice([" ", "\t", "  "]) + text
        if layout.loose and rng.random() < 0.5:
            text += " "
        return text

    blocks: dict[str, list[str]] = {family: [] for family in FAMILIES}
    for c in model.containers:
        for family, series in ((CPU, c.cpu), (MEMORY, c.memory), (START, c.start)):
            if series is not None:
                blocks[family].append(line(family, c, series))
    if model.node_cpu is not None:
        blocks[NODE_CPU].append(line(NODE_CPU, None, model.node_cpu))
    if model.node_memory is not None:
        blocks[NODE_MEMORY].append(line(NODE_MEMORY, None, model.node_memory))

    lines: list[str] = []
    for family in FAMILIES:
        if layout.headers:
            lines += [f"# HELP {family} [STABLE] help text", f"# TYPE {family} gauge"]
        lines += sorted(blocks[family])
    if layout.noise:
        for noise in rng.choices(_NOISE, k=rng.randrange(7)):
            lines.insert(rng.randrange(len(lines) + 1), noise)
    if layout.shuffle:
        rng.shuffle(lines)
    newline = "\r\n" if layout.crlf else "\n"
    return (newline.join(lines) + newline).encode()


@settings(max_examples=200, deadline=None)
@given(models(), layouts, st.randoms(use_true_random=False))
def test_generated_expositions_decode_to_the_model(
    model: Model, layout: Layout, rng: random.Random
) -> None:
    body = render(model, layout, rng)
    assert decode(body, DEFAULT_TS) == expected(model)


# --- damage -----------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    layout = draw(layouts)
    body = bytearray(render(draw(models()), layout, draw(st.randoms(use_true_random=False))))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["cut", "flip", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, len(body)))
        if kind == "cut":
            del body[at:]
        elif kind == "flip" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 16))]
        elif kind == "repeat":
            body[at:at] = body[max(0, at - 64) : at]
    return bytes(body)


@settings(max_examples=200, deadline=None)
@given(damaged())
def test_damaged_expositions_raise_only_decode_error(body: bytes) -> None:
    with contextlib.suppress(DecodeError):
        batch = decode(body, DEFAULT_TS)
        # Whatever decodes is well formed.
        for point in ([batch.node] if batch.node else []) + [
            p for containers in batch.pods.values() for p in containers.values()
        ]:
            assert point[CUMULATIVE_CPU] > 0 and point[MEMORY_AT] > 0 and point[START_TIME] >= 0
