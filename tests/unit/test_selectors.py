"""Tests for label and field selector parsing and matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics_server.api.selectors import (
    MAX_SELECTOR_LENGTH,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)

LABELS = {"app": "web", "tier": "frontend", "example.com/team": "a", "empty": "", "n": "10"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("   \t", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),  # != matches an absent key
        ("missing=x", False),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("missing in (web)", False),  # in requires presence
        ("app notin (db,cache)", True),
        ("app notin (web)", False),
        ("missing notin (web)", True),  # notin matches an absent key
        ("app=web,tier=frontend", True),
        ("app=web,tier=backend", False),
        ("  app = web ,  tier in ( frontend , backend )  ", True),
        ("example.com/team=a", True),
        ("empty=", True),
        ("empty==", True),
        ("app=", False),
        ("empty in ()", True),  # "()" holds the empty value
        ("empty in (,x)", True),
        ("n>9", True),
        ("n>10", False),
        ("n<11", True),
        ("app>1", False),  # not an integer label: never matches
        ("missing<1", False),
        ("in=web", False),  # keywords are fine as keys
        ("in notin (in)", True),
    ],
)
def test_label_selector_matching(selector: str, expected: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is expected


def test_empty_flag() -> None:
    assert parse_label_selector("").empty
    assert parse_label_selector("  ").empty
    assert not parse_label_selector("a").empty


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("a=(", "unable to parse requirement: found '(', expected: identifier"),
        ("(", "found '(', expected: !, identifier, or 'end of string'"),
        (",a", "found ',', expected: !, identifier, or 'end of string'"),
        ("a,", "found '', expected: identifier after ','"),
        ("a b", "found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("a!b", "found '!', expected: in, notin, =, ==, !=, gt, lt"),
        ("a in b", "found 'b' expected: '('"),
        ("a in (b c)", "found 'c', expected: ',' or ')'"),
        ("a in (b,,)", "found ')', expected: ',', or identifier"),
        ("a in (=)", "found '=', expected: ',', ')' or identifier"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("a=b=c", "found '=', expected: ',' or 'end of string'"),
        ("a>b", "for 'Gt', 'Lt' operators, the value must be an integer"),
        ("a>99999999999999999999", "the value must be an integer"),
        ("a/b/c=d", 'key: Invalid value: "a/b/c"'),
        ("/a=b", "prefix part must be non-empty"),
        ("a/=b", "name part must be non-empty"),
        ("Example.com/a=b", "prefix part a lowercase RFC 1123 subdomain"),
        (f"{'p' * 254}/a=b", "prefix part must be no more than 253 characters"),
        ("k" * 64, "name part must be no more than 63 characters"),
        ("-a=b", "name part must consist of alphanumeric characters"),
        ("a.=b", "name part must consist of alphanumeric characters"),
        ("a=b_", 'values[0]: Invalid value: "b_"'),
        ("a in (ok,-bad)", 'values[0]: Invalid value: "-bad"'),
        (f"a={'v' * 64}", "must be no more than 63 characters"),
        ("ünï=x", "name part must consist of alphanumeric characters"),
    ],
)
def test_label_selector_errors(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(selector)
    assert message in str(info.value)


def test_requirement_errors_are_prefixed() -> None:
    with pytest.raises(SelectorError, match=r"^unable to parse requirement: "):
        parse_label_selector("a=-b")


def test_selector_size_guard() -> None:
    huge = ",".join(["a=b"] * (MAX_SELECTOR_LENGTH // 4 + 1))
    with pytest.raises(SelectorError, match="at most"):
        parse_label_selector(huge)
    with pytest.raises(SelectorError, match="at most"):
        parse_field_selector("metadata.name=" + "x" * MAX_SELECTOR_LENGTH, ["metadata.name"])


def test_label_selector_string_form_is_sorted_and_reparses() -> None:
    selector = parse_label_selector("z notin (b,a), !y , a==1,m>3")
    assert str(selector) == "a==1,m>3,!y,z notin (a,b)"
    assert parse_label_selector(str(selector)) == selector


# --- property: parser + matcher agree with a reference model ---------------------------

_keys = st.sampled_from(["a", "b", "in", "x.y/z", "k-1"])
_values = st.sampled_from(["", "1", "v", "w", "10", "x_y"])
_blank = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def _requirement(draw: st.DrawFn) -> tuple[str, str, frozenset[str]]:
    op = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!", ">", "<"]))
    key = draw(_keys)
    if op in ("in", "notin"):
        values = draw(st.frozensets(_values.filter(bool), min_size=1, max_size=3))
    elif op in (">", "<"):
        values = frozenset({str(draw(st.integers(0, 15)))})
    elif op in ("exists", "!"):
        values = frozenset()
    else:
        values = frozenset({draw(_values)})
    return key, op, values


def _render(draw: st.DrawFn, key: str, op: str, values: frozenset[str]) -> str:
    b = draw(_blank)
    if op == "exists":
        return f"{b}{key}{b}"
    if op == "!":
        return f"{b}!{draw(_blank)}{key}{b}"
    if op in ("in", "notin"):
        items = f"{draw(_blank)},{draw(_blank)}".join(draw(st.permutations(sorted(values))))
        return f"{b}{key} {op}{draw(_blank)}({draw(_blank)}{items}{draw(_blank)}){b}"
    (value,) = values
    return f"{b}{key}{draw(_blank)}{op}{draw(_blank)}{value}{b}"


def _reference_match(
    requirements: list[tuple[str, str, frozenset[str]]], labels: dict[str, str]
) -> bool:
    for key, op, values in requirements:
        present = key in labels
        value = labels.get(key)
        if op in ("=", "==", "in"):
            ok = present and value in values
        elif op in ("!=", "notin"):
            ok = not present or value not in values
        elif op == "exists":
            ok = present
        elif op == "!":
            ok = not present
        else:
            (bound,) = values
            number = int(value) if value is not None and value.isdigit() else None
            if number is None:
                ok = False
            elif op == ">":
                ok = number > int(bound)
            else:
                ok = number < int(bound)
        if not ok:
            return False
    return True


@st.composite
def _selector(draw: st.DrawFn) -> tuple[str, list[tuple[str, str, frozenset[str]]]]:
    requirements = draw(st.lists(_requirement(), max_size=4))
    text = ",".join(_render(draw, *r) for r in requirements)
    return text, requirements


@given(_selector(), st.dictionaries(_keys, _values, max_size=5))
def test_label_selector_agrees_with_reference(
    selector: tuple[str, list[tuple[str, str, frozenset[str]]]], labels: dict[str, str]
) -> None:
    text, requirements = selector
    parsed = parse_label_selector(text)
    assert parsed.empty is (not requirements)
    assert parsed.matches(labels) is _reference_match(requirements, labels)


@given(st.text(alphabet="ab =!(),<>in\t/.-_1", max_size=40))
def test_label_selector_garbage_only_raises_selector_error(text: str) -> None:
    try:
        selector = parse_label_selector(text)
    except SelectorError:
        return
    # Whatever parses must also match without error and survive a round trip.
    selector.matches({"a": "1", "b": ""})
    assert parse_label_selector(str(selector)) == selector


# --- field selectors --------------------------------------------------------------------

ALLOWED = ("metadata.name", "metadata.namespace")
FIELDS = {"metadata.name": "web-1", "metadata.namespace": "default"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("metadata.name=web-1", True),
        ("metadata.name==web-1", True),
        ("metadata.name=web-2", False),
        ("metadata.name!=web-2", True),
        ("metadata.name!=web-1", False),
        ("metadata.name=web-1,metadata.namespace=default", True),
        ("metadata.name=web-1,metadata.namespace=kube-system", False),
        (",metadata.name=web-1,", True),
        ("metadata.namespace=", False),
    ],
)
def test_field_selector_matching(selector: str, expected: bool) -> None:
    assert parse_field_selector(selector, ALLOWED).matches(FIELDS) is expected


def test_field_selector_absent_field_reads_as_empty() -> None:
    selector = parse_field_selector("metadata.namespace=", ALLOWED)
    assert selector.matches({"metadata.name": "x"})


def test_field_selector_escapes() -> None:
    selector = parse_field_selector(r"metadata.name=a\,b\=c\\d", ALLOWED)
    assert selector.matches({"metadata.name": "a,b=c\\d"})
    assert not selector.matches({"metadata.name": r"a\,b\=c\\d"})


def test_field_selector_exact_match() -> None:
    selector = parse_field_selector("metadata.namespace!=x,metadata.name=web-1", ALLOWED)
    assert selector.requires_exact_match("metadata.name") == "web-1"
    assert selector.requires_exact_match("metadata.namespace") is None
    assert parse_field_selector("", ALLOWED).empty


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("spec.foo=x", "field label not supported: spec.foo"),
        ("metadata.name = x", "field label not supported: metadata.name "),
        ("metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'"),
        ("metadata.name=a,b", "can't understand 'b'"),
        ("metadata.name=a=b", "unescaped character in value: ="),
        (r"metadata.name=a\x", r"invalid escape sequence: \x"),
        ("metadata.name=a\\", "invalid escape sequence: \\"),
    ],
)
def test_field_selector_errors(selector: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(selector, ALLOWED)
    assert message in str(info.value)


@given(st.text(alphabet="metadname.=!,\\x ", max_size=40))
def test_field_selector_garbage_only_raises_selector_error(text: str) -> None:
    try:
        selector = parse_field_selector(text, ALLOWED)
    except SelectorError:
        return
    selector.matches(FIELDS)
