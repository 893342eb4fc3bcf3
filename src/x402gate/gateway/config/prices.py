"""Route prices in a gateway file: flat, match rules, model tables and per-token prices (the
units of AI APIs and the built-in price table: :mod:`.units`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import ConfigurationError
from ...money import PriceLike, parse_price
from ...pricing import MatchRules, ModelTable, PriceStrategy, Rule
from .._yaml import Loc
from .errors import Problems
from .schema import RouteSpec
from .units import REFUSE, UNIT_KEYS, UnitCompiler, builtin_models

__all__ = ["PriceCompiler"]


class PriceCompiler(UnitCompiler):
    """Compiles the price fields of a route, adding each mistake to ``problems``."""

    def __init__(self, problems: Problems) -> None:
        super().__init__(problems)

    def _price(self, loc: Loc, value: Any) -> PriceLike | None:
        """The price as written once it is known to be valid (strategies parse it themselves:
        an ``int`` there means whole dollars, so micro-dollars must not be passed on)."""
        if isinstance(value, Mapping):
            self._add(
                loc,
                "expected one price ('$0.01'); input/output token prices need type: per-token",
            )
            return None
        try:
            parse_price(value)
        except ConfigurationError as exc:
            self._add(loc, str(exc))
            return None
        return value  # type: ignore[no-any-return]

    def _pricing(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        kind = spec.type
        if kind == "token-based" and spec.price_table is not None:
            kind = "per-token"  # the table's prices are per token: the usage is charged
        if kind is None:
            if spec.match is not None:
                kind = "match"
            elif spec.price_table is not None:
                kind = "per-token"
            elif spec.price is not None:
                kind = "flat"
            else:
                self._add(
                    loc,
                    "no price: give price, match rules, or type: token-based / per-token with "
                    "models",
                )
                return None
        allowed = {
            "flat": {"price"},
            "match": {"match", "fallback"},
            "token-based": {"models", "fallback", "model_field"},
            "per-token": {
                "price",
                "models",
                "fallback",
                "model_field",
                "credit_topup",
                "max_input_tokens",
                "max_output_tokens",
                "max_price",
                "bytes_per_token",
                "price_table",
            },
            **UNIT_KEYS,
        }[kind]
        priced = (
            "price",
            "match",
            "models",
            "fallback",
            "model_field",
            "credit_topup",
            "max_input_tokens",
            "max_output_tokens",
            "max_price",
            "bytes_per_token",
            *sorted(set().union(*UNIT_KEYS.values()) - {"price", "models", "fallback"}),
        )
        stray = [name for name in priced if name in spec.model_fields_set and name not in allowed]
        for name in stray:
            self._add((*loc, name), f"not used by a {kind} route")
        if stray:
            return None
        if kind == "flat":
            if spec.price is None:
                self._add((*loc, "price"), "a flat route needs a price")
                return None
            amount = self._price((*loc, "price"), spec.price)
            return None if amount is None else _flat(amount)
        if kind == "match":
            return self._match(loc, spec)
        if kind == "token-based":
            return self._model_table(loc, spec)
        if kind in UNIT_KEYS:
            return self._unit(loc, spec)
        return self._per_token(loc, spec)

    def _match(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        if not spec.match:
            self._add((*loc, "match"), "a match route needs at least one rule")
            return None
        rules: list[Rule] = []
        for index, item in enumerate(spec.match):
            amount = self._price((*loc, "match", index, "price"), item.price)
            try:
                # A bad price was reported above; the conditions are still worth checking.
                rule = Rule(price=amount if amount is not None else 1, when=item.when)
            except ConfigurationError as exc:
                self._add((*loc, "match", index, "when"), str(exc))
                continue
            if amount is not None:
                rules.append(rule)
        fallback = None
        if spec.fallback is not None:
            fallback = self._price((*loc, "fallback"), spec.fallback)
            if fallback is None:
                return None
        if len(rules) != len(spec.match):
            return None
        return MatchRules(rules, fallback=fallback)

    def _model_table(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        prices: dict[str, PriceLike] = {}
        failed = False
        for model, value in (spec.models or {}).items():
            amount = self._price((*loc, "models", model), value)
            failed = failed or amount is None
            if amount is not None:
                prices[model] = amount
        fallback = None
        if spec.fallback is not None:
            fallback = self._price((*loc, "fallback"), spec.fallback)
            failed = failed or fallback is None
        if failed:
            return None
        if not prices and fallback is None:
            self._add((*loc, "models"), "a token-based route needs models (or a fallback price)")
            return None
        try:
            return ModelTable(prices, fallback=fallback, field=spec.model_field)
        except ConfigurationError as exc:
            self._add((*loc, "model_field"), str(exc))
            return None

    def _per_token(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        from ...metering import PerToken, TokenPrice

        if spec.settlement == "before":
            self._add(
                (*loc, "settlement"),
                "per-token routes settle when the answer starts; 'before' is not available",
            )
            return None
        failed = False

        def token_price(where: Loc, value: Any) -> TokenPrice | None:
            nonlocal failed
            try:
                return TokenPrice.of(value)
            except ConfigurationError as exc:
                self._add(where, str(exc))
                failed = True
                return None

        table: dict[str, TokenPrice] = {}
        for model, value in (spec.models or {}).items():
            price = token_price((*loc, "models", model), value)
            if price is not None:
                table[model] = price
        if spec.price_table is not None:
            table = builtin_models(table, "text")
        fallback = None
        if spec.fallback is not None and spec.fallback != REFUSE:
            fallback = token_price((*loc, "fallback"), spec.fallback)
        single = None
        if spec.price is not None:
            if spec.models or spec.fallback is not None or spec.price_table is not None:
                self._add(
                    (*loc, "price"),
                    "one price for every model, or models and a fallback: not both",
                )
                return None
            single = token_price((*loc, "price"), spec.price)
        max_price = None
        if spec.max_price is not None:
            max_price = self._price((*loc, "max_price"), spec.max_price)
            failed = failed or max_price is None
        if failed:
            return None
        if single is None and not table and fallback is None:
            self._add((*loc, "models"), "a per-token route needs models, a fallback or a price")
            return None
        try:
            return PerToken(
                single if single is not None else table,
                fallback=fallback,
                max_input_tokens=spec.max_input_tokens,
                max_output_tokens=spec.max_output_tokens,
                max_price=max_price,
                model_field=spec.model_field,
                bytes_per_token=spec.bytes_per_token,
            )
        except ConfigurationError as exc:
            field_name = "model_field" if "field" in str(exc) else "models"
            self._add((*loc, field_name), str(exc))
            return None


def _flat(amount: PriceLike) -> PriceStrategy:
    from ...pricing import Flat

    return Flat(amount)
