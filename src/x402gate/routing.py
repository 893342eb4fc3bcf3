"""Route tables: which requests are paid, and how.

Keys are ``"[METHODS ]PATTERN"``: ``"GET /weather"``, ``"GET,POST /v1/chat"``, ``"/reports/{id}"``
(any method), ``"/files/*"`` (the prefix and everything below it). ``{name}`` or ``:name`` matches
one path segment, ``*`` inside a segment any characters but ``/``. Matching is case-sensitive on
the path, first entry wins. Values are a :class:`~x402gate.gate.Route`, a price (``0.05``,
``"$0.05"``, a strategy, a callable), or a dict of :meth:`~x402gate.gate.PaymentGate.route`
keyword arguments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .gate import PaymentGate, Route

__all__ = ["RouteTable", "compile_pattern"]

_METHOD_RE = re.compile(r"^[A-Z]+(?:,[A-Z]+)*$")
_PARAM_RE = re.compile(r"^(?:\{[A-Za-z_][A-Za-z0-9_]*\}|:[A-Za-z_][A-Za-z0-9_]*)$")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Regex for a path pattern (see the module docstring)."""
    if not pattern.startswith("/"):
        raise ConfigurationError(f"route path must start with '/': {pattern!r}")
    segments = pattern.strip("/").split("/") if pattern != "/" else []
    parts: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "*" and last:
            return re.compile("^" + "".join(parts) + r"(?:/.*)?$")
        if _PARAM_RE.match(segment):
            parts.append(r"/[^/]+")
        elif "{" in segment or "}" in segment:
            raise ConfigurationError(f"bad path parameter in route {pattern!r}")
        else:
            parts.append("/" + r"[^/]*".join(re.escape(p) for p in segment.split("*")))
    # A trailing slash is optional either way: "/weather" and "/weather/" are one resource.
    return re.compile("^" + "".join(parts) + "/?$")


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    methods: frozenset[str] | None
    regex: re.Pattern[str]
    route: Route


class RouteTable:
    """An ordered table of paid routes."""

    def __init__(self, gate: PaymentGate, routes: Mapping[str, Any]) -> None:
        from .gate import Route

        if not isinstance(routes, Mapping) or not routes:
            raise ConfigurationError(
                "routes must be a non-empty mapping of 'METHOD /path' to prices"
            )
        self.gate = gate
        entries: list[_Entry] = []
        for key, spec in routes.items():
            if not isinstance(key, str) or not key.strip():
                raise ConfigurationError(f"route key must be a string like 'GET /path': {key!r}")
            head, _, rest = key.strip().partition(" ")
            if rest:
                methods_text, path = head.upper(), rest.strip()
                if not _METHOD_RE.match(methods_text):
                    raise ConfigurationError(f"bad HTTP method in route {key!r}")
                named = frozenset(methods_text.split(","))
                # Servers answer HEAD by running the GET handler: it must be paid for too.
                methods: frozenset[str] | None = named | {"HEAD"} if "GET" in named else named
            else:
                methods, path = None, head
            if isinstance(spec, Route):
                route = spec
            elif isinstance(spec, Mapping):
                try:
                    route = gate.route(**spec)
                except TypeError as exc:
                    raise ConfigurationError(f"route {key!r}: {exc}") from None
            else:
                route = gate.route(spec)
            entries.append(_Entry(key, methods, compile_pattern(path), route))
        self._entries = tuple(entries)

    def match(self, method: str, path: str) -> Route | None:
        """The route for this request, or ``None`` when it is free."""
        method = method.upper()
        for entry in self._entries:
            if entry.methods is not None and method not in entry.methods:
                continue
            if entry.regex.match(path):
                return entry.route
        return None

    def __iter__(self) -> Any:
        return iter((e.key, e.route) for e in self._entries)
