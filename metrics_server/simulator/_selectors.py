"""Label and field selectors for the fake kube-apiserver: parse once, match many objects.

Label selectors follow k8s.io/apimachinery/pkg/labels: requirements joined by commas, each one
of `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`. Field selectors are the
simple `f=v`, `f==v`, `f!=v` list; the simulator knows the handful of fields each resource
supports and rejects others with 400 like the real apiserver.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "SelectorError",
    "parse_field_selector",
    "parse_label_selector",
]


class SelectorError(ValueError):
    """An unparsable selector; the message is what the apiserver would say."""


_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")


@dataclass(slots=True, frozen=True)
class _Requirement:
    key: str
    op: str
    """One of "=", "!=", "in", "notin", "exists", "!"."""
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects that lack the key, as upstream does.
        return not present or labels[self.key] not in self.values


@dataclass(slots=True, frozen=True)
class LabelSelector:
    requirements: tuple[_Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover - the pattern matches any non-space run
            raise SelectorError(f"unable to parse requirement at {text[pos:]!r}")
        out.append(match.group(1))
        pos = match.end()
    return out


def _check_key(key: str) -> str:
    if not _KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise SelectorError(f"invalid label value: {value!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a label selector; empty or None selects everything."""
    if not text or not text.strip():
        return LabelSelector()
    toks = _tokens(text)
    reqs: list[_Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(toks):
            raise SelectorError(f"unable to parse requirement: unexpected end in {text!r}")
        tok = toks[i]
        i += 1
        return tok

    def peek() -> str | None:
        return toks[i] if i < len(toks) else None

    while True:
        tok = take()
        if tok == "!":
            reqs.append(_Requirement(_check_key(take()), "!", frozenset()))
        else:
            key = _check_key(tok)
            nxt = peek()
            if nxt is None or nxt == ",":
                reqs.append(_Requirement(key, "exists", frozenset()))
            elif nxt in ("=", "==", "!="):
                take()
                value = ""
                if peek() not in (None, ","):
                    value = _check_value(take())
                reqs.append(_Requirement(key, "!=" if nxt == "!=" else "=", frozenset([value])))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"expected '(' after {nxt} in {text!r}")
                values: set[str] = set()
                while True:
                    tok = take()
                    if tok == ")":
                        break
                    if tok == ",":
                        continue
                    values.add(_check_value(tok))
                if not values:
                    raise SelectorError(
                        f"for 'in', 'notin' operators, values set can't be empty: {text!r}"
                    )
                reqs.append(_Requirement(key, nxt, frozenset(values)))
            else:
                raise SelectorError(f"unable to parse requirement: found {nxt!r} in {text!r}")
        sep = peek()
        if sep is None:
            break
        if take() != ",":
            raise SelectorError(f"expected ',' in {text!r}")
    return LabelSelector(tuple(reqs))


@dataclass(slots=True, frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()
    """(field, equal?, value) triples, all of which must hold."""

    def matches(self, get: Callable[[str], str]) -> bool:
        return all((get(field) == value) == equal for field, equal, value in self.terms)

    def value_of(self, field: str) -> str | None:
        """The value an equality term pins `field` to, if any (used to narrow lookups)."""
        for name, equal, value in self.terms:
            if name == field and equal:
                return value
        return None


def parse_field_selector(text: str | None, allowed: frozenset[str]) -> FieldSelector:
    """Parse a field selector over the fields in `allowed`."""
    if not text or not text.strip():
        return FieldSelector()
    terms: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        for op, is_equal in (("!=", False), ("==", True), ("=", True)):
            if op in part:
                field, value = part.split(op, 1)
                equal = is_equal
                break
        else:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field = field.strip()
        if field not in allowed:
            raise SelectorError(f'field label not supported: {field}')
        terms.append((field, equal, value.strip()))
    return FieldSelector(tuple(terms))
