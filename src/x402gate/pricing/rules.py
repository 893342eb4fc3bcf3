"""Table strategies: ordered rules over the request (:class:`MatchRules`) and a price per model
(:class:`ModelTable`).

Field paths and patterns are those of :mod:`x402gate.pricing.fields`. No rule, model or fallback
for a request is answered 400 ``no_price_for_request``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigurationError, PaymentError
from ..money import PriceLike, format_usd, parse_price
from ..request import RequestInfo
from .fields import Condition, PatternLike, RequestField
from .strategy import NO_PRICE_CODE, PriceStrategy

__all__ = ["MatchRules", "ModelTable", "Rule"]


class Rule:
    """One pricing rule: all conditions must match (AND), then ``price`` applies.

    Conditions are globs (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[abc]``; case-sensitive)
    over field paths, given in ``when`` or as keywords, where ``__`` stands for ``.``
    (``body__model`` is ``body.model``). A list of patterns matches any of them; ``True``,
    ``False``, ``None`` and numbers match the JSON value. A rule without conditions matches every
    request.

    >>> Rule(price="$0.01", method="GET")
    Rule(price='$0.01', when={'method': 'GET'})
    >>> Rule(price="$0.20", when={"body.model": "claude-3-opus*", "body.stream": True}).price
    200000
    """

    __slots__ = ("_conditions", "price", "when")

    def __init__(
        self,
        price: PriceLike,
        when: Mapping[str, PatternLike] | None = None,
        **conditions: PatternLike,
    ) -> None:
        merged: dict[str, Any] = {}
        if when is not None:
            if not isinstance(when, Mapping):
                raise ConfigurationError(
                    f"rule conditions must be a mapping of field to pattern, got {when!r}"
                )
            merged.update(when)
        for key, pattern in conditions.items():
            path = key.replace("__", ".")
            if path in merged:
                raise ConfigurationError(f"rule gives field {path!r} twice")
            merged[path] = pattern
        self.price = parse_price(price)
        self.when: dict[str, Any] = merged
        self._conditions = tuple(Condition(path, pattern) for path, pattern in merged.items())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """A rule from ``{"match": {field: pattern, ...}, "price": ...}`` (``when`` also works).

        >>> Rule.from_dict({"match": {"query.tier": "pro"}, "price": "$0.10"}).price
        100000
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a rule must be a mapping, got {data!r}")
        unknown = set(data) - {"match", "when", "price"}
        if unknown:
            raise ConfigurationError(
                f"unknown rule key(s) {sorted(map(str, unknown))}: a rule has 'match' and 'price'"
            )
        if "price" not in data:
            raise ConfigurationError("rule has no 'price'")
        if "match" in data and "when" in data:
            raise ConfigurationError("rule gives both 'match' and 'when': use one")
        when = data.get("match", data.get("when"))
        return cls(data["price"], {} if when is None else when)

    def matches(self, request: RequestInfo) -> bool:
        """True when every condition matches the request."""
        return all(condition.matches(request) for condition in self._conditions)

    def __repr__(self) -> str:
        return f"Rule(price={format_usd(self.price)!r}, when={self.when!r})"


class MatchRules(PriceStrategy):
    """Ordered rules, first match wins; ``fallback`` prices requests no rule matches.

    Rules are :class:`Rule` objects or dicts ``{"match": {...}, "price": ...}``. Every price and
    pattern is checked here, at construction. Without a fallback an unmatched request is answered
    400 ``no_price_for_request``.

    >>> pricing = MatchRules(
    ...     [
    ...         Rule(price="$0.20", body__model="claude-3-opus*"),
    ...         {"match": {"body.model": "claude-3-5-*", "header.x-tier": "batch"},
    ...          "price": "$0.02"},
    ...         Rule(price="$0.05", body__model="claude-3-5-*"),
    ...     ],
    ...     fallback="$0.10",
    ... )
    >>> pricing.quote(RequestInfo("POST", "/v1/messages", body=b'{"model": "claude-3-5-haiku"}'))
    50000
    """

    __slots__ = ("fallback", "rules")

    def __init__(
        self,
        rules: Iterable[Rule | Mapping[str, Any]],
        fallback: PriceLike | None = None,
    ) -> None:
        if isinstance(rules, str | bytes | Mapping) or not isinstance(rules, Iterable):
            raise ConfigurationError(f"rules must be a list of rules, got {rules!r}")
        built: list[Rule] = []
        for index, rule in enumerate(rules):
            if isinstance(rule, Rule):
                built.append(rule)
                continue
            try:
                built.append(Rule.from_dict(rule))
            except ConfigurationError as exc:
                raise ConfigurationError(f"rule {index}: {exc}") from None
        if not built:
            raise ConfigurationError("MatchRules needs at least one rule (use Flat for one price)")
        self.rules: tuple[Rule, ...] = tuple(built)
        self.fallback = _parse_fallback(fallback)

    def quote(self, request: RequestInfo) -> int:
        for rule in self.rules:
            if rule.matches(request):
                return rule.price
        if self.fallback is not None:
            return self.fallback
        raise PaymentError(400, NO_PRICE_CODE, "no pricing rule matches this request")

    def describe(self) -> dict[str, Any]:
        # Only the range: rules may test headers (API tiers, keys) that are not for publishing.
        return {"type": "match", **_price_range([rule.price for rule in self.rules], self.fallback)}

    def __repr__(self) -> str:
        return f"MatchRules({list(self.rules)!r}, fallback={_usd_or_none(self.fallback)!r})"


class ModelTable(PriceStrategy):
    """Price by model name: an exact name first, then glob keys in insertion order, then fallback.

    The model is read from ``field`` (any field path, ``body.model`` by default). A request that
    names no model or an unpriced one without a fallback is answered 400 ``no_price_for_request``.

    >>> table = ModelTable({"gpt-4o": "$0.05", "gpt-4o-mini": "$0.005", "gpt-4*": "$0.08"})
    >>> table.quote(RequestInfo("POST", "/v1/chat/completions", body=b'{"model": "gpt-4.1"}'))
    80000
    """

    __slots__ = ("_exact", "_globs", "fallback", "field")

    def __init__(
        self,
        prices: Mapping[str, PriceLike],
        *,
        fallback: PriceLike | None = None,
        field: str = "body.model",
    ) -> None:
        if not isinstance(prices, Mapping):
            raise ConfigurationError(
                f"ModelTable needs a mapping of model to price, got {prices!r}"
            )
        if not prices and fallback is None:
            raise ConfigurationError("ModelTable needs at least one model or a fallback")
        self.field = RequestField(field)
        self._exact: dict[str, int] = {}
        self._globs: list[tuple[re.Pattern[str], int]] = []
        for model, price in prices.items():
            if not isinstance(model, str) or not model:
                raise ConfigurationError(f"model names must be non-empty strings, got {model!r}")
            try:
                amount = parse_price(price)
            except ConfigurationError as exc:
                raise ConfigurationError(f"model {model!r}: {exc}") from None
            self._exact[model] = amount
            if any(char in model for char in "*?["):
                self._globs.append((re.compile(fnmatch.translate(model)), amount))
        self.fallback = _parse_fallback(fallback)

    def quote(self, request: RequestInfo) -> int:
        model = self.field.read(request)
        if model is not None:
            price = self._exact.get(model)
            if price is not None:
                return price
            for glob, amount in self._globs:
                if glob.match(model):
                    return amount
        if self.fallback is not None:
            return self.fallback
        if model is None:
            message = f"the request names no model (expected in {self.field.path})"
        else:
            message = "the requested model has no price on this endpoint"
        raise PaymentError(400, NO_PRICE_CODE, message)

    @property
    def prices(self) -> dict[str, int]:
        """Model name or glob to micro-dollars, in lookup order for globs."""
        return dict(self._exact)

    def describe(self) -> dict[str, Any]:
        # Model prices are the public menu: publishing them lets agents choose before paying.
        summary: dict[str, Any] = {
            "type": "model_table",
            "field": self.field.path,
            "models": {model: format_usd(amount) for model, amount in self._exact.items()},
        }
        summary.update(_price_range(list(self._exact.values()), self.fallback))
        return summary

    def __repr__(self) -> str:
        models = {model: format_usd(amount) for model, amount in self._exact.items()}
        return f"ModelTable({models!r}, fallback={_usd_or_none(self.fallback)!r})"


# --- helpers ---------------------------------------------------------------------------------


def _price_range(amounts: list[int], fallback: int | None) -> dict[str, str]:
    every = amounts + ([] if fallback is None else [fallback])
    summary = {"min": format_usd(min(every)), "max": format_usd(max(every))}
    if fallback is not None:
        summary["fallback"] = format_usd(fallback)
    return summary


def _parse_fallback(fallback: PriceLike | None) -> int | None:
    if fallback is None:
        return None
    try:
        return parse_price(fallback)
    except ConfigurationError as exc:
        raise ConfigurationError(f"fallback: {exc}") from None


def _usd_or_none(amount: int | None) -> str | None:
    return None if amount is None else format_usd(amount)
