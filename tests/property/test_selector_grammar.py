"""The label-selector parser against a reference transcription of apimachinery's
(k8s.io/apimachinery/pkg/labels/selector.go: Lexer, Parser, NewRequirement, IsQualifiedName,
IsValidLabelValue) on generated selectors, valid and not: both accept the same strings and
produce the same requirements.

tests/unit/test_selectors.py checks matching on well-formed selectors and messages on
hand-picked errors; this compares acceptance and structure on token soup, where the
corner cases live ("(,)", "a in (x,,)", keywords as values, "!a=b", operators run together).
The reference works on a token list with an explicit position, as the Go parser does.
NUL is not generated: Go's lexer reads it as the end of the string (so "\\0anything" selects
everything), where we reject it; ours is the stricter reading.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from metrics_server.api.selectors import SelectorError, parse_label_selector

Req = tuple[str, str, tuple[str, ...]]

_SPECIAL = "=!(),><"
_WHITESPACE = " \t\r\n"
_TOKENS = {")": ")", ",": ",", "!": "!", "==": "==", "=": "=", ">": ">", "in": "in", "<": "<",
           "!=": "!=", "notin": "notin", "(": "("}
_QNAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*\Z")


class Rejected(Exception):
    pass


def _lex(text: str) -> list[tuple[str, str]]:
    """(token kind, literal); kind "id" for identifiers, "eos" at the end."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            out.append(("eos", ""))
            return out
        if text[i] in _SPECIAL:
            # Longest run of special characters that is still a token.
            best = ""
            j = i
            while j < n and text[j] in _SPECIAL:
                if text[i : j + 1] in _TOKENS:
                    best = text[i : j + 1]
                elif best:
                    break
                j += 1
            out.append((_TOKENS[best], best))
            i += len(best)
            continue
        j = i
        while j < n and text[j] not in _SPECIAL and text[j] not in _WHITESPACE:
            j += 1
        word = text[i:j]
        out.append((_TOKENS.get(word, "id"), word))
        i = j


def _valid_key(key: str) -> bool:
    parts = key.split("/")
    if len(parts) > 2:
        return False
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return False
    return 0 < len(name) <= 63 and _QNAME.match(name) is not None


def _valid_value(value: str) -> bool:
    return len(value) <= 63 and (value == "" or _QNAME.match(value) is not None)


def _parse_int64(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None and -(2**63) <= int(text) < 2**63


class _Parser:
    def __init__(self, text: str) -> None:
        self.items = _lex(text)
        self.pos = 0

    def look(self, values: bool = True) -> str:
        kind = self.items[self.pos][0]
        return "id" if values and kind in ("in", "notin") else kind

    def take(self, values: bool = True) -> tuple[str, str]:
        kind, literal = self.items[self.pos]
        self.pos = min(self.pos + 1, len(self.items) - 1)
        return ("id" if values and kind in ("in", "notin") else kind), literal

    def selector(self) -> list[Req]:
        reqs: list[Req] = []
        while True:
            kind = self.look()
            if kind == "eos":
                return reqs
            if kind not in ("id", "!"):
                raise Rejected
            reqs.append(self.requirement())
            kind, _ = self.take()
            if kind == "eos":
                return reqs
            if kind != "," or self.look() not in ("id", "!"):
                raise Rejected

    def requirement(self) -> Req:
        kind, key = self.take()
        negated = kind == "!"
        if negated:
            kind, key = self.take()
        if kind != "id" or not _valid_key(key):
            raise Rejected
        if negated:
            return (key, "!", ())
        if self.look() in ("eos", ","):
            return (key, "exists", ())
        op = {"in": "in", "notin": "notin", "=": "=", "==": "==", "!=": "!=", ">": "gt",
              "<": "lt"}.get(self.take(values=False)[0])
        if op is None:
            raise Rejected
        values = self.value_set() if op in ("in", "notin") else self.exact_value()
        if not all(_valid_value(v) for v in values):
            raise Rejected
        if op in ("gt", "lt") and not all(_parse_int64(v) for v in values):
            raise Rejected
        return (key, op, tuple(sorted(values)))

    def exact_value(self) -> set[str]:
        if self.look() in ("eos", ","):
            return {""}
        kind, literal = self.take()
        if kind != "id":
            raise Rejected
        return {literal}

    def value_set(self) -> set[str]:
        if self.take()[0] != "(":
            raise Rejected
        first = self.look()
        if first == ")":
            self.take()
            return {""}
        if first not in ("id", ","):
            raise Rejected
        values: set[str] = set()
        while True:  # parseIdentifiersList
            kind, literal = self.take()
            if kind == "id":
                values.add(literal)
                following = self.look()
                if following == ")":
                    break
                if following != ",":
                    raise Rejected
            elif kind == ",":
                if not values:
                    values.add("")
                following = self.look()
                if following == ")":
                    values.add("")
                    break
                if following == ",":
                    self.take()
                    values.add("")
            else:
                raise Rejected
        if self.take()[0] != ")":
            raise Rejected
        return values


def reference(text: str) -> list[Req] | None:
    """Requirements sorted for comparison, or None when apimachinery rejects the selector."""
    try:
        return sorted(_Parser(text).selector())
    except Rejected:
        return None


def ours(text: str) -> list[Req] | None:
    try:
        selector = parse_label_selector(text)
    except SelectorError:
        return None
    return sorted((r.key, r.operator, tuple(sorted(r.values))) for r in selector.requirements)


_GOOD_KEYS = ["a", "app", "k-1", "x.y_z", "in", "notin", "example.com/team", "Ab.C-1", "k" * 63]
_BAD_KEYS = ["a/b/c", "-a", "a.", "A/b", "/a", "a/", "k" * 64, "ü", "p" * 254 + "/a", "a b"]
_KEYS = _GOOD_KEYS + _BAD_KEYS
_GOOD_VALUES = ["", "v", "1", "-1", "+7", "10", "x_y", "v" * 63, "in", "notin", "A-z"]
_BAD_VALUES = ["-bad", "ok.", "名", "v" * 64, "9223372036854775808"]
_VALUES = _GOOD_VALUES + _BAD_VALUES
_OPS = ["=", "==", "!=", "!", "in", "notin", ">", "<", "(", ")", ",", "!!", "=!", "><", "()"]
_BLANKS = ["", " ", "  ", "\t", "\n", "\r\n"]

_token_soup = st.lists(
    st.tuples(st.sampled_from(_KEYS + _VALUES + _OPS), st.sampled_from(_BLANKS)),
    max_size=14,
).map(lambda parts: "".join(token + blank for token, blank in parts))


@st.composite
def _shaped(draw: st.DrawFn) -> str:
    """Mostly well-formed requirements, sometimes subtly not."""
    def pick(good: list[str], bad: list[str]) -> str:
        return draw(st.sampled_from(bad if draw(st.integers(0, 9)) == 0 else good))

    parts = []
    for _ in range(draw(st.integers(0, 4))):
        key = pick(_GOOD_KEYS, _BAD_KEYS)
        shape = draw(st.sampled_from(["exists", "not", "exact", "set", "cmp"]))
        b = draw(st.sampled_from(_BLANKS[:4]))
        if shape == "exists":
            parts.append(f"{b}{key}{b}")
        elif shape == "not":
            parts.append(f"{b}!{draw(st.sampled_from(_BLANKS[:3]))}{key}")
        elif shape == "exact":
            op = draw(st.sampled_from(["=", "==", "!="]))
            parts.append(f"{key}{b}{op}{b}{pick(_GOOD_VALUES, _BAD_VALUES)}")
        elif shape == "set":
            items = [pick(_GOOD_VALUES, _BAD_VALUES) for _ in range(draw(st.integers(0, 4)))]
            op = draw(st.sampled_from(["in", "notin"]))
            parts.append(f"{key} {op}{b}({b}{','.join(items)}{b})")
        else:
            op = draw(st.sampled_from([">", "<"]))
            parts.append(f"{key}{op}{pick(['0', '-3', '42', '+1'], _VALUES)}")
    return draw(st.sampled_from([",", ", ", " ,"])).join(parts)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_token_soup, _shaped()))
@example("x in (foo,,baz),y,z notin ()")
@example("a in (,)")
@example("a in (,,)")
@example("a in (x,,,)")
@example("a in (x,,)")
@example("in in (in),notin notin (notin)")
@example("!a=b")
@example("a=!b")
@example("a!=b,a==c,a=d")
@example("a>+5")
@example("a in ()")
def test_parser_agrees_with_apimachinery(text: str) -> None:
    assert ours(text) == reference(text)


@settings(max_examples=300, deadline=None)
@given(_shaped())
def test_accepted_selectors_survive_their_string_form(text: str) -> None:
    """What we accept prints (String()) to a selector the reference parses identically."""
    parsed = ours(text)
    if parsed is None:
        return
    printed = str(parse_label_selector(text))
    assert reference(printed) == parsed


def test_reference_on_documented_examples() -> None:
    assert reference("x in (foo,,baz),y,z notin ()") == [
        ("x", "in", ("", "baz", "foo")),
        ("y", "exists", ()),
        ("z", "notin", ("",)),
    ]
    assert reference("a in (,,)") is None
    assert reference("a in (x,,,)") == [("a", "in", ("", "x"))]
    assert reference("a=b c") is None
    assert reference("") == [] and reference("  ") == []
