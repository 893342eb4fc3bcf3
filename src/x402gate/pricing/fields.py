"""Reading the parts of a request that prices depend on: field paths and glob conditions.


* ``method`` and ``path``;
* ``query.<name>``: a query parameter, name case-sensitive;
* ``header.<name>``: a header, name case-insensitive;
* ``body.<dotted.path>``: a field of the JSON body; list items by index (``body.messages.0.role``).
  Keys that contain dots cannot be addressed.


Used by :class:`~x402gate.pricing.MatchRules`, :class:`~x402gate.pricing.ModelTable` and
:class:`~x402gate.metering.PerToken` (its model field).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from typing import Any, TypeAlias

from ..errors import ConfigurationError
from ..request import RequestInfo

__all__ = ["Condition", "PatternLike", "RequestField"]

PatternLike: TypeAlias = str | bool | int | float | list[Any] | tuple[Any, ...] | None
"""A condition in a rule: a glob, a JSON scalar (compared as JSON text) or a list of those."""


_ROOTS = "'method', 'path', 'query.<name>', 'header.<name>' or 'body.<dotted.path>'"


class RequestField:
    """A compiled field path; ``read`` gives the field's text, or None when it is absent."""

    __slots__ = ("kind", "name", "parts", "path")

    def __init__(self, path: object) -> None:
        if not isinstance(path, str):
            raise ConfigurationError(f"field must be a string such as 'body.model', got {path!r}")
        self.path = path
        kind, dot, name = path.partition(".")
        self.kind = kind
        self.name = name
        self.parts: tuple[str, ...] = ()
        if kind in ("method", "path") and not dot:
            return
        if kind in ("query", "header") and name:
            return
        if kind == "body" and name:
            self.parts = tuple(name.split("."))
            if all(self.parts):
                return
        raise ConfigurationError(f"unknown field {path!r}: use {_ROOTS}")

    def read(self, request: RequestInfo) -> str | None:
        if self.kind == "method":
            return request.method
        if self.kind == "path":
            return request.path
        if self.kind == "query":
            return request.query_value(self.name)
        if self.kind == "header":
            return request.header_value(self.name)
        node = request.json()  # parsed once per request and cached by RequestInfo
        for part in self.parts:
            if isinstance(node, dict):
                if part not in node:
                    return None
                node = node[part]
            elif isinstance(node, list) and part.isascii() and part.isdigit():
                index = int(part)
                if index >= len(node):
                    return None
                node = node[index]
            else:
                return None
        return node if isinstance(node, str) else _json_text(node)


def _json_text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _compile_patterns(field: RequestField, pattern: object) -> tuple[re.Pattern[str], ...]:
    """Validate one condition's pattern(s) and compile them."""
    alternatives = list(pattern) if isinstance(pattern, list | tuple) else [pattern]
    if not alternatives:
        raise ConfigurationError(f"condition on {field.path!r} has an empty list of patterns")
    texts = []
    for item in alternatives:
        if isinstance(item, str):
            # RequestInfo upper-cases the method, so a lower-case pattern would never match.
            texts.append(item.upper() if field.kind == "method" else item)
        elif (
            item is None
            or isinstance(item, bool | int)
            or (isinstance(item, float) and math.isfinite(item))
        ):
            texts.append(_json_text(item))  # YAML `stream: true` means the JSON value true
        else:
            raise ConfigurationError(
                f"condition on {field.path!r} must be a glob string, a JSON scalar or a list "
                f"of those, got {item!r}"
            )
    # fnmatch.translate + re is exactly fnmatch.fnmatchcase, compiled once at construction.
    return tuple(re.compile(fnmatch.translate(text)) for text in texts)


class Condition:
    """One rule condition: a field and the glob patterns its text must match (any of them)."""

    __slots__ = ("field", "globs")

    def __init__(self, path: object, pattern: object) -> None:
        self.field = RequestField(path)
        self.globs = _compile_patterns(self.field, pattern)

    def matches(self, request: RequestInfo) -> bool:
        value = self.field.read(request)
        return value is not None and any(glob.match(value) for glob in self.globs)
