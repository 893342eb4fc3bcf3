"""Price strategies: what a request costs before any work is done.

A :class:`PriceStrategy` turns a :class:`~x402gate.request.RequestInfo` into a **quote**, an ``int``
of micro-dollars (see :mod:`x402gate.money`) that the client must authorize. The quote is computed
twice for one paid call (once for the 402 challenge, once for the paid retry) and both must agree,
so a strategy must be deterministic: the same request always gets the same quote.

Built-in strategies:

* :class:`Flat`: one price for every request;
* :class:`Dynamic`: a sync or async function of the request;
* :class:`MatchRules`: ordered glob rules over method, path, query, headers and JSON body fields;
* :class:`ModelTable`: an LLM model name (``body.model`` by default) to a price;
* :class:`DecodedBody`: another strategy, over compressed bodies and forms decoded (bounded);
* :class:`PayerPrice`, :class:`Tiered`: prices that know the payer's history (volume discounts
  from the payments journal, see :mod:`~x402gate.pricing.payer`).

One module per concern: :mod:`~x402gate.pricing.strategy` (the interface, :class:`Flat`,
:class:`Dynamic`, resolving quotes), :mod:`~x402gate.pricing.fields` (reading request fields:
``method``, ``path``, ``query.<name>``, ``header.<name>``, ``body.<dotted.path>``),
:mod:`~x402gate.pricing.rules` (:class:`MatchRules`, :class:`ModelTable`) and
:mod:`~x402gate.pricing.decoded` (:class:`DecodedBody`).

What is priced must be what the handler reads, so a request read ambiguously is refused, never
priced: a query parameter or header given more than once is answered 400 ``ambiguous_request``
(frameworks disagree on which value counts); a body read for a ``body.`` field is answered 400
``invalid_body`` when it is JSON that must not be read (another encoding than UTF-8, a key
repeated in an object, too deep or too large, see :meth:`RequestInfo.json
<x402gate.request.RequestInfo.json>`) and 415 ``unsupported_body`` when it is compressed or a
form, unless the price is wrapped in :class:`DecodedBody`.

A field that is absent (or a body that is not JSON) never matches, not even the pattern ``"*"``:
rules then fall through to the next rule or the fallback instead of pricing requests that lack
what the rule is about. Strings are matched as they are; other JSON values through their compact
JSON text (``true``, ``false``, ``null``, ``3``, ``0.5``, ``{"a":1}``).

No rule, model or fallback for a request is the client's problem: :class:`PaymentError` 400 with
code ``no_price_for_request`` (one code for every strategy, the message says what was missing and
never echoes the request).

Metered strategies (:class:`~x402gate.metering.PerToken`, :class:`~x402gate.metering.PerSecond`,
in :mod:`x402gate.metering`) set ``metered = True`` and implement ``charge(usage, request)``: the
actual cost of the request's measured usage, never above its quote.
"""

from __future__ import annotations

from .decoded import MAX_FORM_FIELDS, DecodedBody
from .fields import PatternLike
from .payer import PayerPrice, PayerSummary, Tiered
from .rules import MatchRules, ModelTable, Rule
from .strategy import (
    NO_PRICE_CODE,
    Dynamic,
    Flat,
    PriceFunction,
    PriceStrategy,
    as_strategy,
    resolve_quote,
    resolve_quote_sync,
)

__all__ = [
    "MAX_FORM_FIELDS",
    "NO_PRICE_CODE",
    "DecodedBody",
    "Dynamic",
    "Flat",
    "MatchRules",
    "ModelTable",
    "PatternLike",
    "PayerPrice",
    "PayerSummary",
    "PriceFunction",
    "PriceStrategy",
    "Rule",
    "Tiered",
    "as_strategy",
    "resolve_quote",
    "resolve_quote_sync",
]
