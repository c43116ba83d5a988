"""Kubernetes label and field selectors: parsing with apimachinery's grammar, validation and
error messages, and matching against an object's labels or fields.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_SELECTOR_LENGTH",
    "FieldRequirement",
    "FieldSelector",
    "LabelSelector",
    "Requirement",
    "SelectorError",
    "parse_field_selector",
    "parse_label_selector",
]

MAX_SELECTOR_LENGTH: Final = 16 * 1024
"""Longer selectors are rejected before parsing; real ones are a few hundred bytes."""


class SelectorError(ValueError):
    """A label or field selector that cannot be parsed or is not allowed."""


# --- label selectors (k8s.io/apimachinery/pkg/labels) ---------------------------------

EXISTS: Final = "exists"
DOES_NOT_EXIST: Final = "!"
EQUALS: Final = "="
DOUBLE_EQUALS: Final = "=="
NOT_EQUALS: Final = "!="
IN: Final = "in"
NOT_IN: Final = "notin"
GREATER_THAN: Final = "gt"
LESS_THAN: Final = "lt"
_BINARY_OPERATORS: Final = "in, notin, =, ==, !=, gt, lt"
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `key op values` term of a label selector."""

    key: str
    operator: str
    """One of "exists", "!", "=", "==", "!=", "in", "notin", "gt", "lt"."""
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        op = self.operator
        if op in (IN, EQUALS, DOUBLE_EQUALS):
            return value is not None and value in self.values
        if op in (NOT_IN, NOT_EQUALS):
            return value is None or value not in self.values
        if op == EXISTS:
            return value is not None
        if op == DOES_NOT_EXIST:
            return value is None
        # gt / lt: the label must hold an integer; the bound was validated at parse time.
        actual = _parse_int64(value) if value is not None else None
        if actual is None:
            return False
        (bound,) = self.values
        limit = int(bound)
        return actual > limit if op == GREATER_THAN else actual < limit

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        values = ",".join(sorted(self.values))
        if self.operator in (IN, NOT_IN):
            return f"{self.key} {self.operator} ({values})"
        symbol = {GREATER_THAN: ">", LESS_THAN: "<"}.get(self.operator, self.operator)
        return f"{self.key}{symbol}{values}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """An AND of requirements; no requirements selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


# Token kinds of the label selector lexer.
_END: Final = "end of string"
_IDENTIFIER: Final = "identifier"
_OPERATOR_TOKENS: Final = frozenset({"(", ")", ",", "!", "=", "==", "!=", ">", "<"})
_KEYWORDS: Final = frozenset({IN, NOT_IN})
_SPECIAL: Final = frozenset("=!(),><")
_WHITESPACE: Final = frozenset(" \t\r\n")


def _tokenize(text: str) -> list[tuple[str, str]]:
    """(kind, literal) pairs; kind is the literal itself for operators and keywords."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    end = len(text)
    while True:
        while pos < end and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= end:
            tokens.append((_END, ""))
            return tokens
        ch = text[pos]
        if ch in _SPECIAL:
            # The longest operator wins: "==" and "!=" over "=" and "!".
            pair = text[pos : pos + 2]
            literal = pair if pair in ("==", "!=") else ch
            tokens.append((literal, literal))
            pos += len(literal)
            continue
        start = pos
        while pos < end and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
            pos += 1
        word = text[start:pos]
        tokens.append((word if word in _KEYWORDS else _IDENTIFIER, word))


class _LabelParser:
    """Recursive descent over the tokens, mirroring apimachinery's parser and messages."""

    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._pos = 0

    def _peek(self, *, values: bool = True) -> tuple[str, str]:
        kind, literal = self._tokens[self._pos]
        # Where values are expected, "in" and "notin" are plain identifiers.
        if values and kind in _KEYWORDS:
            kind = _IDENTIFIER
        return kind, literal

    def _next(self, *, values: bool = True) -> tuple[str, str]:
        token = self._peek(values=values)
        if self._pos < len(self._tokens) - 1:
            self._pos += 1
        return token

    def parse(self) -> LabelSelector:
        requirements: list[Requirement] = []
        while True:
            kind, literal = self._peek()
            if kind == _END:
                break
            if kind not in (_IDENTIFIER, "!"):
                raise SelectorError(
                    f"found '{literal}', expected: !, identifier, or 'end of string'"
                )
            try:
                requirements.append(self._requirement())
            except SelectorError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            kind, literal = self._next()
            if kind == _END:
                break
            if kind != ",":
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            kind, literal = self._peek()
            if kind not in (_IDENTIFIER, "!"):
                raise SelectorError(f"found '{literal}', expected: identifier after ','")
        # Upstream keeps requirements sorted by key; it makes String() deterministic.
        requirements.sort(key=lambda r: r.key)
        return LabelSelector(tuple(requirements))

    def _requirement(self) -> Requirement:
        negated = False
        kind, literal = self._next()
        if kind == "!":
            negated = True
            kind, literal = self._next()
        if kind != _IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        key = literal
        _validate_key(key)
        if negated:
            return Requirement(key, DOES_NOT_EXIST)
        if self._peek()[0] in (_END, ","):
            return Requirement(key, EXISTS)
        kind, literal = self._next(values=False)
        operators = {
            IN: IN,
            NOT_IN: NOT_IN,
            "=": EQUALS,
            "==": DOUBLE_EQUALS,
            "!=": NOT_EQUALS,
            ">": GREATER_THAN,
            "<": LESS_THAN,
        }
        operator = operators.get(kind)
        if operator is None:
            raise SelectorError(f"found '{literal}', expected: {_BINARY_OPERATORS}")
        values = self._set_values() if operator in (IN, NOT_IN) else self._exact_value()
        for index, value in enumerate(sorted(values)):
            _validate_value(value, index)
        if operator in (GREATER_THAN, LESS_THAN):
            (value,) = values
            if _parse_int64(value) is None:
                raise SelectorError(
                    f'values[0]: Invalid value: "{value}": '
                    "for 'Gt', 'Lt' operators, the value must be an integer"
                )
        return Requirement(key, operator, frozenset(values))

    def _exact_value(self) -> set[str]:
        kind, literal = self._peek()
        if kind in (_END, ","):
            return {""}
        kind, literal = self._next()
        if kind != _IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        return {literal}

    def _set_values(self) -> set[str]:
        kind, literal = self._next()
        if kind != "(":
            raise SelectorError(f"found '{literal}' expected: '('")
        kind, literal = self._peek()
        if kind == ")":
            self._next()
            # "()" is the set holding the empty value, as upstream.
            return {""}
        if kind not in (_IDENTIFIER, ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:
            kind, literal = self._next()
            if kind == _IDENTIFIER:
                values.add(literal)
                following, following_literal = self._peek()
                if following == ")":
                    self._next()
                    return values
                if following != ",":
                    raise SelectorError(f"found '{following_literal}', expected: ',' or ')'")
            elif kind == ",":
                # Empty items, as in "(,a)" or "(a,,b)" or "(a,)", are empty values.
                if not values:
                    values.add("")
                following, _ = self._peek()
                if following == ")":
                    self._next()
                    values.add("")
                    return values
                if following == ",":
                    self._next()
                    values.add("")
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")


_NAME_PART: Final = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_NAME_RULE: Final = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')"
)


def _validate_key(key: str) -> None:
    problems: list[str] = []
    prefix, slash, name = key.rpartition("/")
    if slash and "/" in prefix:
        problems.append(
            f"a qualified name {_NAME_RULE} with an optional DNS subdomain prefix and '/' "
            "(e.g. 'example.com/MyName')"
        )
    else:
        if slash:
            if not prefix:
                problems.append("prefix part must be non-empty")
            elif len(prefix) > 253:
                problems.append("prefix part must be no more than 253 characters")
            elif _DNS_SUBDOMAIN.fullmatch(prefix) is None:
                problems.append(
                    "prefix part a lowercase RFC 1123 subdomain must consist of lower case "
                    "alphanumeric characters, '-' or '.', and must start and end with an "
                    "alphanumeric character (e.g. 'example.com')"
                )
        if not name:
            problems.append("name part must be non-empty")
        elif len(name) > 63:
            problems.append("name part must be no more than 63 characters")
        elif _NAME_PART.fullmatch(name) is None:
            problems.append(f"name part {_NAME_RULE}")
    if problems:
        raise SelectorError(f'key: Invalid value: "{key}": {"; ".join(problems)}')


def _validate_value(value: str, index: int) -> None:
    if len(value) > 63:
        problem = "must be no more than 63 characters"
    elif value and _NAME_PART.fullmatch(value) is None:
        problem = (
            "a valid label must be an empty string or consist of alphanumeric characters, "
            "'-', '_' or '.', and must start and end with an alphanumeric character "
            "(e.g. 'MyValue', or 'my_value', or '12345')"
        )
    else:
        return
    raise SelectorError(f'values[{index}]: Invalid value: "{value}": {problem}')


def _parse_int64(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64), or None when it would fail."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def parse_label_selector(text: str) -> LabelSelector:
    """Parse a label selector such as `app=web,tier in (a,b),!canary`.

    The empty (or all-blank) selector matches everything. Raises SelectorError.
    """
    _check_length(text)
    return _LabelParser(text).parse()


# --- field selectors (k8s.io/apimachinery/pkg/fields) ---------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """`field=value` (or `==`), or `field!=value` when `negated`."""

    field: str
    value: str
    negated: bool = False

    def matches(self, fields: Mapping[str, str]) -> bool:
        # As upstream, an absent field reads as the empty string.
        return (fields.get(self.field, "") == self.value) != self.negated


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """An AND of field terms; no terms selects everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def requires_exact_match(self, field: str) -> str | None:
        """The value `field` must equal for anything to match, if a term pins it."""
        for r in self.requirements:
            if r.field == field and not r.negated:
                return r.value
        return None


def parse_field_selector(text: str, allowed: Collection[str]) -> FieldSelector:
    """Parse a field selector such as `metadata.name=a,metadata.namespace!=b`.

    Values may escape `\\`, `,` and `=` with a backslash. Fields outside `allowed` are
    rejected as the apiserver does. Raises SelectorError.
    """
    _check_length(text)
    requirements: list[FieldRequirement] = []
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        field, operator, raw_value = _split_term(term)
        if not operator:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        value = _unescape_field_value(raw_value)
        if field not in allowed:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append(FieldRequirement(field, value, negated=operator == "!="))
    return FieldSelector(tuple(requirements))


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped; escapes stay in the terms."""
    terms: list[str] = []
    start = 0
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str]:
    """(field, operator, raw value) at the first operator; operator "" when there is none."""
    for i in range(len(term)):
        for operator in ("!=", "==", "="):
            if term.startswith(operator, i):
                return term[:i], operator, term[i + len(operator) :]
    return term, "", ""


def _unescape_field_value(raw: str) -> str:
    if "\\" not in raw and "," not in raw and "=" not in raw:
        return raw
    out: list[str] = []
    escaped = False
    for ch in raw:
        if escaped:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":
            raise SelectorError(f"invalid field selector: unescaped character in value: {ch}")
        else:
            out.append(ch)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def _check_length(text: str) -> None:
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(
            f"selector is {len(text)} characters long; at most {MAX_SELECTOR_LENGTH} are allowed"
        )
