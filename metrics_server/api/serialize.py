"""Writing JSON-shaped documents as JSON (compact or indented) or as block-style YAML.

The YAML writer covers exactly what the API serves (maps, lists, strings, numbers, booleans,
null). A string is written plain only when no YAML 1.1 or 1.2 reader could take it for anything
but that string; otherwise it is double-quoted with JSON's escapes, which YAML shares.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

from metrics_server.api.negotiate import YAML

__all__ = ["dumps", "to_yaml"]

_PLAIN: Final = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
# Words that YAML 1.1 (go-yaml v2, PyYAML) or 1.2 resolves to booleans or null.
_RESERVED: Final = frozenset(
    {"y", "yes", "n", "no", "true", "false", "on", "off", "null"}
)
# Characters JSON leaves raw that YAML reads as line breaks or does not allow at all.
_NOT_YAML_PRINTABLE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def dumps(doc: Any, media_type: str, *, pretty: bool = False) -> bytes:
    """`doc` as `media_type` (YAML, else JSON)."""
    if media_type == YAML:
        return to_yaml(doc)
    if pretty:
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    return orjson.dumps(doc)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return orjson.dumps(value).decode()
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    if _NOT_YAML_PRINTABLE.search(text):
        return json.dumps(text, ensure_ascii=True)
    return orjson.dumps(text).decode()


def _emit(value: Any, indent: str, out: list[str]) -> None:
    """Append the lines of a non-empty map or list, each starting with `indent`."""
    if isinstance(value, dict):
        for key, item in value.items():
            _entry(f"{indent}{_scalar(key)}:", item, indent + "  ", indent, out)
    else:
        for item in value:
            # A map in a list starts on the dash line; its other keys line up after "- ".
            if isinstance(item, dict) and item:
                first = True
                for key, sub in item.items():
                    lead = f"{indent}- " if first else f"{indent}  "
                    _entry(f"{lead}{_scalar(key)}:", sub, indent + "    ", indent + "  ", out)
                    first = False
            else:
                _entry(f"{indent}-", item, indent + "  ", indent + "  ", out)


def _entry(head: str, value: Any, map_indent: str, list_indent: str, out: list[str]) -> None:
    if isinstance(value, dict) and value:
        out.append(head)
        _emit(value, map_indent, out)
    elif isinstance(value, list) and value:
        out.append(head)
        # Lists under a key sit at the key's own indentation, as go-yaml writes them.
        _emit(value, list_indent, out)
    elif isinstance(value, dict):
        out.append(f"{head} {{}}")
    elif isinstance(value, list):
        out.append(f"{head} []")
    else:
        out.append(f"{head} {_scalar(value)}")


def to_yaml(doc: Any) -> bytes:
    """A document as block-style YAML, ending in a newline."""
    if isinstance(doc, dict | list) and doc:
        out: list[str] = []
        _emit(doc, "", out)
        return ("\n".join(out) + "\n").encode()
    if isinstance(doc, dict):
        return b"{}\n"
    if isinstance(doc, list):
        return b"[]\n"
    return (_scalar(doc) + "\n").encode()
