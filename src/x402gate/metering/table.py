"""The built-in model price table: per-token prices of common Anthropic, OpenAI and Google models.

The table ships in the package (``models.json``, versioned: :attr:`PriceTable.version` changes
whenever a figure does) so a reseller can price LLM calls without writing rules::

    pricing = PerToken(builtin_prices().token_prices(), max_input_tokens=200_000)

Every row names its model (an exact name or a glob: ``"gpt-4o-mini*"`` also prices dated
snapshots), its provider, its kind (``text``: input and output prices; ``embedding``: input
only), its input and output prices as whole micro-dollars per million tokens, the public page it
was read from and the date it was read. Rows are ordered so that a specific glob comes before a
broader one (``gpt-4o-mini*`` before ``gpt-4o*``): lookups take exact names first, then the first
matching glob, as :class:`~x402gate.metering.PerToken` does.

The figures are list prices as published; a provider may change them at any time. Override a
row per route (``models:`` in a gateway file, or in Python a mapping merged over the table's:
``{**table.token_prices(), "gpt-4o*": TokenPrice(...)}``), and check ``x402gate prices``
against the sources.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from ..errors import ConfigurationError
from .prices import TokenPrice

__all__ = ["PER_MILLION", "ModelPrice", "PriceTable", "builtin_prices"]

PER_MILLION = 1_000_000
"""Tokens per price unit of the table: providers list prices per million tokens."""

Kind = Literal["text", "embedding"]
_KINDS = ("text", "embedding")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One row of the table: prices in micro-dollars per million tokens."""

    model: str
    provider: str
    kind: Kind
    input: int
    output: int
    source: str
    read: str

    def __post_init__(self) -> None:
        where = f"model price {self.model!r}"
        if not isinstance(self.model, str) or not self.model:
            raise ConfigurationError(f"{where}: a model name or glob is required")
        if self.kind not in _KINDS:
            raise ConfigurationError(f"{where}: kind must be one of {_KINDS}, got {self.kind!r}")
        if not _positive_int(self.input):
            raise ConfigurationError(f"{where}: input must be a positive int of micro-dollars")
        if self.kind == "text" and not _positive_int(self.output):
            raise ConfigurationError(f"{where}: output must be a positive int of micro-dollars")
        if self.kind == "embedding" and self.output != 0:
            raise ConfigurationError(f"{where}: an embedding model has no output price")
        if not isinstance(self.source, str) or not self.source.startswith("https://"):
            raise ConfigurationError(f"{where}: source must be an https:// URL")
        if not isinstance(self.read, str) or not _DATE.match(self.read):
            raise ConfigurationError(f"{where}: read must be a YYYY-MM-DD date")

    @property
    def is_glob(self) -> bool:
        return any(char in self.model for char in "*?[")

    def token_price(self) -> TokenPrice:
        """This row as a :class:`TokenPrice` per million tokens."""
        return TokenPrice(input=_micros(self.input), output=_micros(self.output), per=PER_MILLION)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "kind": self.kind,
            "input": self.input,
            "output": self.output,
            "source": self.source,
            "read": self.read,
        }


def _micros(amount: int) -> str:
    """An amount of micro-dollars as an exact dollar string (``TokenPrice`` parses dollars)."""
    whole, fraction = divmod(amount, 1_000_000)
    return f"${whole}.{fraction:06d}"


@dataclass(frozen=True, slots=True)
class PriceTable:
    """A versioned, ordered table of model prices (see the module documentation)."""

    version: str
    rows: tuple[ModelPrice, ...]
    note: str = ""

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> PriceTable:
        """A table from its JSON document (the shape of the built-in ``models.json``)."""
        if document.get("format") != 1:
            raise ConfigurationError('a price table needs "format": 1')
        version = document.get("version")
        if not isinstance(version, str) or not version:
            raise ConfigurationError("a price table needs a version string")
        items = document.get("models")
        if not isinstance(items, list) or not items:
            raise ConfigurationError("a price table needs a non-empty list of models")
        rows = []
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, Mapping):
                raise ConfigurationError(f"a price table row must be an object, got {item!r}")
            try:
                row = ModelPrice(**item)
            except TypeError as exc:
                raise ConfigurationError(f"price table row {item!r}: {exc}") from None
            if row.model in seen:
                raise ConfigurationError(f"price table: {row.model!r} is listed twice")
            seen.add(row.model)
            rows.append(row)
        return cls(version=version, rows=tuple(rows), note=str(document.get("note", "")))

    def __iter__(self) -> Iterator[ModelPrice]:
        return iter(self.rows)

    def lookup(self, model: str, kind: Kind | None = None) -> ModelPrice | None:
        """The row pricing ``model``: an exact name first, then the first matching glob."""
        rows = [row for row in self.rows if kind is None or row.kind == kind]
        for row in rows:
            if row.model == model:
                return row
        for row in rows:
            if row.is_glob and fnmatch.fnmatchcase(model, row.model):
                return row
        return None

    def token_prices(self, kind: Kind = "text") -> dict[str, TokenPrice]:
        """The rows of one kind as a mapping for :class:`~x402gate.metering.PerToken`, in
        order (an embedding row's output price is zero)."""
        return {row.model: row.token_price() for row in self.rows if row.kind == kind}

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "version": self.version,
            "unit": "micro-dollars per 1,000,000 tokens",
            "note": self.note,
            "models": [row.as_dict() for row in self.rows],
        }


@functools.cache
def builtin_prices() -> PriceTable:
    """The table shipped in this package (loaded once)."""
    text = resources.files(__package__).joinpath("models.json").read_text("utf-8")
    return PriceTable.from_json(json.loads(text))
