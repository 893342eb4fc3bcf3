"""Prices looked up by model name: exact names first, then globs in order, then a fallback."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ..errors import ConfigurationError, PaymentError
from ..pricing.fields import RequestField
from ..pricing.strategy import NO_PRICE_CODE
from ..request import RequestInfo

__all__ = ["ByModel", "bad_request"]

T = TypeVar("T")


def bad_request(message: str) -> PaymentError:
    """A request that cannot be priced: 400 ``no_price_for_request``."""
    return PaymentError(400, NO_PRICE_CODE, message)


class ByModel(Generic[T]):
    """A table of model name (or glob) to a price of any kind, with an optional fallback.

    ``parse`` turns each configured value into the price (raising
    :class:`~x402gate.errors.ConfigurationError` for a bad one); the model is read from
    ``model_field`` of the request (``body.model``), or given by the caller.
    """

    __slots__ = ("exact", "fallback", "field", "globs")

    def __init__(
        self,
        prices: Mapping[str, Any] | None,
        fallback: Any,
        parse: Callable[[Any], T],
        *,
        model_field: str = "body.model",
    ) -> None:
        self.exact: dict[str, T] = {}
        self.globs: list[tuple[re.Pattern[str], T]] = []
        for model, value in (prices or {}).items():
            if not isinstance(model, str) or not model:
                raise ConfigurationError(f"model names must be non-empty strings, got {model!r}")
            try:
                parsed = parse(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"model {model!r}: {exc}") from None
            self.exact[model] = parsed
            if any(char in model for char in "*?["):
                self.globs.append((re.compile(fnmatch.translate(model)), parsed))
        try:
            self.fallback = None if fallback is None else parse(fallback)
        except ConfigurationError as exc:
            raise ConfigurationError(f"fallback: {exc}") from None
        if not self.exact and self.fallback is None:
            raise ConfigurationError("give a price, models or a fallback")
        self.field = RequestField(model_field)

    def find(self, model: str | None) -> T | None:
        """The price of ``model`` (or the fallback), ``None`` when there is none."""
        if model is not None:
            price = self.exact.get(model)
            if price is not None:
                return price
            for glob, candidate in self.globs:
                if glob.match(model):
                    return candidate
        return self.fallback

    def for_model(self, model: str | None) -> T:
        """:meth:`find`, or 400 ``no_price_for_request`` when no price applies."""
        price = self.find(model)
        if price is not None:
            return price
        if model is None:
            raise bad_request("the request names no model")
        raise bad_request("the requested model has no price on this endpoint")

    def for_request(self, request: RequestInfo) -> T:
        """The price of the model the request names in ``model_field``."""
        model = self.field.read(request) if self.exact else None
        if model is None and self.fallback is None:
            raise bad_request(f"the request names no model (expected in {self.field.path})")
        return self.for_model(model)
