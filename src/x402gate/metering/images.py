"""Image generation priced per image by size and quality, confirmed from the answer.

:class:`PerImage` quotes ``n`` images of the request's ``size`` and ``quality`` (OpenAI's
``POST /v1/images/generations`` body) and charges the images the answer returned, counted by
:class:`ImageCountMeter` as the bytes pass: an answer with fewer images (a content filter took
one out) costs less, never more than the quote. Pure: no I/O, no clock, no framework.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import ConfigurationError
from ..money import format_usd, parse_price
from ..pricing.strategy import PriceStrategy
from ..request import RequestInfo
from ._models import ByModel, bad_request
from .usage import JSONUsageMeter, Usage, UsageMeter, _is_count

__all__ = ["ImageCountMeter", "PerImage"]

ANY = "*"
"""The key of a size or quality table that prices every other size or quality."""

_MAX_KEY = 16  # bytes of a key kept while scanning: enough to recognize "data"


class _SizeTable:
    """Size → quality → micro-dollars, each level with an optional ``"*"`` default."""

    __slots__ = ("sizes",)

    def __init__(self, value: Any) -> None:
        if not isinstance(value, Mapping) or not value:
            raise ConfigurationError(
                "expected a table of size to price, e.g. {'1024x1024': '$0.04'} "
                "or {'1024x1024': {'standard': '$0.04', 'hd': '$0.08'}}"
            )
        self.sizes: dict[str, dict[str, int]] = {}
        for size, price in value.items():
            if not isinstance(size, str) or not size:
                raise ConfigurationError(f"sizes are strings such as '1024x1024', got {size!r}")
            qualities = price if isinstance(price, Mapping) else {ANY: price}
            if not qualities:
                raise ConfigurationError(f"size {size!r}: no price")
            table: dict[str, int] = {}
            for quality, amount in qualities.items():
                if not isinstance(quality, str) or not quality:
                    raise ConfigurationError(f"size {size!r}: qualities are strings")
                try:
                    table[quality] = parse_price(amount)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"size {size!r}, {quality}: {exc}") from None
            self.sizes[size] = table

    def price(self, size: str, quality: str) -> int | None:
        qualities = self.sizes.get(size, self.sizes.get(ANY))
        if qualities is None:
            return None
        return qualities.get(quality, qualities.get(ANY))

    def describe(self) -> dict[str, Any]:
        return {
            size: {quality: format_usd(amount) for quality, amount in qualities.items()}
            for size, qualities in self.sizes.items()
        }


def _text(body: Mapping[str, Any], name: str, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value or len(value) > 64:
        raise bad_request(f"{name} must be a short string")
    return value


class PerImage(PriceStrategy):
    """A price per generated image, by the request's ``size`` and ``quality``.

    ``sizes`` maps a size (``"1024x1024"``, or ``"*"`` for any other) to a price, or to a table
    of quality (``"standard"``, ``"hd"``, ``"low"``..., or ``"*"``) to price; ``models`` maps a
    model name or glob to such a table, for the models whose prices differ (``sizes`` then
    prices the others, as a fallback). A request without ``size`` or ``quality`` is priced at
    ``default_size`` and ``default_quality`` (the provider's defaults); one without ``n`` makes
    one image; ``n`` above ``max_images`` or a size or quality with no price is answered 400.

    **Quote**: ``n`` times the image price. **Charge**: the images the answer returned
    (:class:`ImageCountMeter` counts the items of its ``data`` list), at most ``n``; an answer
    whose images could not be counted costs the quote.

    >>> pricing = PerImage({"1024x1024": {"standard": "$0.04", "hd": "$0.08"}, "*": "$0.12"})
    >>> request = RequestInfo("POST", "/v1/images/generations",
    ...     body=b'{"model": "dall-e-3", "prompt": "a fox", "n": 2, "quality": "hd"}')
    >>> pricing.quote(request)
    160000
    >>> pricing.charge(Usage(images=1), request), pricing.charge(None, request)
    (80000, 160000)
    """

    __slots__ = ("default_quality", "default_size", "max_images", "table")

    metered: ClassVar[bool] = True

    def __init__(
        self,
        sizes: Mapping[str, Any] | None = None,
        *,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        default_size: str = "1024x1024",
        default_quality: str = "standard",
        max_images: int = 10,
        model_field: str = "body.model",
    ) -> None:
        self.table: ByModel[_SizeTable] = ByModel(
            models, sizes, _SizeTable, model_field=model_field
        )
        for name, value in (("default_size", default_size), ("default_quality", default_quality)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
        if not _is_count(max_images) or max_images < 1:
            raise ConfigurationError(f"max_images must be a positive int, got {max_images!r}")
        self.default_size = default_size
        self.default_quality = default_quality
        self.max_images = max_images

    def _terms(self, request: RequestInfo) -> tuple[int, int]:
        """The price of one image and the number of images asked for."""
        body = request.json()
        if not isinstance(body, dict):
            raise bad_request("an image request is a JSON object")
        count = body.get("n")
        if count is None:
            count = 1
        elif not _is_count(count) or count < 1:
            raise bad_request("n must be a positive integer")
        if count > self.max_images:
            raise bad_request(f"n is at most {self.max_images} on this endpoint")
        table = self.table.for_request(request)
        size = _text(body, "size", self.default_size)
        quality = _text(body, "quality", self.default_quality)
        price = table.price(size, quality)
        if price is None:
            raise bad_request("the requested size and quality have no price on this endpoint")
        return price, count

    def quote(self, request: RequestInfo) -> int:
        price, count = self._terms(request)
        return price * count

    def charge(self, usage: Usage | None, request: RequestInfo | None = None) -> int:
        """The images the answer returned, at most the ``n`` quoted; ``None``: the quote."""
        if request is None:
            raise TypeError("PerImage.charge needs the request it quoted: charge(usage, request)")
        price, count = self._terms(request)
        if usage is None or usage.images is None:
            return price * count
        return price * min(usage.images, count)

    def meter(self, content_type: str | None) -> UsageMeter:
        """Counts the images of a JSON answer (see :class:`ImageCountMeter`)."""
        return ImageCountMeter()

    def describe(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "type": "per_image",
            "default_size": self.default_size,
            "default_quality": self.default_quality,
            "max_images": self.max_images,
        }
        if self.table.exact:
            summary["models"] = {m: t.describe() for m, t in self.table.exact.items()}
        if self.table.fallback is not None:
            summary["sizes"] = self.table.fallback.describe()
        return summary


_OUTSIDE = re.compile(rb'[{}\[\]",:]')
_INSIDE = re.compile(rb'["\\]')


class ImageCountMeter:
    """Counts the objects of the top-level ``data`` list of a JSON answer, as it streams.

    Memory is constant whatever the answer's size (base64 images are megabytes): strings are
    skipped with a search for their end, and only the first bytes of a top-level key are kept.
    The usage is ``Usage(images=count)`` once the answer ended with its ``data`` list closed,
    otherwise ``None`` (the charge is then the quote). The answer's ``usage`` object, when
    small enough to be read, fills the token counts too.

    >>> meter = ImageCountMeter()
    >>> meter.feed(b'{"created": 1, "data": [{"b64_json": "aGk="}, {"url": "https://')
    >>> meter.feed(b'x.test/a.png?q=[1]"}]}')
    >>> meter.close(); meter.usage
    Usage(input_tokens=None, output_tokens=None, seconds=None, model=None, images=2)
    """

    __slots__ = (
        "_count",
        "_data_depth",
        "_depth",
        "_done",
        "_escape",
        "_in_string",
        "_key",
        "_last_string",
        "_pending_key",
        "_tokens",
    )

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._key = bytearray()  # the first bytes of the string being read at depth 1
        self._last_string: bytes | None = None  # the string just closed at depth 1
        self._pending_key: bytes | None = None  # the key whose value comes next
        self._data_depth = 0  # depth of the data list's items' container, 0 when outside
        self._count = 0
        self._done = False  # the data list closed
        self._tokens = JSONUsageMeter(max_body_bytes=1, tail_bytes=16 << 10)

    def feed(self, chunk: bytes) -> None:
        self._tokens.feed(chunk)
        pos, end = 0, len(chunk)
        while pos < end:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    pos += 1
                    continue
                found = _INSIDE.search(chunk, pos)
                stop = end if found is None else found.start()
                if self._depth == 1 and len(self._key) < _MAX_KEY:
                    self._key += chunk[pos : min(stop, pos + _MAX_KEY)]
                if found is None:
                    return
                pos = stop + 1
                if chunk[stop] == 0x5C:  # backslash: the next byte is escaped
                    self._escape = True
                else:
                    self._in_string = False
                    if self._depth == 1:
                        self._last_string = bytes(self._key)
                continue
            found = _OUTSIDE.search(chunk, pos)
            if found is None:
                return
            pos = found.end()
            self._structural(found.group())

    def _structural(self, char: bytes) -> None:
        if char == b'"':
            self._in_string = True
            self._key.clear()
        elif char == b":":
            if self._depth == 1:
                self._pending_key = self._last_string
        elif char == b",":
            if self._depth == 1:
                self._pending_key = None
        elif char in (b"{", b"["):
            if self._depth == 1 and char == b"[" and self._pending_key == b"data":
                self._data_depth = 2
            elif self._data_depth and self._depth == self._data_depth and char == b"{":
                self._count += 1
            self._depth += 1
        else:  # } or ]
            self._depth -= 1
            if self._data_depth and self._depth == 1:
                self._data_depth = 0
                self._done = True

    def close(self) -> None:
        self._tokens.close()

    @property
    def usage(self) -> Usage | None:
        if not self._done:
            return None
        tokens = self._tokens.usage
        if tokens is None:
            return Usage(images=self._count)
        return Usage(
            input_tokens=tokens.input_tokens,
            output_tokens=tokens.output_tokens,
            model=tokens.model,
            images=self._count,
        )
