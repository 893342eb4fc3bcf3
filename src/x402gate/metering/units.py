"""The other billing units of AI APIs: speech by characters, transcription by the audio's
duration, embeddings by input tokens (images are in :mod:`x402gate.metering.images`).

* :class:`PerCharacter`: text-to-speech (``POST /v1/audio/speech``), priced by the characters
  of the body's ``input``, known before the call;
* :class:`PerAudioSecond`: transcription and translation (``POST /v1/audio/transcriptions``),
  priced by the duration of the uploaded file, read from its container headers
  (:mod:`x402gate.metering.audio`) and capped by what its size allows;
* :class:`PerInputToken`: embeddings (``POST /v1/embeddings``), quoted on a bound of the input's
  tokens and charged the ``prompt_tokens`` the answer reports.

Each takes one price, or a table of model (name or glob) to price with a fallback, as
:class:`~x402gate.metering.PerToken` does. Pure: no I/O, no clock, no framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar, Literal

from ..errors import ConfigurationError, PaymentError
from ..money import MAX_AMOUNT, PriceLike, ceil_div, format_usd, parse_price
from ..pricing.strategy import PriceStrategy
from ..request import UNSUPPORTED_BODY_CODE, RequestInfo
from ._models import ByModel, bad_request
from .audio import audio_seconds, form_parts
from .prices import TokenPrice, _utf8_len
from .usage import Usage, _is_count

__all__ = ["PerAudioSecond", "PerCharacter", "PerInputToken"]


def _amount(value: Any) -> int:
    return parse_price(value)


def _cost(amount: int, units: int | Fraction, per: int) -> int:
    exact = Fraction(amount) * units / per
    cost = max(ceil_div(exact.numerator, exact.denominator), 1)
    if cost > MAX_AMOUNT:
        raise bad_request("the request is too large to quote")
    return cost


def _per(value: object, unit: str) -> int:
    if not _is_count(value) or value < 1:
        raise ConfigurationError(f"per must be a positive whole number of {unit}, got {value!r}")
    return value


def _limit(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not _is_count(value) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


def _menu(prices: ByModel[Any], show: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if prices.exact:
        summary["models"] = {model: show(price) for model, price in prices.exact.items()}
    if prices.fallback is not None:
        summary["price" if not prices.exact else "fallback"] = show(prices.fallback)
    return summary


class PerCharacter(PriceStrategy):
    """Speech priced by the characters of the text to say (the body's ``input`` field).

    ``price`` is per ``per`` characters (a million by default, as providers list it); or give
    ``models`` (model name or glob to price) with an optional ``fallback``. Characters are
    Unicode code points; a request over ``max_characters`` is answered 400.

    >>> pricing = PerCharacter("$15")
    >>> pricing.quote(RequestInfo("POST", "/v1/audio/speech",
    ...     body=b'{"model": "tts-1", "input": "Hello there", "voice": "alloy"}'))
    165
    """

    __slots__ = ("field", "max_characters", "per", "prices")

    def __init__(
        self,
        price: PriceLike | None = None,
        *,
        models: Mapping[str, PriceLike] | None = None,
        fallback: PriceLike | None = None,
        per: int = 1_000_000,
        max_characters: int | None = None,
        model_field: str = "body.model",
        field: str = "input",
    ) -> None:
        if price is not None and (models or fallback is not None):
            raise ConfigurationError("one price, or models and a fallback: not both")
        self.prices: ByModel[int] = ByModel(
            models, price if price is not None else fallback, _amount, model_field=model_field
        )
        self.per = _per(per, "characters")
        self.max_characters = _limit("max_characters", max_characters)
        self.field = field

    def characters(self, request: RequestInfo) -> int:
        body = request.json()
        text = body.get(self.field) if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise bad_request(f"the request has no {self.field!r} text")
        if self.max_characters is not None and len(text) > self.max_characters:
            raise bad_request(f"{self.field!r} is longer than {self.max_characters} characters")
        return len(text)

    def quote(self, request: RequestInfo) -> int:
        amount = self.prices.for_request(request)
        return _cost(amount, self.characters(request), self.per)

    def describe(self) -> dict[str, Any]:
        return {"type": "per_character", "per": self.per, **_menu(self.prices, format_usd)}


class PerAudioSecond(PriceStrategy):
    """Transcription priced by the duration of the uploaded audio.

    The request is a ``multipart/form-data`` upload (as OpenAI's ``/v1/audio/transcriptions``):
    the ``file_field`` part holds the audio, the ``model`` part names the model. The duration
    is the container's (WAV, MP3: see :func:`~x402gate.metering.audio.audio_seconds`), **never
    above what the file's size allows at ``min_bitrate``**, the lowest bitrate (bit/s) the route
    accepts: a header claiming an hour in a few kilobytes is priced as the bytes, not the claim.
    Other containers (M4A, OGG, FLAC...) are priced at that size bound with
    ``other_formats="size"`` (the default), or answered 415 with ``"refuse"``. A duration
    above ``max_seconds`` is answered 400.

    ``price`` is per ``per`` seconds (60 by default: providers list a price per minute).

    >>> import io, wave
    >>> audio = io.BytesIO()
    >>> with wave.open(audio, "wb") as w:
    ...     w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000)
    ...     w.writeframes(bytes(32000 * 90))  # 90 seconds
    >>> body = (b'--b\\r\\nContent-Disposition: form-data; name="model"\\r\\n\\r\\nwhisper-1\\r\\n'
    ...         b'--b\\r\\nContent-Disposition: form-data; name="file"; filename="a.wav"\\r\\n'
    ...         b'Content-Type: audio/wav\\r\\n\\r\\n' + audio.getvalue() + b'\\r\\n--b--\\r\\n')
    >>> request = RequestInfo("POST", "/v1/audio/transcriptions", body=body,
    ...     headers={"Content-Type": "multipart/form-data; boundary=b"})
    >>> PerAudioSecond("$0.006").quote(request)  # a minute and a half at $0.006 a minute
    9000
    """

    __slots__ = ("file_field", "max_seconds", "min_bitrate", "other_formats", "per", "prices")

    def __init__(
        self,
        price: PriceLike | None = None,
        *,
        models: Mapping[str, PriceLike] | None = None,
        fallback: PriceLike | None = None,
        per: int = 60,
        min_bitrate: int = 8_000,
        max_seconds: int | None = None,
        other_formats: Literal["size", "refuse"] = "size",
        file_field: str = "file",
    ) -> None:
        if price is not None and (models or fallback is not None):
            raise ConfigurationError("one price, or models and a fallback: not both")
        # The model is a form field: looked up by hand, never through the JSON body.
        self.prices: ByModel[int] = ByModel(
            models, price if price is not None else fallback, _amount
        )
        self.per = _per(per, "seconds")
        if not _is_count(min_bitrate) or min_bitrate < 100:
            raise ConfigurationError(
                f"min_bitrate must be an int of at least 100 bit/s, got {min_bitrate!r}"
            )
        self.min_bitrate = min_bitrate
        self.max_seconds = _limit("max_seconds", max_seconds)
        if other_formats not in ("size", "refuse"):
            raise ConfigurationError(
                f"other_formats must be 'size' or 'refuse', got {other_formats!r}"
            )
        self.other_formats = other_formats
        self.file_field = file_field

    def seconds(self, request: RequestInfo) -> tuple[Fraction, str | None]:
        """The duration priced (exact seconds) and the model the form names."""
        parts = form_parts(request.body, request.headers.get("content-type"))
        upload = parts.get(self.file_field)
        if upload is None:
            raise bad_request(f"the form has no {self.file_field!r} file")
        model_part = parts.get("model")
        model = None
        if model_part is not None:
            model = bytes(model_part.data[:200]).decode("utf-8", "replace").strip()
        bound = Fraction(len(upload.data) * 8, self.min_bitrate)
        info = audio_seconds(upload.data)
        if info is None:
            if self.other_formats == "refuse":
                raise PaymentError(
                    415, UNSUPPORTED_BODY_CODE, "send the audio as WAV or MP3 on this endpoint"
                )
            seconds = bound
        else:
            seconds = min(info.seconds, bound)
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise bad_request(f"the audio is longer than {self.max_seconds} seconds")
        return seconds, model

    def quote(self, request: RequestInfo) -> int:
        seconds, model = self.seconds(request)
        amount = self.prices.for_model(model)
        return _cost(amount, seconds, self.per)

    def describe(self) -> dict[str, Any]:
        summary = {
            "type": "per_audio_second",
            "per_seconds": self.per,
            "min_bitrate": self.min_bitrate,
            **_menu(self.prices, format_usd),
        }
        if self.max_seconds is not None:
            summary["max_seconds"] = self.max_seconds
        return summary


class PerInputToken(PriceStrategy):
    """Embeddings priced by input tokens: quote a bound, charge the ``prompt_tokens`` used.

    ``price`` is one price per ``per`` tokens (a million by default), or ``models`` maps a model
    name or glob to a price (``"$0.02"``) or a :class:`~x402gate.metering.TokenPrice` (its input
    price is used), with a ``fallback``: :meth:`PriceTable.token_prices("embedding")
    <x402gate.metering.PriceTable.token_prices>` fits as is.

    The quote bounds the body's ``input`` (a string, a list of strings, a list of token ids or
    of lists of token ids): token ids count one each, text its UTF-8 bytes divided by
    ``bytes_per_token`` (1: never below the real count for byte-level BPE tokenizers), at most
    ``max_input_tokens``. The charge is the answer's input count, at most the quote; an answer
    without one costs the quote.

    >>> pricing = PerInputToken("$0.02")
    >>> request = RequestInfo("POST", "/v1/embeddings",
    ...     body=b'{"model": "text-embedding-3-small", "input": ["hello", [1, 2, 3]]}')
    >>> pricing.quote(request), pricing.charge(Usage(input_tokens=4), request)
    (1, 1)
    """

    __slots__ = ("bytes_per_token", "max_input_tokens", "per", "prices")

    metered: ClassVar[bool] = True

    def __init__(
        self,
        price: PriceLike | None = None,
        *,
        models: Mapping[str, PriceLike | TokenPrice | Mapping[str, Any]] | None = None,
        fallback: PriceLike | TokenPrice | Mapping[str, Any] | None = None,
        per: int = 1_000_000,
        bytes_per_token: int = 1,
        max_input_tokens: int | None = None,
        model_field: str = "body.model",
    ) -> None:
        if price is not None and (models or fallback is not None):
            raise ConfigurationError("one price, or models and a fallback: not both")
        self.per = _per(per, "tokens")
        self.prices: ByModel[Fraction] = ByModel(
            models,
            price if price is not None else fallback,
            self._per_token,
            model_field=model_field,
        )
        if not _is_count(bytes_per_token) or bytes_per_token < 1:
            raise ConfigurationError(
                f"bytes_per_token must be a positive int, got {bytes_per_token!r}"
            )
        self.bytes_per_token = bytes_per_token
        self.max_input_tokens = _limit("max_input_tokens", max_input_tokens)

    def _per_token(self, value: Any) -> Fraction:
        """Micro-dollars per token, exact."""
        if isinstance(value, Mapping):
            value = TokenPrice.of({"output": 0, **value})
        if isinstance(value, TokenPrice):
            if not value.input:
                raise ConfigurationError("an embedding price needs an input price")
            return Fraction(value.input, value.per)
        return Fraction(parse_price(value), self.per)

    def input_bound(self, request: RequestInfo) -> int:
        body = request.json()
        items = body.get("input") if isinstance(body, dict) else None
        if isinstance(items, str | int) and not isinstance(items, bool):
            items = [items]
        if not isinstance(items, list) or not items:
            raise bad_request("the request has no input")
        text_bytes = tokens = 0
        for item in items:
            if isinstance(item, str):
                text_bytes += _utf8_len(item)
            elif _is_count(item):
                tokens += 1
            elif isinstance(item, list) and all(_is_count(token) for token in item):
                tokens += len(item)
            else:
                raise bad_request("input must be text, token ids, or lists of either")
        bound = tokens + ceil_div(text_bytes, self.bytes_per_token)
        if self.max_input_tokens is not None:
            bound = min(bound, self.max_input_tokens)
        return bound

    def _price(self, per_token: Fraction, tokens: int) -> int:
        exact = per_token * tokens
        return max(ceil_div(exact.numerator, exact.denominator), 1)

    def quote(self, request: RequestInfo) -> int:
        return self._price(self.prices.for_request(request), self.input_bound(request))

    def charge(self, usage: Usage | None, request: RequestInfo | None = None) -> int:
        if request is None:
            raise TypeError("PerInputToken.charge needs the request it quoted")
        per_token = self.prices.for_request(request)
        quote = self._price(per_token, self.input_bound(request))
        if usage is None or usage.input_tokens is None:
            return quote
        return min(self._price(per_token, usage.input_tokens), quote)

    def describe(self) -> dict[str, Any]:
        def show(per_token: Fraction) -> str:
            per_million = per_token * 1_000_000
            return format_usd(ceil_div(per_million.numerator, per_million.denominator))

        summary: dict[str, Any] = {"type": "per_input_token", "per": 1_000_000}
        summary.update(_menu(self.prices, show))
        if self.max_input_tokens is not None:
            summary["max_input_tokens"] = self.max_input_tokens
        return summary
