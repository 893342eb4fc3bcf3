"""Pricing compressed bodies and forms by what they hold (:class:`DecodedBody`), bounded."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Iterable
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from ..errors import ConfigurationError, PaymentError
from ..money import PriceLike
from ..request import FORM_TYPES, INVALID_BODY_CODE, UNSUPPORTED_BODY_CODE, RequestInfo, ambiguous
from .strategy import PriceFunction, PriceStrategy, as_strategy

__all__ = ["MAX_FORM_FIELDS", "DecodedBody"]

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_FORM = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 1_000
"""Fields of one form body :class:`DecodedBody` reads; more is answered 400 ``invalid_body``."""


class DecodedBody(PriceStrategy):
    """Prices compressed bodies and forms by what they hold: the body is decoded, within
    ``max_bytes``, and ``price`` quotes the decoded request.

    Without it, a route priced by its body answers such bodies 415 ``unsupported_body``: priced
    as "not JSON" they would cost the fallback while the handler reads the fields inside.

    :param price: the strategy (or price) that quotes the decoded request, metered ones too.
    :param encodings: ``Content-Encoding`` values decompressed: ``"gzip"`` and ``"deflate"``
        (one coding; a list of codings stays 415).
    :param forms: read ``application/x-www-form-urlencoded`` bodies as a flat object of their
        fields (``body.<name>``); a field given twice is 400 ``ambiguous_request``, more than
        :data:`MAX_FORM_FIELDS` fields 400 ``invalid_body``. ``multipart/form-data`` stays 415.
    :param max_bytes: the largest decoded body (1 MiB by default): a larger one, a zip bomb
        say, is answered 413 ``request_too_large`` after decompressing at most that much.

    >>> import gzip
    >>> from x402gate.pricing import ModelTable
    >>> pricing = DecodedBody(ModelTable({"mini": "$0.01", "opus": "$0.20"}), forms=True)
    >>> pricing.quote(RequestInfo("POST", "/", headers={"Content-Encoding": "gzip"},
    ...                           body=gzip.compress(b'{"model": "opus"}')))
    200000
    >>> pricing.quote(RequestInfo("POST", "/", body=b"model=mini",
    ...                           headers={"Content-Type": "application/x-www-form-urlencoded"}))
    10000
    """

    __slots__ = ("encodings", "forms", "max_bytes", "price")

    def __new__(cls, price: Any, *args: Any, **kwargs: Any) -> DecodedBody:
        # ``metered`` is a class attribute the gate reads: a metered price gets the metered twin.
        if cls is DecodedBody and as_strategy(price).metered:
            cls = _MeteredDecodedBody
        return super().__new__(cls)

    def __init__(
        self,
        price: PriceStrategy | PriceLike | PriceFunction,
        *,
        encodings: Iterable[str] = ("gzip", "deflate"),
        forms: bool = False,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.price = as_strategy(price)
        if isinstance(encodings, str):
            encodings = (encodings,)
        names = tuple(str(name).lower() for name in encodings)
        unknown = [name for name in names if name not in _WBITS]
        if unknown:
            raise ConfigurationError(
                f"DecodedBody encodings: {unknown!r} unknown (use 'gzip' or 'deflate')"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigurationError(f"DecodedBody max_bytes must be a positive int: {max_bytes!r}")
        self.encodings = frozenset(names)
        self.forms = bool(forms)
        self.max_bytes = max_bytes

    def decode(self, request: RequestInfo) -> RequestInfo:
        """``request`` with its body decoded (itself when there is nothing to decode).

        Raises the 4xx :class:`PaymentError` the class documents.
        """
        if request.unsupported_body() is None:
            return request
        body = request.body
        coding = request.headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            if coding not in self.encodings:
                raise PaymentError(
                    415, UNSUPPORTED_BODY_CODE, "this Content-Encoding is not accepted here"
                )
            body = self._inflate(body, _WBITS[coding])
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media == _FORM and self.forms:
            return request.decoded(body, self._form_fields(body))
        if media in FORM_TYPES:
            raise PaymentError(
                415, UNSUPPORTED_BODY_CODE, f"a {media} body cannot be priced on this endpoint"
            )
        return request.decoded(body)

    def _inflate(self, body: bytes, wbits: int) -> bytes:
        inflater = zlib.decompressobj(wbits)
        try:
            # Never more than max_bytes + 1 out, whatever the ratio: a zip bomb stops here.
            out = inflater.decompress(body, self.max_bytes + 1)
        except zlib.error:
            raise PaymentError(
                400, INVALID_BODY_CODE, "the body is not validly compressed"
            ) from None
        if len(out) > self.max_bytes or inflater.unconsumed_tail:
            raise PaymentError(
                413, "request_too_large", "the decompressed body is too large for this endpoint"
            )
        if not inflater.eof or inflater.unused_data:
            # Cut short, or more after the end (readers differ on further gzip members).
            raise PaymentError(400, INVALID_BODY_CODE, "the body is not validly compressed")
        return out

    def _form_fields(self, body: bytes) -> dict[str, str]:
        try:
            text = body.decode("ascii")
            pairs = parse_qsl(
                text,
                keep_blank_values=True,
                errors="strict",
                max_num_fields=MAX_FORM_FIELDS,
            )
        except (UnicodeDecodeError, ValueError):
            raise PaymentError(400, INVALID_BODY_CODE, "the form body cannot be read") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            if name in fields:
                raise ambiguous(f"form field {name!r}")
            fields[name] = value
        return fields

    def quote(self, request: RequestInfo) -> int | Awaitable[int]:
        return self.price.quote(self.decode(request))

    def charge(self, usage: Any, request: RequestInfo | None = None) -> int:
        return self.price.charge(usage, None if request is None else self.decode(request))

    def describe(self) -> dict[str, Any]:
        return self.price.describe()

    def __repr__(self) -> str:
        return (
            f"DecodedBody({self.price!r}, encodings={sorted(self.encodings)!r}, forms={self.forms})"
        )


class _MeteredDecodedBody(DecodedBody):
    __slots__ = ()
    metered: ClassVar[bool] = True
