"""Metered prices: pay for the tokens or the seconds a call really used.

A metered strategy quotes the **most** a request can cost before the work starts (that amount is
authorized and reserved), then charges what was actually used, never more than the quote; the
credit ledger keeps the difference for the payer (see ``DESIGN.md``, "Credit ledger").

* :class:`PerToken`: input and output prices per 1k or 1M tokens (:class:`TokenPrice`), per model
  with a fallback; :func:`estimate_input_tokens` bounds the input a request can use.
* :class:`PerSecond`: a price per second of handler or stream time, up to a route-declared
  maximum duration.

Both implement ``charge(usage, request)``: ``usage`` is a :class:`~x402gate.metering.usage.Usage`
(or ``None`` when nothing was measured) and the result an ``int`` of micro-dollars. **A response
with no usage is charged the quote**: a meter that found no usage (a stream cut short, an OpenAI
stream without ``stream_options.include_usage``, a body that is not JSON) cannot prove the call
was cheaper than its worst case. The same goes for one missing half: a known input count with an
unknown output count charges the output's worst case. Pure: no I/O, no clock, no framework.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

from ..errors import ConfigurationError, PaymentError
from ..money import MAX_AMOUNT, PriceLike, ceil_div, format_usd, parse_price
from ..pricing.fields import RequestField
from ..pricing.strategy import NO_PRICE_CODE, PriceStrategy
from ..request import RequestInfo
from .usage import SecondsLike, Usage, _exact_seconds, _is_count, _measured_seconds

__all__ = [
    "MAX_OUTPUT_FIELDS",
    "PerSecond",
    "PerToken",
    "TokenPrice",
    "estimate_input_tokens",
]

MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""Body fields that bound the output: Anthropic and OpenAI chat, OpenAI chat, OpenAI Responses."""

_CHOICE_FIELDS = ("n", "best_of")  # OpenAI: several completions, each up to max_tokens


# --- PerToken --------------------------------------------------------------------------------


class TokenPrice:
    """Input and output prices for ``per`` tokens (1M by default, as providers list them).

    One price may be zero, not both. Amounts are kept in micro-dollars per ``per`` tokens, so
    ``$0.15`` per 1M tokens is exact (0.15 micro-dollars a token) and a cost is rounded up once,
    on the total.

    >>> price = TokenPrice(input="$3", output="$15")
    >>> price
    TokenPrice(input='$3.00', output='$15.00', per=1000000)
    >>> price.cost(input_tokens=1_000, output_tokens=500)  # $0.003 + $0.0075
    10500
    >>> TokenPrice(input="0.0005", output="0.0015", per=1_000).cost(1, 0)  # half, rounded up
    1
    """

    __slots__ = ("input", "output", "per")

    def __init__(self, input: PriceLike, output: PriceLike, per: int = 1_000_000) -> None:
        if not _is_count(per) or per < 1:
            raise ConfigurationError(f"per must be a positive whole number of tokens, got {per!r}")
        try:
            self.input = parse_price(input, allow_zero=True)
        except ConfigurationError as exc:
            raise ConfigurationError(f"input price: {exc}") from None
        try:
            self.output = parse_price(output, allow_zero=True)
        except ConfigurationError as exc:
            raise ConfigurationError(f"output price: {exc}") from None
        if not self.input and not self.output:
            raise ConfigurationError(
                "input and output prices are both zero: leave a free model unpaywalled"
            )
        self.per = per

    @classmethod
    def of(cls, value: TokenPrice | Mapping[str, Any]) -> TokenPrice:
        """A price as given in configuration: a :class:`TokenPrice` or a mapping of its keywords.

        >>> TokenPrice.of({"input": "$0.15", "output": "$0.60"}).output
        600000
        """
        if isinstance(value, TokenPrice):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"input", "output", "per"}
            if unknown or not {"input", "output"} <= set(value):
                raise ConfigurationError(
                    "a token price needs 'input' and 'output' (and optionally 'per'), "
                    f"got keys {sorted(map(str, value))}"
                )
            return cls(**value)
        raise ConfigurationError(
            f"expected TokenPrice(input=..., output=...) or a mapping of those, got {value!r}"
        )

    def cost(self, input_tokens: int, output_tokens: int) -> int:
        """Micro-dollars for these counts, rounded up to a whole micro-dollar."""
        return ceil_div(input_tokens * self.input + output_tokens * self.output, self.per)

    def describe(self) -> dict[str, Any]:
        return {"input": format_usd(self.input), "output": format_usd(self.output), "per": self.per}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenPrice):
            return NotImplemented
        return (self.input, self.output, self.per) == (other.input, other.output, other.per)

    def __hash__(self) -> int:
        return hash((self.input, self.output, self.per))

    def __repr__(self) -> str:
        return (
            f"TokenPrice(input={format_usd(self.input)!r}, output={format_usd(self.output)!r}, "
            f"per={self.per})"
        )


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def estimate_input_tokens(request: RequestInfo, *, bytes_per_token: int = 1) -> int:
    """An upper bound on the input tokens of ``request``: text bytes ÷ ``bytes_per_token``, up.

    The text is every key and string value of the JSON body (messages, system prompt, tool
    definitions, ...; other JSON values count as their JSON text) plus the query string; a body
    that is not JSON counts as its raw bytes. Counting keys (``"role"``, ``"content"``,
    ``"type"``) also covers the few formatting tokens providers add per message.

    With the default ``bytes_per_token=1`` this **never underestimates** the text's tokens for
    byte-level BPE tokenizers (OpenAI's, Anthropic's, Llama's), whose every token spans at least
    one byte, whatever the language or content (digits, CSV, CJK, emoji, base64). It is loose for
    English prose (about four bytes a token), but the change stays as the payer's credit. A route
    may accept more risk for smaller quotes: ``2`` holds for prose and code but not for every
    text (``"1,2,3"`` and some CJK text take more than one token per two bytes).

    Not in the body, so not counted: media by reference (image URLs, file ids), server-side
    conversation state (``previous_response_id``) and hidden system prompts (Anthropic adds a few
    hundred tokens when tools are present). Routes that accept these should pass their own
    ``estimate_input`` to :class:`PerToken`, e.g. this estimate plus an allowance.

    >>> estimate_input_tokens(RequestInfo("POST", "/", body=b'{"prompt": "Hello, world"}'))
    18
    >>> estimate_input_tokens(RequestInfo("POST", "/", body="{\\"p\\": \\"日本\\"}".encode()),
    ...                       bytes_per_token=2)
    4
    """
    if not _is_count(bytes_per_token) or bytes_per_token < 1:
        raise ConfigurationError(f"bytes_per_token must be a positive int, got {bytes_per_token!r}")
    total = _utf8_len(request.query_string)
    body = request.json()
    if body is None:
        total += len(request.body)
    else:
        stack: list[Any] = [body]
        while stack:  # iterative: a deeply nested body must not hit the recursion limit
            node = stack.pop()
            if isinstance(node, str):
                total += _utf8_len(node)
            elif isinstance(node, dict):
                for key, value in node.items():
                    total += _utf8_len(key)
                    stack.append(value)
            elif isinstance(node, list):
                stack.extend(node)
            elif type(node) is int:
                total += len(repr(node))  # its JSON text, without the encoder's set-up
            else:
                total += len(json.dumps(node))
    return ceil_div(total, bytes_per_token)


def _bad_request(message: str) -> PaymentError:
    return PaymentError(400, NO_PRICE_CODE, message)


def _positive_count(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:  # absent, or null as SDKs send for "not set"
        return None
    if not _is_count(value) or value < 1:
        raise _bad_request(f"{name} must be a positive integer")
    return int(value)


def _route_limit(name: str, value: object, minimum: int) -> int | None:
    if value is None:
        return None
    if not _is_count(value) or value < minimum:
        raise ConfigurationError(f"{name} must be an int of at least {minimum}, got {value!r}")
    return value


class PerToken(PriceStrategy):
    """Per-token prices: quote the worst case, charge the tokens the response reports.

    ``prices`` is one :class:`TokenPrice` for every request, or a table of model name (exact
    names first, then globs in order, as :class:`~x402gate.pricing.ModelTable`) to price, read
    from ``model_field``; ``fallback`` prices other models. Table values may also be mappings
    ``{"input": ..., "output": ..., "per": ...}``.

    **Quote** (the most the request can cost, the same for the same request):

    * input: :func:`estimate_input_tokens` (``bytes_per_token``) or your ``estimate_input``
      function, at most ``max_input_tokens`` when the route declares it (the model's context
      window, say: longer prompts fail upstream);
    * output: the body's ``max_tokens``, ``max_completion_tokens`` or ``max_output_tokens`` (the
      largest when several are set) times ``n``/``best_of`` when given, at most the route's
      ``max_output_tokens`` (a total for the request). A request with neither is unbounded: it
      is answered 400 ``no_price_for_request``, unless the route sets ``max_price``;
    * the cost of those counts rounded up, at most ``max_price``, at least one micro-dollar.

    **Charge** (``charge(usage, request)``): the actual counts at the price of the model the
    request was quoted for (not the one the response names: ``gpt-4o`` answers as a dated
    snapshot), rounded up once, never above the quote. ``usage=None`` costs the quote; a
    missing count costs its worst case. Invalid body limits (``max_tokens: -1``, ``n: "2"``) are
    answered 400 too.

    >>> pricing = PerToken(
    ...     {"claude-sonnet-4*": TokenPrice(input="$3", output="$15"),
    ...      "claude-haiku-4*": {"input": "$1", "output": "$5"}},
    ...     max_input_tokens=200_000,
    ... )
    >>> request = RequestInfo("POST", "/v1/messages", body=b'{"model": "claude-haiku-4-5", '
    ...     b'"max_tokens": 1000, "messages": [{"role": "user", "content": "Hi"}]}')
    >>> pricing.quote(request)  # 60 text bytes at $1/M + 1000 output tokens at $5/M
    5060
    >>> pricing.charge(Usage(input_tokens=9, output_tokens=20), request)
    109
    >>> pricing.charge(None, request)
    5060
    """

    __slots__ = (
        "_estimate",
        "_exact",
        "_globs",
        "bytes_per_token",
        "fallback",
        "field",
        "max_input_tokens",
        "max_output_tokens",
        "max_price",
    )

    metered: ClassVar[bool] = True

    def __init__(
        self,
        prices: Mapping[str, TokenPrice | Mapping[str, Any]] | TokenPrice,
        *,
        fallback: TokenPrice | Mapping[str, Any] | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
        max_price: PriceLike | None = None,
        model_field: str = "body.model",
        bytes_per_token: int = 1,
        estimate_input: Callable[[RequestInfo], int] | None = None,
    ) -> None:
        self._exact: dict[str, TokenPrice] = {}
        self._globs: list[tuple[re.Pattern[str], TokenPrice]] = []
        if isinstance(prices, TokenPrice):
            if fallback is not None:
                raise ConfigurationError("one TokenPrice for every request needs no fallback")
            fallback = prices
        elif isinstance(prices, Mapping):
            for model, price in prices.items():
                if not isinstance(model, str) or not model:
                    raise ConfigurationError(
                        f"model names must be non-empty strings, got {model!r}"
                    )
                try:
                    parsed = TokenPrice.of(price)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"model {model!r}: {exc}") from None
                self._exact[model] = parsed
                if any(char in model for char in "*?["):
                    self._globs.append((re.compile(fnmatch.translate(model)), parsed))
        else:
            raise ConfigurationError(
                f"PerToken needs a TokenPrice or a mapping of model to TokenPrice, got {prices!r}"
            )
        try:
            self.fallback = None if fallback is None else TokenPrice.of(fallback)
        except ConfigurationError as exc:
            raise ConfigurationError(f"fallback: {exc}") from None
        if not self._exact and self.fallback is None:
            raise ConfigurationError("PerToken needs at least one model or a fallback")
        self.field = RequestField(model_field)
        self.max_input_tokens = _route_limit("max_input_tokens", max_input_tokens, 0)
        self.max_output_tokens = _route_limit("max_output_tokens", max_output_tokens, 0)
        self.max_price = None if max_price is None else parse_price(max_price)
        if not _is_count(bytes_per_token) or bytes_per_token < 1:
            raise ConfigurationError(
                f"bytes_per_token must be a positive int, got {bytes_per_token!r}"
            )
        self.bytes_per_token = bytes_per_token
        if estimate_input is not None and not callable(estimate_input):
            raise ConfigurationError(f"estimate_input must be a function, got {estimate_input!r}")
        self._estimate = estimate_input

    # The worst case.

    def price_for(self, request: RequestInfo) -> TokenPrice:
        """The price of the request's model; 400 ``no_price_for_request`` when there is none."""
        model = self.field.read(request) if self._exact else None
        if model is not None:
            price = self._exact.get(model)
            if price is not None:
                return price
            for glob, candidate in self._globs:
                if glob.match(model):
                    return candidate
        if self.fallback is not None:
            return self.fallback
        if model is None:
            raise _bad_request(f"the request names no model (expected in {self.field.path})")
        raise _bad_request("the requested model has no price on this endpoint")

    def input_bound(self, request: RequestInfo) -> int:
        """The most input tokens the request can use (estimate, capped by the route)."""
        if self._estimate is None:
            estimate = estimate_input_tokens(request, bytes_per_token=self.bytes_per_token)
        else:
            estimate = self._estimate(request)
            if not _is_count(estimate):
                raise ConfigurationError(
                    f"estimate_input returned {estimate!r}: it must return a non-negative int"
                )
        if self.max_input_tokens is not None:
            estimate = min(estimate, self.max_input_tokens)
        return estimate

    def output_bound(self, request: RequestInfo) -> int | None:
        """The most output tokens the request can produce, or ``None`` when unbounded."""
        body = request.json()
        bound: int | None = None
        if isinstance(body, dict):
            limits = [n for name in MAX_OUTPUT_FIELDS if (n := _positive_count(body, name))]
            if limits:
                choices = [n for name in _CHOICE_FIELDS if (n := _positive_count(body, name))]
                bound = max(limits) * max(choices, default=1)
        if self.max_output_tokens is not None:
            bound = self.max_output_tokens if bound is None else min(bound, self.max_output_tokens)
        return bound

    def _quote(self, price: TokenPrice, inputs: int, outputs: int | None) -> int:
        if outputs is None:
            if self.max_price is None:
                fields = ", ".join(MAX_OUTPUT_FIELDS)
                raise _bad_request(
                    f"the request sets no output limit ({fields}) and this endpoint declares no "
                    "maximum: an unbounded request cannot be quoted"
                )
            return self.max_price
        cost = price.cost(inputs, outputs)
        if self.max_price is not None:
            cost = min(cost, self.max_price)
        if cost > MAX_AMOUNT:
            raise _bad_request("the request's worst case is too large to quote: lower max_tokens")
        return max(cost, 1)

    def _worst_case(self, request: RequestInfo) -> tuple[TokenPrice, int, int | None, int]:
        """The request's price, input and output bounds and quote, computed once per request:
        the quote and the charge both need them, and the input estimate walks the whole body."""

        def compute() -> tuple[TokenPrice, int, int | None, int]:
            price = self.price_for(request)
            inputs = self.input_bound(request)
            outputs = self.output_bound(request)
            return price, inputs, outputs, self._quote(price, inputs, outputs)

        return request.memo(self, compute)  # keyed by this strategy (hashed by identity)

    def quote(self, request: RequestInfo) -> int:
        """Micro-dollars for the request's worst case (see the class documentation)."""
        return self._worst_case(request)[3]

    def charge(self, usage: Usage | None, request: RequestInfo | None = None) -> int:
        """Micro-dollars for the measured ``usage`` of ``request``, never above its quote.

        ``request`` is required (the optional signature is the base class's): the price is the
        one of the model it was quoted for, and its quote is the cap.
        """
        if usage is not None and not isinstance(usage, Usage):
            raise TypeError(f"usage must be a Usage or None, got {type(usage).__name__}")
        if request is None:
            raise TypeError("PerToken.charge needs the request it quoted: charge(usage, request)")
        price, inputs, outputs, quote = self._worst_case(request)
        if usage is None:
            return quote
        if usage.input_tokens is not None:
            inputs = usage.input_tokens
        if usage.output_tokens is not None:
            outputs = usage.output_tokens
        if outputs is None:
            return quote
        return min(price.cost(inputs, outputs), quote)

    def describe(self) -> dict[str, Any]:
        # Token prices are the public menu, as ModelTable's: agents can choose before paying.
        summary: dict[str, Any] = {"type": "per_token", "field": self.field.path}
        if self._exact:
            summary["models"] = {model: price.describe() for model, price in self._exact.items()}
        if self.fallback is not None:
            summary["fallback"] = self.fallback.describe()
        if self.max_input_tokens is not None:
            summary["max_input_tokens"] = self.max_input_tokens
        if self.max_output_tokens is not None:
            summary["max_output_tokens"] = self.max_output_tokens
        if self.max_price is not None:
            summary["max_price"] = format_usd(self.max_price)
        return summary

    def __repr__(self) -> str:
        return f"PerToken({self._exact!r}, fallback={self.fallback!r})"


# --- PerSecond -------------------------------------------------------------------------------


class PerSecond(PriceStrategy):
    """A price per ``per`` seconds (1 by default) of handler or stream time, capped.

    The quote covers ``max_seconds`` (the route's longest allowed run); the charge is the
    measured ``usage.seconds``, at most ``max_seconds``, rounded up to a whole micro-dollar.
    ``usage=None`` or an unmeasured duration costs the quote. Durations are exact: a float is
    read through its shortest repr, so ``0.1`` second is exactly a tenth.

    >>> pricing = PerSecond("$0.001", max_seconds=30)
    >>> pricing.quote(RequestInfo("POST", "/v1/transcribe"))
    30000
    >>> pricing.charge(Usage(seconds=2.0000004)), pricing.charge(Usage(seconds=95.0))
    (2001, 30000)
    >>> PerSecond("$0.01", per=60, max_seconds="90").quote(RequestInfo("GET", "/"))  # $0.01/min
    15000
    """

    __slots__ = ("_quote", "amount", "max_seconds", "per")

    metered: ClassVar[bool] = True

    def __init__(
        self, price_per_second: PriceLike, *, max_seconds: SecondsLike, per: int = 1
    ) -> None:
        self.amount = parse_price(price_per_second)
        if not _is_count(per) or per < 1:
            raise ConfigurationError(f"per must be a positive whole number of seconds, got {per!r}")
        self.per = per
        try:
            self.max_seconds = _exact_seconds(max_seconds, "max_seconds")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if self.max_seconds <= 0:
            raise ConfigurationError(f"max_seconds must be positive, got {max_seconds!r}")
        self._quote = self._cost(self.max_seconds)
        if self._quote > MAX_AMOUNT:
            raise ConfigurationError("max_seconds times the price is too large for a payment")

    def _cost(self, seconds: Fraction) -> int:
        exact = self.amount * seconds / self.per
        return ceil_div(exact.numerator, exact.denominator)

    def quote(self, request: RequestInfo) -> int:
        """The price of ``max_seconds``."""
        return self._quote

    def charge(self, usage: Usage | None, request: RequestInfo | None = None) -> int:
        """Micro-dollars for ``usage.seconds`` (capped at ``max_seconds``); ``request`` unused."""
        if usage is not None and not isinstance(usage, Usage):
            raise TypeError(f"usage must be a Usage or None, got {type(usage).__name__}")
        if usage is None or usage.seconds is None:
            return self._quote
        return min(self._cost(min(_measured_seconds(usage.seconds), self.max_seconds)), self._quote)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "per_second",
            "price": format_usd(self.amount),
            "per_seconds": self.per,
            "max_seconds": _seconds_text(self.max_seconds),
            "max": format_usd(self._quote),
        }

    def __repr__(self) -> str:
        return (
            f"PerSecond({format_usd(self.amount)!r}, per={self.per}, "
            f"max_seconds={_seconds_text(self.max_seconds)!r})"
        )


def _seconds_text(seconds: Fraction) -> str:
    if seconds.denominator == 1:
        return str(seconds.numerator)
    return str(Decimal(seconds.numerator) / Decimal(seconds.denominator))
