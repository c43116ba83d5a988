"""Content negotiation: which media type and which view (object, Table, PartialObjectMetadata,
aggregated discovery) a request's `Accept` header asks for, by k8s.io/apiserver's rules.

Clauses are tried best first (quality, then specificity, then header order); a clause matches
a media type we can produce exactly, by `type/*` or by `*/*`. Its `as`, `g` and `v` parameters
ask for a conversion, which the endpoint must allow or the clause is skipped; `stream` other
than `watch` skips it too; `pretty=1` asks for indented output. Unlike kube-apiserver, a clause
with `q=0` is never chosen (RFC 9110 says it means "not acceptable"). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AGGREGATED_DISCOVERY",
    "JSON",
    "PROTOBUF",
    "RESOURCE_MEDIA_TYPES",
    "YAML",
    "Choice",
    "Clause",
    "Conversion",
    "negotiate",
    "parse_accept",
    "resource_conversion_allowed",
]

JSON: Final = "application/json"
YAML: Final = "application/yaml"
PROTOBUF: Final = "application/vnd.kubernetes.protobuf"
RESOURCE_MEDIA_TYPES: Final = (JSON, YAML, PROTOBUF)
"""What the Metrics API endpoints produce, in kube-apiserver's order of preference."""

META_GROUP: Final = "meta.k8s.io"
META_VERSIONS: Final = frozenset({"v1", "v1beta1"})


@dataclass(frozen=True, slots=True)
class Conversion:
    """The `as`/`g`/`v` parameters of an Accept clause: the kind the client wants instead."""

    kind: str
    group: str
    version: str

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


AGGREGATED_DISCOVERY: Final = (
    Conversion("APIGroupDiscoveryList", "apidiscovery.k8s.io", "v2"),
    Conversion("APIGroupDiscoveryList", "apidiscovery.k8s.io", "v2beta1"),
)


@dataclass(frozen=True, slots=True)
class Clause:
    """One media range of an Accept header."""

    type: str
    subtype: str
    params: dict[str, str]
    quality: float
    position: int


@dataclass(frozen=True, slots=True)
class Choice:
    """The negotiated answer: the media type to write and the view to render."""

    media_type: str
    conversion: Conversion | None = None
    pretty: bool = False

    @property
    def content_type(self) -> str:
        """The Content-Type header: the media type, with the kind for aggregated discovery
        (clients tell the aggregated document from the legacy one by it)."""
        c = self.conversion
        if c is not None and c in AGGREGATED_DISCOVERY:
            return f"{self.media_type};g={c.group};v={c.version};as={c.kind}"
        return self.media_type


def parse_accept(header: str) -> list[Clause]:
    """The clauses of an Accept header, best first. Malformed ranges are dropped."""
    clauses: list[Clause] = []
    for position, part in enumerate(header.split(",")):
        pieces = part.split(";")
        media = pieces[0].strip().lower()
        if not media:
            continue
        main, slash, sub = media.partition("/")
        if not slash:
            # goautoneg reads a bare "*" as "*/*"; other bare words are not media ranges.
            if main != "*":
                continue
            sub = "*"
        main, sub = main.strip(), sub.strip()
        if not main or not sub or (main == "*" and sub != "*"):
            continue
        params: dict[str, str] = {}
        quality = 1.0
        for piece in pieces[1:]:
            key, eq, value = piece.partition("=")
            key = key.strip().lower()
            if not key:
                continue
            value = value.strip().strip('"') if eq else ""
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            else:
                params[key] = value
        clauses.append(Clause(main, sub, params, quality, position))
    clauses.sort(key=lambda c: (-c.quality, c.type == "*", c.subtype == "*", c.position))
    return clauses


def _matches(clause: Clause, media_type: str) -> bool:
    main, _, sub = media_type.partition("/")
    if clause.type == "*":
        return True
    return clause.type == main and clause.subtype in (sub, "*")


def negotiate(
    header: str,
    media_types: Sequence[str],
    allows: Callable[[str, Conversion], bool] = lambda _media, _conversion: False,
) -> Choice | None:
    """The first acceptable (media type, conversion) for `header`, or None (406).

    An empty header takes the first media type without conversion. `allows(media_type,
    conversion)` says whether this endpoint can render that conversion in that media type.
    """
    if not header.strip():
        return Choice(media_types[0])
    for clause in parse_accept(header):
        if clause.quality <= 0:
            continue
        for media_type in media_types:
            if not _matches(clause, media_type):
                continue
            choice = _accept_params(clause, media_type, allows)
            if choice is not None:
                return choice
    return None


def _accept_params(
    clause: Clause, media_type: str, allows: Callable[[str, Conversion], bool]
) -> Choice | None:
    params = clause.params
    stream = params.get("stream", "")
    if stream and stream != "watch":
        return None
    conversion = None
    if "as" in params or "g" in params or "v" in params:
        conversion = Conversion(params.get("as", ""), params.get("g", ""), params.get("v", ""))
        if not allows(media_type, conversion):
            return None
    return Choice(media_type, conversion, pretty=params.get("pretty") == "1")


def resource_conversion_allowed(media_type: str, conversion: Conversion) -> bool:
    """Conversions of Metrics API objects: Table (JSON or YAML; Table has no protobuf form)
    and PartialObjectMetadata(List), in meta.k8s.io v1 or v1beta1."""
    if conversion.group != META_GROUP or conversion.version not in META_VERSIONS:
        return False
    if conversion.kind == "Table":
        return media_type != PROTOBUF
    return conversion.kind in ("PartialObjectMetadata", "PartialObjectMetadataList")
