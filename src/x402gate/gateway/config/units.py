"""Route prices for the units of AI APIs in a gateway file: images, speech, transcription and
embeddings, and the built-in model price table (``price_table: builtin``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...errors import ConfigurationError
from ...pricing import PriceStrategy
from .._yaml import Loc
from .errors import Problems
from .schema import RouteSpec

__all__ = ["REFUSE", "UNIT_KEYS", "UnitCompiler"]

REFUSE = "refuse"
"""``fallback: refuse``: a model without a price is answered 400 (the default)."""

UNIT_KEYS: dict[str, set[str]] = {
    "images": {
        "sizes",
        "models",
        "default_size",
        "default_quality",
        "max_images",
        "model_field",
    },
    "speech": {"price", "models", "fallback", "per", "max_characters", "model_field"},
    "transcription": {
        "price",
        "models",
        "fallback",
        "per",
        "min_bitrate",
        "max_seconds",
        "other_formats",
    },
    "embeddings": {
        "price",
        "models",
        "fallback",
        "per",
        "price_table",
        "bytes_per_token",
        "max_input_tokens",
        "model_field",
    },
}
"""The price keys each unit route type takes."""

METERED_UNITS = ("images", "embeddings")
"""Unit route types charged from the answer (speech and transcription are priced whole from
the request)."""


class UnitCompiler:
    """Compiles the unit route types, adding each mistake to ``problems``."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def _add(self, loc: Loc, message: str) -> None:
        self.problems.add(loc, message)

    def _build(
        self, loc: Loc, spec: RouteSpec, first_key: str, build: Callable[[], PriceStrategy]
    ) -> PriceStrategy | None:
        """``build()``, its mistake reported on the field it names (``model 'x': ...`` on
        ``models.x``, ``fallback: ...`` on ``fallback``), else on ``first_key``."""
        try:
            return build()
        except ConfigurationError as exc:
            message = str(exc)
            where: Loc = (*loc, first_key)
            for model in spec.models or {}:
                prefix = f"model {model!r}: "
                if message.startswith(prefix):
                    where, message = (*loc, "models", model), message.removeprefix(prefix)
                    break
            else:
                if message.startswith("fallback: "):
                    where = (*loc, "fallback" if spec.fallback is not None else first_key)
                    message = message.removeprefix("fallback: ")
                else:
                    for name in ("per", "model_field", "bytes_per_token", "min_bitrate"):
                        if message.startswith(name) and name in spec.model_fields_set:
                            where = (*loc, name)
            self._add(where, message)
            return None

    def _one_price(self, loc: Loc, spec: RouteSpec) -> bool:
        """A single ``price`` excludes ``models`` and ``fallback``; something must price."""
        if spec.price is not None and (spec.models or spec.fallback is not None):
            self._add((*loc, "price"), "one price for every model, or models and a fallback")
            return False
        priced = spec.price is not None or spec.models or spec.price_table is not None
        if not priced and spec.fallback in (None, REFUSE):
            self._add((*loc, "price"), f"a route of type {spec.type} needs a price or models")
            return False
        return True

    def _unit(self, loc: Loc, spec: RouteSpec) -> PriceStrategy | None:
        from ...metering import PerAudioSecond, PerCharacter, PerImage, PerInputToken

        kind = spec.type
        if kind in METERED_UNITS and spec.settlement == "before":
            self._add(
                (*loc, "settlement"),
                f"{kind} routes are charged what the answer holds, settled when it starts: "
                "'before' is not available",
            )
            return None
        fallback = None if spec.fallback == REFUSE else spec.fallback
        if kind == "images":
            if spec.sizes is None and not spec.models:
                self._add((*loc, "sizes"), "an images route needs sizes (or models)")
                return None
            return self._build(
                loc,
                spec,
                "sizes",
                lambda: PerImage(
                    spec.sizes,
                    models=spec.models,
                    default_size=spec.default_size or "1024x1024",
                    default_quality=spec.default_quality or "standard",
                    max_images=spec.max_images or 10,
                    model_field=spec.model_field,
                ),
            )
        if not self._one_price(loc, spec):
            return None
        if kind == "speech":
            return self._build(
                loc,
                spec,
                "price",
                lambda: PerCharacter(
                    spec.price,
                    models=spec.models,
                    fallback=fallback,
                    per=spec.per or 1_000_000,
                    max_characters=spec.max_characters,
                    model_field=spec.model_field,
                ),
            )
        if kind == "transcription":
            return self._build(
                loc,
                spec,
                "price",
                lambda: PerAudioSecond(
                    spec.price,
                    models=spec.models,
                    fallback=fallback,
                    per=spec.per or 60,
                    min_bitrate=spec.min_bitrate or 8_000,
                    max_seconds=spec.max_seconds,
                    other_formats=spec.other_formats or "size",
                ),
            )
        models: Mapping[str, Any] | None = spec.models
        if spec.price_table is not None:
            models = builtin_models(spec.models, "embedding")
        return self._build(
            loc,
            spec,
            "price",
            lambda: PerInputToken(
                spec.price,
                models=models,
                fallback=fallback,
                per=spec.per or 1_000_000,
                bytes_per_token=spec.bytes_per_token,
                max_input_tokens=spec.max_input_tokens,
                model_field=spec.model_field,
            ),
        )


def builtin_models(overrides: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    """The route's own ``models`` first (exact names and globs win over the table's), then the
    built-in table's rows of ``kind``."""
    from ...metering import builtin_prices

    table = builtin_prices().token_prices("embedding" if kind == "embedding" else "text")
    merged: dict[str, Any] = dict(overrides or {})
    for model, price in table.items():
        merged.setdefault(model, price)
    return merged
