"""Route tables: which requests are paid, and how.

Keys are ``"[METHODS ]PATTERN"``: ``"GET /weather"``, ``"GET,POST /v1/chat"``, ``"/reports/{id}"``
(any method), ``"/files/*"`` (the prefix and everything below it). ``{name}`` or ``:name`` matches
one path segment, ``*`` inside a segment any characters but ``/``. Matching is case-sensitive on
the path, first entry wins. Values are a :class:`~x402gate.gate.Route`, a price (``0.05``,
``"$0.05"``, a strategy, a callable), or a dict of :meth:`~x402gate.gate.PaymentGate.route`
keyword arguments.

A key that can never apply is a :class:`~x402gate.errors.ConfigurationError` when the table is
built (a key that an earlier key always matches first) or when the app starts (a key that matches
no route of the framework app behind it, see :func:`check_routes_exist`): a typo in a key would
otherwise leave the real route unpaid.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .options import check_route_options

if TYPE_CHECKING:
    from .gate import PaymentGate, Route

__all__ = [
    "REST_GROUP",
    "ROUTE_MATCH_KEY",
    "AppRoute",
    "RouteMatch",
    "RoutePattern",
    "RouteTable",
    "check_routes_exist",
    "compile_pattern",
    "shadowed_keys",
    "split_route_key",
]

_METHOD_RE = re.compile(r"^[A-Z]+(?:,[A-Z]+)*$")
_PARAM_RE = re.compile(r"^(?:\{[A-Za-z_][A-Za-z0-9_]*\}|:[A-Za-z_][A-Za-z0-9_]*)$")


REST_GROUP = "x402gate_rest"
"""Name of the regex group that takes what a trailing ``/*`` matched."""


def _compile_path(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...], bool]:
    """The regex of a path pattern (parameters as named groups), its parameter names and
    whether it ends in ``/*``."""
    if not pattern.startswith("/"):
        raise ConfigurationError(f"route path must start with '/': {pattern!r}")
    segments = pattern.strip("/").split("/") if pattern != "/" else []
    parts: list[str] = []
    params: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "*" and last:
            tail = rf"(?:/(?P<{REST_GROUP}>.*))?$"
            return re.compile("^" + "".join(parts) + tail), tuple(params), True
        if _PARAM_RE.match(segment):
            name = segment.strip("{}:")
            # A name used twice matches twice but is read once: the first occurrence.
            parts.append(r"/[^/]+" if name in params else rf"/(?P<{name}>[^/]+)")
            params.append(name)
        elif "{" in segment or "}" in segment:
            raise ConfigurationError(f"bad path parameter in route {pattern!r}")
        else:
            parts.append("/" + r"[^/]*".join(re.escape(p) for p in segment.split("*")))
    # A trailing slash is optional either way: "/weather" and "/weather/" are one resource.
    return re.compile("^" + "".join(parts) + "/?$"), tuple(dict.fromkeys(params)), False


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Regex for a path pattern (see the module docstring); parameters are named groups."""
    return _compile_path(pattern)[0]


@dataclass(frozen=True, slots=True)
class RoutePattern:
    """A route key parsed once: its methods, its path regex and its parameter names.

    Every reader of route keys (route tables, the Django ``ROUTES`` setting, the gateway's
    configuration and forwarder) goes through :meth:`parse`, so a key means the same everywhere.
    """

    key: str
    methods: frozenset[str] | None
    """Methods it applies to (``GET`` brings ``HEAD``); ``None``: any method."""
    path: str
    regex: re.Pattern[str]
    params: tuple[str, ...]
    """Names of its ``{name}`` / ``:name`` parameters, in order."""
    rest: bool
    """Whether it ends in ``/*`` (the prefix and everything below it)."""

    @classmethod
    def parse(cls, key: Any) -> RoutePattern:
        """The pattern of ``"[METHODS ]PATH"``; :class:`ConfigurationError` if it is not one."""
        methods, path = _parse_key(key)
        regex, params, rest = _compile_path(path)
        return cls(key, methods, path, regex, params, rest)

    def allows(self, method: str) -> bool:
        """Whether requests with ``method`` (upper case) can match."""
        return self.methods is None or method in self.methods

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters of a matching request (``"*"``: what ``/*`` took), or ``None``."""
        if not self.allows(method.upper()):
            return None
        found = self.regex.match(path)
        if found is None:
            return None
        params = {name: found.group(name) for name in self.params}
        if self.rest:
            params["*"] = found.group(REST_GROUP) or ""
        return params


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request matched once: the route, the key that matched and the path parameters."""

    route: Route
    pattern: RoutePattern
    params: Mapping[str, str]


ROUTE_MATCH_KEY = "x402gate.route_match"
"""ASGI scope key of the :class:`RouteMatch` of a request, for the apps behind the middleware."""


def _sample_paths(pattern: str, param: str, glob: str) -> list[str]:
    """Concrete paths ``pattern`` matches: parameters become ``param``, ``*`` inside a segment
    ``glob``; a trailing ``/*`` gives the prefix itself and two segments below it."""
    segments = pattern.strip("/").split("/") if pattern != "/" else []
    tail = bool(segments) and segments[-1] == "*"
    if tail:
        segments = segments[:-1]
    parts = [param if _PARAM_RE.match(s) else s.replace("*", glob) for s in segments]
    base = "/" + "/".join(parts)
    if not tail:
        return [base]
    return [base, base.rstrip("/") + f"/{glob}/{glob}"]


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: RoutePattern
    route: Route | None  # None while only the key is checked (check_key_order)

    @property
    def key(self) -> str:
        return self.pattern.key

    @property
    def methods(self) -> frozenset[str] | None:
        return self.pattern.methods

    @property
    def regex(self) -> re.Pattern[str]:
        return self.pattern.regex

    @property
    def path(self) -> str:
        return self.pattern.path

    def covers(self, other: _Entry) -> bool:
        """Whether every request ``other`` matches is matched by this entry."""
        if self.methods is not None and (other.methods is None or other.methods - self.methods):
            return False
        # Braces never occur in a literal segment of a key, so a sample made of them is matched
        # only by a parameter or a glob of this entry, never by a literal that merely equals it.
        return all(self.regex.match(p) for p in _sample_paths(other.path, "{p}", "{g}"))


def split_route_key(key: Any) -> tuple[frozenset[str] | None, str]:
    """The methods as written (``None``: any) and the target of ``"[METHODS ]TARGET"``.

    The target is a path pattern for route tables; the Django ``ROUTES`` setting also takes
    ``view:name`` targets. Methods are case-insensitive and returned in upper case.
    """
    if not isinstance(key, str) or not key.strip():
        raise ConfigurationError(f"route key must be a string like 'GET /path': {key!r}")
    head, _, rest = key.strip().partition(" ")
    if not rest:
        return None, head
    methods_text, target = head.upper(), rest.strip()
    if not _METHOD_RE.match(methods_text):
        raise ConfigurationError(f"bad HTTP method in route {key!r}")
    return frozenset(methods_text.split(",")), target


def _parse_key(key: Any) -> tuple[frozenset[str] | None, str]:
    """The methods (``None``: any) and the path pattern of a route key."""
    named, path = split_route_key(key)
    if named is None:
        return None, path
    # Servers answer HEAD by running the GET handler: it must be paid for too.
    return (named | {"HEAD"} if "GET" in named else named), path


def _shadowing(entry: _Entry, earlier: Iterable[_Entry]) -> str | None:
    for before in earlier:
        if before.covers(entry):
            return (
                f"route {entry.key!r} is never used: {before.key!r}, before it, matches every "
                "request it would (the first matching key wins: put the more specific key first)"
            )
    return None


def shadowed_keys(keys: Iterable[str]) -> dict[str, str]:
    """The keys that can never match because an earlier key matches every request they would,
    each with the reason (what :class:`RouteTable` refuses, without building routes)."""
    entries: list[_Entry] = []
    found = {}
    for key in keys:
        entry = _Entry(RoutePattern.parse(key), None)
        problem = _shadowing(entry, entries)
        if problem is not None:
            found[key] = problem
        entries.append(entry)
    return found


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
            pattern = RoutePattern.parse(key)
            if isinstance(spec, Route):
                route = spec
            elif isinstance(spec, Mapping):
                check_route_options(spec, f"route {key!r}", also=("price",))
                try:
                    route = gate.route(**spec)
                except TypeError as exc:
                    raise ConfigurationError(f"route {key!r}: {exc}") from None
            else:
                route = gate.route(spec)
            if route.rate_limit is not None and route.rate_limit.scope is None:
                # Counted per key: "/files/a" and "/files/b" under "GET /files/*" share a limit.
                route = replace(route, rate_limit=route.rate_limit.scoped(key))
            if route.name is None:
                # Reports name the route by its key, not by each path it matches.
                route = dataclasses.replace(route, name=pattern.key)
            entry = _Entry(pattern, route)
            problem = _shadowing(entry, entries)
            if problem is not None:
                raise ConfigurationError(problem)
            entries.append(entry)
        self._entries = tuple(entries)
        for entry in entries:  # logs and metrics label each route by its key, never by a path
            assert entry.route is not None
            gate.telemetry.name_route(entry.route, " ".join(entry.key.split()))

    def find(self, method: str, path: str) -> RouteMatch | None:
        """The first entry matching this request, with its path parameters; ``None``: free."""
        method = method.upper()
        for entry in self._entries:
            if not entry.pattern.allows(method):
                continue
            params = entry.pattern.match(method, path)
            if params is not None:
                assert entry.route is not None
                return RouteMatch(entry.route, entry.pattern, params)
        return None

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


_TEMPLATE_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}]*)?\}|<(?:[^<>:]+:)?([^<>]+)>")


def _key_template(template: str) -> str:
    """A framework's route template in key syntax: parameters as ``{name}``, a leading ``/``."""
    text = _TEMPLATE_PARAM_RE.sub(lambda m: "{" + (m[1] or m[2]) + "}", template)
    return text if text.startswith("/") else "/" + text


@dataclass(frozen=True, slots=True)
class AppRoute:
    """One route of the framework app behind a route table, as :func:`check_routes_exist` sees
    it.

    :param template: its path, parameters written ``{name}``, ``{name:int}`` or ``<int:name>``.
    :param methods: the methods it answers (``None``: any).
    :param matches: the framework's own matcher, ``matches(method, path)``, when there is one
        (it also knows mounts and regular expressions).
    """

    template: str
    methods: frozenset[str] | None = None
    matches: Callable[[str, str], bool] | None = None
    as_key: str = field(init=False, default="")
    """``template`` in key syntax (see :func:`_key_template`), computed once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_key", _key_template(self.template) if self.template else "")

    def covers(self, entry: _Entry) -> bool:
        """Whether the key's pattern covers this route's template (parameters standing for
        themselves): ``"/items/{id}"`` covers ``"/items/<int:pk>"``."""
        if not self.as_key or not self._methods_meet(entry):
            return False
        return bool(entry.regex.match(self.as_key))

    def _methods_meet(self, entry: _Entry) -> bool:
        return (
            entry.methods is None
            or self.methods is None
            or bool((entry.methods - {"HEAD"}) & self.methods)
        )


def _routed(entry: _Entry, matcher: Callable[[str, str], bool]) -> bool:
    """Whether the framework routes a concrete path of the key somewhere."""
    methods = sorted(entry.methods - {"HEAD"}) if entry.methods else ["GET"]
    for path in _sample_paths(entry.path, "1", "x"):
        for variant in {path, path.rstrip("/") or "/", path.rstrip("/") + "/"}:
            if any(matcher(method, variant) for method in methods):
                return True
    return False


def check_routes_exist(table: RouteTable, app_routes: Iterable[AppRoute], where: str) -> None:
    """Raise :class:`ConfigurationError` naming every key of ``table`` that matches none of
    ``app_routes`` (the routes of ``where``, e.g. "the Starlette app"), with the closest route
    as a suggestion. A misspelt key would otherwise leave the real route free."""
    known = list(app_routes)
    matchers: dict[int, Callable[[str, str], bool]] = {}
    for route in known:
        if route.matches is not None:
            matchers.setdefault(id(route.matches), route.matches)  # one call per matcher
    # Suggestions are written as keys are: "/items/<int:pk>" is offered as "/items/{pk}".
    templates = sorted({r.as_key for r in known if r.as_key})
    problems = []
    for entry in table._entries:
        if any(route.covers(entry) for route in known):
            continue
        if any(_routed(entry, matcher) for matcher in matchers.values()):
            continue
        close = difflib.get_close_matches(entry.path, templates, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"route {entry.key!r} matches no route of {where}{hint}")
    if problems:
        raise ConfigurationError(
            "; ".join(problems) + ": a key that matches nothing leaves the route it meant free"
        )
