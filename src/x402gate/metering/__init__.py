"""Metered billing: pay for the tokens or the seconds a call really used.

Two halves, one module each:

* :mod:`x402gate.metering.usage` reads what a call used from its response body as the bytes
  pass: :class:`Usage`, :func:`usage_from_json`, :class:`SSEUsageMeter`,
  :class:`JSONUsageMeter`, :class:`NoUsageMeter`, chosen by content type with :func:`meter_for`.
* :mod:`x402gate.metering.prices` turns a usage into a charge: :class:`PerToken` (with
  :class:`TokenPrice` and :func:`estimate_input_tokens`) and :class:`PerSecond`.

The other units of AI APIs: :class:`PerImage` (images by count, size and quality, confirmed from
the answer), :class:`PerCharacter` (speech), :class:`PerAudioSecond` (transcription, by the
uploaded audio's duration) and :class:`PerInputToken` (embeddings). :func:`builtin_prices` is
the model price table shipped in the package (:mod:`x402gate.metering.table`).

A metered strategy quotes the most a request can cost before the work starts, then charges what
was used, never more than the quote (see :mod:`x402gate.metering.prices`). Everything here is
pure: no I/O, no clock, no framework. The gate feeds response bytes to a meter as they pass and
calls ``charge`` at the end.

>>> from x402gate.request import RequestInfo
>>> pricing = PerToken({"gpt-4o*": TokenPrice(input="$2.50", output="$10")})
>>> meter = meter_for("text/event-stream")
>>> meter.feed(b'data: {"model": "gpt-4o", "choices": [], "usage": {"prompt_tokens": 1')
>>> meter.feed(b'2, "completion_tokens": 40}}\\n\\ndata: [DONE]\\n\\n')
>>> meter.close()
>>> meter.usage
Usage(input_tokens=12, output_tokens=40, seconds=None, model='gpt-4o')
>>> request = RequestInfo("POST", "/v1/chat/completions",
...                       body=b'{"model": "gpt-4o", "max_tokens": 100, "messages": []}')
>>> pricing.quote(request), pricing.charge(meter.usage, request)
(1080, 430)
"""

from __future__ import annotations

from .images import ImageCountMeter, PerImage
from .prices import MAX_OUTPUT_FIELDS, PerSecond, PerToken, TokenPrice, estimate_input_tokens
from .table import ModelPrice, PriceTable, builtin_prices
from .units import PerAudioSecond, PerCharacter, PerInputToken
from .usage import (
    JSONUsageMeter,
    NoUsageMeter,
    SecondsLike,
    SSEUsageMeter,
    Usage,
    UsageMeter,
    meter_for,
    usage_from_json,
)

__all__ = [
    "MAX_OUTPUT_FIELDS",
    "ImageCountMeter",
    "JSONUsageMeter",
    "ModelPrice",
    "NoUsageMeter",
    "PerAudioSecond",
    "PerCharacter",
    "PerImage",
    "PerInputToken",
    "PerSecond",
    "PerToken",
    "PriceTable",
    "SSEUsageMeter",
    "SecondsLike",
    "TokenPrice",
    "Usage",
    "UsageMeter",
    "builtin_prices",
    "estimate_input_tokens",
    "meter_for",
    "usage_from_json",
]
