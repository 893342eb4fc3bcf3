"""Metered prices: pay for the tokens or the seconds a call really used.

A metered strategy quotes the **most** a request can cost before the work starts (that amount is
authorized and reserved), then charges what was actually used, never more than the quote; the
credit ledger keeps the difference for the payer (see ``DESIGN.md``, "Credit ledger").

* :class:`PerToken`: input and output prices per 1k or 1M tokens (:class:`TokenPrice`), per model
  with a fallback. The usage is read from the response body: OpenAI-shaped and Anthropic-shaped
  JSON (:func:`usage_from_json`, :class:`JSONUsageMeter`) and server-sent event streams
  (:class:`SSEUsageMeter`), chosen by the content type with :func:`meter_for`.
* :class:`PerSecond`: a price per second of handler or stream time, up to a route-declared
  maximum duration.

Both implement ``charge(usage, request)``: ``usage`` is a :class:`Usage` (or ``None`` when nothing
was measured) and the result an ``int`` of micro-dollars. **A response with no usage is charged
the quote**: a meter that found no usage (a stream cut short, an OpenAI stream without
``stream_options.include_usage``, a body that is not JSON) cannot prove the call was cheaper than
its worst case. The same goes for one missing half: a known input count with an unknown output
count charges the output's worst case.

Everything here is pure: no I/O, no clock, no framework. The gate feeds response bytes to a meter
as they pass and calls ``charge`` at the end; meters never hold more than one incomplete event
(streams) or a bounded prefix and tail (JSON bodies).

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

import fnmatch
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar, Protocol, TypeAlias, TypeGuard

from . import _json
from .errors import ConfigurationError, PaymentError
from .money import MAX_AMOUNT, PriceLike, ceil_div, format_usd, parse_price
from .pricing import NO_PRICE_CODE, PriceStrategy, _Field
from .request import RequestInfo

__all__ = [
    "MAX_OUTPUT_FIELDS",
    "JSONUsageMeter",
    "NoUsageMeter",
    "PerSecond",
    "PerToken",
    "SSEUsageMeter",
    "SecondsLike",
    "TokenPrice",
    "Usage",
    "UsageMeter",
    "estimate_input_tokens",
    "meter_for",
    "usage_from_json",
]

SecondsLike: TypeAlias = int | float | Decimal | Fraction | str
"""A configured duration: ``30``, ``0.5`` (read through its shortest repr), ``"2.5"``, ..."""

MAX_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""Body fields that bound the output: Anthropic and OpenAI chat, OpenAI chat, OpenAI Responses."""

_CHOICE_FIELDS = ("n", "best_of")  # OpenAI: several completions, each up to max_tokens


# --- usage -----------------------------------------------------------------------------------


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call used. ``None`` means "not measured", never zero.

    ``input_tokens`` counts every prompt token the provider billed, cached or not (see
    :func:`usage_from_json`); ``output_tokens`` includes reasoning/thinking tokens; ``seconds`` is
    a measured duration (a float measurement is fine: money is computed from its shortest repr
    with exact fractions); ``model`` is the model the response names, for logs and hooks only
    (charges use the model the request was quoted for).

    >>> Usage(input_tokens=12, output_tokens=40)
    Usage(input_tokens=12, output_tokens=40, seconds=None, model=None)
    >>> Usage(seconds=1.25).seconds
    1.25
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise ValueError(f"Usage.{name} must be a non-negative int or None, got {value!r}")
        if self.seconds is not None:
            _measured_seconds(self.seconds)  # validates
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"Usage.model must be a string or None, got {self.model!r}")


def _counts(usage: Mapping[str, Any]) -> tuple[dict[str, int], int | None]:
    """Input components and output count of one ``usage`` object; invalid values are absent.

    Input components are kept apart because Anthropic streams update them one by one; the
    total is :func:`_input_total`.
    """
    parts = {
        key: value
        for key in (
            "prompt_tokens",
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
        if _is_count(value := usage.get(key))
    }
    output: int | None = None
    completion = usage.get("completion_tokens")
    produced = usage.get("output_tokens")
    if _is_count(completion):
        output = completion
    elif _is_count(produced):
        output = produced
    elif "prompt_tokens" in parts and _is_count(total := usage.get("total_tokens")):
        # Embeddings: {"prompt_tokens": n, "total_tokens": n} means no output at all.
        output = max(total - parts["prompt_tokens"], 0)
    return parts, output


def _input_total(parts: Mapping[str, int]) -> int | None:
    if "prompt_tokens" in parts:
        # OpenAI semantics (also what proxies such as LiteLLM emit): prompt_tokens already
        # includes cached tokens, so cache fields next to it must not be added again.
        return parts["prompt_tokens"]
    if not parts:
        return None
    # Anthropic: input_tokens excludes the cache writes and reads, which are billed input too.
    # OpenAI Responses: input_tokens includes cached tokens and there are no cache_* fields.
    return sum(parts.values())


def usage_from_json(body: Any) -> Usage | None:
    """The usage in a non-streamed response body (parsed JSON, or its bytes/text), or ``None``.

    Shapes read from ``body["usage"]``:

    * OpenAI chat and completions: ``prompt_tokens`` / ``completion_tokens`` (embeddings have
      no ``completion_tokens``: output is ``total_tokens - prompt_tokens``);
    * OpenAI Responses: ``input_tokens`` / ``output_tokens`` (cached and reasoning tokens are
      already inside these totals);
    * Anthropic Messages: ``input_tokens`` / ``output_tokens``, plus
      ``cache_creation_input_tokens`` and ``cache_read_input_tokens``, which Anthropic reports
      apart from ``input_tokens`` and which are **counted as input tokens** here, at the input
      price. Price the input accordingly if you resell prompt caching (Anthropic bills cache
      writes above and cache reads below its input price).

    Counts that are missing, negative or not integers are treated as not measured.

    >>> usage_from_json({"model": "gpt-4o", "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    Usage(input_tokens=9, output_tokens=3, seconds=None, model='gpt-4o')
    >>> usage_from_json(b'{"usage": {"input_tokens": 5, "output_tokens": 7,'
    ...                 b' "cache_read_input_tokens": 100}}')
    Usage(input_tokens=105, output_tokens=7, seconds=None, model=None)
    >>> usage_from_json({"choices": []}) is None
    True
    """
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            body = _json.loads(bytes(body) if not isinstance(body, str) else body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    parts, output = _counts(usage)
    total = _input_total(parts)
    if total is None and output is None:
        return None
    model = body.get("model")
    return Usage(total, output, model=model if isinstance(model, str) else None)


# --- meters ----------------------------------------------------------------------------------


class UsageMeter(Protocol):
    """Reads usage from a response body fed to it chunk by chunk, as the bytes pass."""

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the body, split anywhere."""

    def close(self) -> None:
        """The body ended (flushes what the format allows); call once, then read ``usage``."""

    @property
    def usage(self) -> Usage | None:
        """The usage seen so far, or ``None`` when the body reported none."""


class NoUsageMeter:
    """The meter for bodies that carry no usage (other content types): always ``None``.

    >>> meter = NoUsageMeter()
    >>> meter.feed(b"plain text"); meter.close(); print(meter.usage)
    None
    """

    __slots__ = ()

    def feed(self, chunk: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def usage(self) -> Usage | None:
        return None


# Line ends are made LF first (C string replacements); then the end of a line and one or more
# empty lines end an event. More empty lines would end empty events, which carry nothing.
_BLANK_LINE = re.compile(rb"\n\n+")
_BOM = b"\xef\xbb\xbf"
# A usage object, in an event's text (its data lines may break anywhere between the key and the
# brace): no event without one is worth decoding, and "usage": null is common.
_USAGE_OBJECT = re.compile(rb'"usage"(?:\s|data:)*:(?:\s|data:)*\{')
_SSE_SLICE = 1 << 16


class SSEUsageMeter:
    """Incremental reader of a ``text/event-stream`` body that keeps only the usage.

    Parsing follows the HTML server-sent events rules: lines end with CRLF, LF or CR (also when
    a CRLF is split between two chunks), ``:`` starts a comment, ``data:`` lines of one event are
    joined with newlines, a blank line ends the event, a leading BOM is skipped. Events are read
    as JSON and ``[DONE]`` or other non-JSON data is ignored; only events that mention
    ``"usage"`` are parsed at all, so content deltas cost a substring search.

    What counts:

    * OpenAI chat/completions: the chunk carrying ``usage`` (the last one, with ``choices: []``,
      sent when the request sets ``stream_options: {"include_usage": true}``; without it there
      is no usage and the call is charged its quote). Servers that repeat cumulative usage in
      every chunk work too: the last one wins.
    * OpenAI Responses: ``response.completed`` (or ``.incomplete``/``.failed``) with
      ``response.usage``.
    * Anthropic: ``message_start`` gives the input counts (``message.usage``, cache counts
      included as in :func:`usage_from_json`) and ``message_delta`` the cumulative
      ``output_tokens`` (the last one wins). The output count in ``message_start`` is a
      placeholder and is ignored: a stream cut before any ``message_delta`` has an unknown
      output, charged at its worst case.

    Memory and time are bounded: only the current event is held, and an event larger than
    ``max_event_bytes`` (1 MiB by default) is dropped whole (usage events are a few hundred
    bytes); events are found by C string operations, and only those that mention ``"usage"``
    cost Python work. ``close()`` also reads a last event that lacks its closing blank line.

    >>> meter = SSEUsageMeter()
    >>> for chunk in (b'event: message_start\\r\\ndata: {"type": "message_start", "message": ',
    ...               b'{"model": "claude-sonnet-4-5", "usage": {"input_tokens": 25, "outpu',
    ...               b't_tokens": 1}}}\\r\\n\\r\\n: ping\\r\\n\\r\\nevent: message_delta\\r\\n',
    ...               b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}',
    ...               b'\\r\\n\\r\\n'):
    ...     meter.feed(chunk)
    >>> meter.usage
    Usage(input_tokens=25, output_tokens=15, seconds=None, model='claude-sonnet-4-5')
    """

    __slots__ = (
        "_closed",
        "_cr",
        "_dropping",
        "_max",
        "_model",
        "_output",
        "_parts",
        "_pending",
        "_started",
    )

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        if not _is_count(max_event_bytes) or max_event_bytes < 1:
            raise ConfigurationError(
                f"max_event_bytes must be a positive int, not {max_event_bytes!r}"
            )
        self._max = max_event_bytes
        self._pending = bytearray()  # the current event's text, since the last blank line
        self._dropping = False  # the current event is too large and is being skipped
        self._started = False  # a first byte was seen (a BOM may lead the stream)
        self._cr = False  # the bytes so far ended with a CR, not yet normalized
        self._closed = False
        self._parts: dict[str, int] = {}
        self._output: int | None = None
        self._model: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Read the next bytes of the stream; any split point is fine.

        Raises :class:`ValueError` after :meth:`close`.
        """
        if self._closed:
            raise ValueError("this meter is closed")
        data = bytes(chunk)
        if data and not self._started:
            self._started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        # Slices bound the lists that splitting makes; each byte is scanned a bounded number of
        # times by C code, and Python work is done per event that carries a usage object only.
        for start in range(0, len(data), _SSE_SLICE):
            self._feed_slice(data[start : start + _SSE_SLICE])

    def _feed_slice(self, data: bytes) -> None:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            # Maybe the first half of a CRLF: it is a line end either way, but which one
            # is known with the next byte.
            data = data[:-1]
            self._cr = True
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # A blank line may start in the last byte already held: look from there.
        seam = bytes(self._pending[-1:])
        # What is held is the event under way and at most the first LF of the blank line that
        # ends it: only beyond max_event_bytes + 1 is the event surely too large to read.
        if _BLANK_LINE.search(seam + data) is None:
            if self._dropping:
                self._pending[:] = data[-1:] or seam
            else:
                self._pending += data
                if len(self._pending) > self._max + 1:
                    self._dropping = True
                    del self._pending[:-1]
            return
        text = bytes(self._pending) + data
        events = _BLANK_LINE.split(text)
        tail = events.pop()  # the event still under way
        if self._dropping:
            events[0] = b""  # the end of an event too large to read
            self._dropping = False
        if _USAGE_OBJECT.search(text) is not None:
            for event in events:
                # The same limit whether the event came in one chunk or many.
                if len(event) <= self._max:
                    self._dispatch(event)
        self._pending[:] = tail
        if len(tail) > self._max + 1:
            self._dropping = True
            del self._pending[:-1]

    def close(self) -> None:
        """End of stream: read a last event that lacks its closing blank line, then stop."""
        if self._closed:
            return
        last = bytes(self._pending).removesuffix(b"\n")  # no blank line ended it
        if not self._dropping and len(last) <= self._max:
            self._dispatch(last)
        self._pending.clear()
        self._closed = True

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far, or ``None`` when no event carried any."""
        total = _input_total(self._parts)
        if total is None and self._output is None:
            return None
        return Usage(total, self._output, model=self._model)

    def _dispatch(self, event: bytes) -> None:
        if _USAGE_OBJECT.search(event) is None:
            return
        values = []
        for line in event.split(b"\n"):  # line ends are all LF by now
            name, colon, value = line.partition(b":")
            if name != b"data":
                continue  # comments, event, id, retry: the JSON payload says what it is
            values.append(value[1:] if colon and value.startswith(b" ") else value)
        payload = b"\n".join(values)
        try:
            parsed = _json.loads(payload)
        except ValueError:
            return
        if isinstance(parsed, dict):
            self._observe(parsed)

    def _observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":  # Anthropic: input counts, placeholder output
            message = event.get("message")
            if isinstance(message, dict):
                self._take_model(message)
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._parts.update(_counts(usage)[0])
            return
        if kind == "message_delta":  # Anthropic: cumulative counts at the end
            usage = event.get("usage")
            if isinstance(usage, dict):
                parts, output = _counts(usage)
                self._parts.update(parts)
                if output is not None:
                    self._output = output
            return
        response = event.get("response")
        holder = response if isinstance(response, dict) else event  # OpenAI Responses events
        usage = holder.get("usage")
        if isinstance(usage, dict):
            self._take_model(holder)
            parts, output = _counts(usage)
            if parts:
                self._parts = parts  # a complete usage object replaces the previous one
            if output is not None:
                self._output = output

    def _take_model(self, holder: Mapping[str, Any]) -> None:
        model = holder.get("model")
        if isinstance(model, str):
            self._model = model


_USAGE_KEY = re.compile(rb'[{,]\s*"usage"\s*:\s*')
_TAIL_TRIES = 16
_USAGE_WINDOW = 16 << 10


class JSONUsageMeter:
    """Collects a non-streamed JSON body (up to ``max_body_bytes``, 4 MiB by default) and reads
    its usage with :func:`usage_from_json`.

    A larger body is not kept: only its last ``tail_bytes`` (64 KiB) are, and the usage object
    is looked for there (OpenAI and Anthropic put ``usage`` after the content). A ``"usage":``
    key preceded by ``{`` or ``,`` cannot occur inside a JSON string (quotes there are escaped),
    so this finds real keys only; when none parses, the usage is ``None`` (charged the quote).

    >>> meter = JSONUsageMeter()
    >>> meter.feed(b'{"id": "msg_1", "model": "claude-haiku-4-5", "content": [], ')
    >>> meter.feed(b'"usage": {"input_tokens": 10, "output_tokens": 2}}')
    >>> meter.close(); meter.usage
    Usage(input_tokens=10, output_tokens=2, seconds=None, model='claude-haiku-4-5')
    """

    __slots__ = ("_body", "_closed", "_max", "_overflow", "_result", "_tail", "_tail_max")

    def __init__(self, *, max_body_bytes: int = 4 << 20, tail_bytes: int = 64 << 10) -> None:
        for name, value in (("max_body_bytes", max_body_bytes), ("tail_bytes", tail_bytes)):
            if not _is_count(value) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, not {value!r}")
        self._max = max_body_bytes
        self._tail_max = tail_bytes
        self._body = bytearray()
        self._tail = bytearray()
        self._overflow = False
        self._closed = False
        self._result: list[Usage | None] = []  # the parsed usage, cached until the next feed

    def feed(self, chunk: bytes) -> None:
        """Add the next bytes of the body. Raises :class:`ValueError` after :meth:`close`."""
        if self._closed:
            raise ValueError("this meter is closed")
        if not chunk:
            return
        self._result.clear()
        if not self._overflow and len(self._body) + len(chunk) <= self._max:
            self._body += chunk
            return
        if not self._overflow:
            self._overflow = True
            self._tail = self._body
            self._body = bytearray()
        self._tail += chunk
        if len(self._tail) > self._tail_max:
            del self._tail[: len(self._tail) - self._tail_max]

    def close(self) -> None:
        """The body is complete."""
        self._closed = True

    @property
    def usage(self) -> Usage | None:
        """The body's usage, or ``None`` (not JSON, no usage, or none found in the tail)."""
        if not self._result:
            self._result.append(
                self._tail_usage() if self._overflow else usage_from_json(self._body)
            )
        return self._result[0]

    def _tail_usage(self) -> Usage | None:
        tail = bytes(self._tail)
        # The last few candidates, each read within a window: a usage object is a few hundred
        # bytes, and the tail is the upstream's to fill with decoys.
        candidates = list(_USAGE_KEY.finditer(tail))[-_TAIL_TRIES:]
        for match in reversed(candidates):
            window = tail[match.end() : match.end() + _USAGE_WINDOW]
            if not window.startswith(b"{"):
                continue
            try:
                value = _json.loads_prefix(window.decode("utf-8", "replace"))
            except ValueError:
                continue
            found = usage_from_json({"usage": value})
            if found is not None:
                return found
        return None


def meter_for(content_type: str | None) -> UsageMeter:
    """The meter for a response's ``Content-Type``.

    ``text/event-stream`` gets :class:`SSEUsageMeter`; ``application/json`` and ``+json`` types
    get :class:`JSONUsageMeter`; anything else, or no content type, :class:`NoUsageMeter` (the
    call is then charged its quote).

    >>> type(meter_for("text/event-stream; charset=utf-8")).__name__
    'SSEUsageMeter'
    >>> type(meter_for("application/json")).__name__, type(meter_for("text/plain")).__name__
    ('JSONUsageMeter', 'NoUsageMeter')
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSEUsageMeter()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return JSONUsageMeter()
    return NoUsageMeter()


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
        self.field = _Field(model_field)
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

    def quote(self, request: RequestInfo) -> int:
        """Micro-dollars for the request's worst case (see the class documentation)."""
        price = self.price_for(request)
        return self._quote(price, self.input_bound(request), self.output_bound(request))

    def charge(self, usage: Usage | None, request: RequestInfo | None = None) -> int:
        """Micro-dollars for the measured ``usage`` of ``request``, never above its quote.

        ``request`` is required (the optional signature is the base class's): the price is the
        one of the model it was quoted for, and its quote is the cap.
        """
        if usage is not None and not isinstance(usage, Usage):
            raise TypeError(f"usage must be a Usage or None, got {type(usage).__name__}")
        if request is None:
            raise TypeError("PerToken.charge needs the request it quoted: charge(usage, request)")
        price = self.price_for(request)
        inputs = self.input_bound(request)
        outputs = self.output_bound(request)
        quote = self._quote(price, inputs, outputs)
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


def _exact_seconds(value: object, what: str) -> Fraction:
    """A duration as an exact fraction; floats through their shortest repr (0.1 is 1/10)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}")
    try:
        if isinstance(value, float):
            value = Decimal(repr(value))
        if isinstance(value, str):
            value = Decimal(value.strip())
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{what} must be finite, got {value!r}")
            return Fraction(value)
        if isinstance(value, int | Fraction):
            return Fraction(value)
    except ArithmeticError:
        pass
    raise ValueError(f"{what} must be a number of seconds, got {value!r}")


def _measured_seconds(value: object) -> Fraction:
    if isinstance(value, str):
        raise ValueError(f"Usage.seconds must be a number, got {value!r}")
    seconds = _exact_seconds(value, "Usage.seconds")
    if seconds < 0:
        raise ValueError(f"Usage.seconds must not be negative, got {value!r}")
    return seconds


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
